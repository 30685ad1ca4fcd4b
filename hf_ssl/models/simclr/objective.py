"""SimCLR as an objective: its data (images, two augmented views), its features for evaluation, its export."""

from __future__ import annotations

from datasets import Dataset, IterableDataset

from hf_ssl._version import __version__
from hf_ssl.backbones import load_backbone
from hf_ssl.backbones.timm import image_processor
from hf_ssl.data import ImageDataArguments, ImageViewsCollator, SimCLRTransform, find_column, prepare_images
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.export import ExportContext, Exporter
from hf_ssl.export.model_card import (
    REPO_ID_PLACEHOLDER,
    card_metadata,
    evaluation_summary,
    render_model_card,
    training_rows,
)
from hf_ssl.export.timm import TIMM_FILES, save_timm_backbone
from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig
from hf_ssl.models.simclr.modeling_simclr import SimCLRForPreTraining, SimCLRModel
from hf_ssl.objectives import Objective, PreparedData

PAPER = ("arXiv:2002.05709", "A Simple Framework for Contrastive Learning of Visual Representations")


def prepare_data(ds: Dataset | IterableDataset, config: SimCLRConfig, args: ImageDataArguments) -> PreparedData:
    """Images checked (or filtered when streamed) before training; views augmented in the collator."""
    column = find_column(ds, "image", args.image_column)
    ds, skipped = prepare_images(ds, column, args.on_bad_image)
    mode = "L" if config.num_channels == 1 else "RGB"
    return PreparedData(
        dataset=ds,
        collator=ImageViewsCollator(SimCLRTransform(config), column, mode=mode),
        columns={"image": column},
        num_skipped=skipped,
        processing_class=image_processor(config.data_config),
    )


def export(context: ExportContext) -> None:
    """Write the SimCLR backbone alone in timm's Hub format (see :func:`hf_ssl.export.timm.save_timm_backbone`)
    and its model card."""
    config: SimCLRConfig = context.config  # type: ignore[assignment]
    model = load_backbone(context.model_dir)
    if not isinstance(model, SimCLRModel):
        raise TypeError(f"expected AutoModel to build a SimCLRModel from {context.model_dir}, got {type(model)}")
    backbone = model.backbone.eval()
    source_license = (backbone.pretrained_cfg or {}).get("license")
    license_id = source_license if config.pretrained_backbone and source_license else "apache-2.0"
    timm_kwargs = config.timm_kwargs
    hub_config = save_timm_backbone(backbone, context.output_dir, timm_kwargs, config.data_config, license_id, PAPER)
    pretrained_cfg = hub_config["pretrained_cfg"]
    call_args = "".join(f", {key}={value!r}" for key, value in timm_kwargs.items())
    label = f"SimCLR {config.backbone}"
    evaluation = context.evaluation
    card = render_model_card(
        "simclr.md",
        metadata=card_metadata(
            model_name=label,
            library_name="timm",
            pipeline_tag="image-feature-extraction",
            license=license_id,
            tags=["hf_ssl", "self-supervised", "simclr", "image-feature-extraction", "timm"],
            run_info=context.run_info,
            evaluation=evaluation,
        ),
        repo_id=REPO_ID_PLACEHOLDER,
        dataset_name=context.run_info.dataset_name if context.run_info else None,
        hf_ssl_version=__version__,
        backbone=config.backbone,
        backbone_call=f"timm.create_model({config.backbone!r}{call_args})",
        num_features=backbone.num_features,
        num_channels=pretrained_cfg["input_size"][0],
        image_size=config.image_size,
        fixed_input_size=bool(pretrained_cfg.get("fixed_input_size")),
        interpolation=pretrained_cfg["interpolation"],
        crop_pct=pretrained_cfg["crop_pct"],
        image_mean=list(pretrained_cfg["mean"]),
        image_std=list(pretrained_cfg["std"]),
        config=config,
        training_rows=training_rows(context.run_info, unit="images"),
        evaluation=evaluation_summary(evaluation, f"{label} (this model)") if evaluation else None,
    )
    (context.output_dir / "README.md").write_text(card, encoding="utf-8")


SIMCLR = Objective(
    name="simclr",
    config_class=SimCLRConfig,
    model_class=SimCLRForPreTraining,
    modality="image",
    data_arguments=ImageDataArguments,
    prepare_data=prepare_data,
    features=FeatureSpec("image", description="the backbone's pooled features (pooler_output)"),
    exporter=Exporter(export, (*TIMM_FILES, "README.md")),
    min_batch_size=2,
    negatives_from_batch=True,
    summary="contrastive learning of images from two augmented views (NT-Xent), any timm backbone",
)
