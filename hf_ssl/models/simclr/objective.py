"""SimCLR as an objective: its data (images, two augmented views), its features for evaluation, its export."""

from __future__ import annotations

from datasets import Dataset, IterableDataset

from hf_ssl.backbones import load_backbone
from hf_ssl.backbones.timm import check_input_sizes, image_processor
from hf_ssl.data import ImageCollator, ImageDataArguments, find_column, pil_mode, prepare_images
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.export import ExportContext, Exporter
from hf_ssl.export.model_card import write_card
from hf_ssl.export.timm import TIMM_FILES, card_fields, save_timm_backbone
from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig
from hf_ssl.models.simclr.modeling_simclr import SimCLRForPreTraining, SimCLRModel
from hf_ssl.models.simclr.transforms import SimCLRTransform
from hf_ssl.objectives import NEW_MODEL, Objective, PreparedData, RunContext

PAPER = ("arXiv:2002.05709", "A Simple Framework for Contrastive Learning of Visual Representations")


def prepare_data(
    ds: Dataset | IterableDataset, config: SimCLRConfig, args: ImageDataArguments, run: RunContext = NEW_MODEL
) -> PreparedData:
    """Images checked (or filtered when streamed) before training, and the backbone's take of the view size; views
    augmented in the collator."""
    check_input_sizes(config.backbone, config.timm_kwargs, config.num_channels, {"--image_size": config.image_size})
    column = find_column(ds, "image", args.image_column)
    ds, skipped = prepare_images(ds, column, args.on_bad_example)
    return PreparedData(
        dataset=ds,
        collator=ImageCollator(SimCLRTransform(config), column, mode=pil_mode(config.num_channels)),
        columns={"image": column},
        num_skipped=skipped,
        processing_class=image_processor(config.data_config),
    )


def export(context: ExportContext) -> None:
    """Write the SimCLR backbone alone in timm's Hub format (see :func:`hf_ssl.export.timm.save_timm_backbone`)
    and its model card."""
    config: SimCLRConfig = context.config  # type: ignore[assignment]
    model = load_backbone(context.model_dir, config=config)
    if not isinstance(model, SimCLRModel):
        raise TypeError(f"expected AutoModel to build a SimCLRModel from {context.model_dir}, got {type(model)}")
    backbone = model.backbone.eval()
    source_license = (backbone.pretrained_cfg or {}).get("license")
    license_id = source_license if config.pretrained_backbone and source_license else "apache-2.0"
    timm_kwargs = config.timm_kwargs
    hub_config = save_timm_backbone(backbone, context.output_dir, timm_kwargs, config.data_config, license_id, PAPER)
    call_args = "".join(f", {key}={value!r}" for key, value in timm_kwargs.items())
    write_card(
        context,
        model_name=f"SimCLR {config.backbone}",
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        license=license_id,
        tags=["hf_ssl", "self-supervised", "simclr", "image-feature-extraction", "timm"],
        unit="images",
        backbone=config.backbone,
        backbone_call=f"timm.create_model({config.backbone!r}{call_args})",
        num_features=backbone.num_features,
        image_size=config.image_size,
        **card_fields(hub_config),
        config=config,
    )


SIMCLR = Objective(
    name="simclr",
    config_class=SimCLRConfig,
    model_class=SimCLRForPreTraining,
    base_model_class=SimCLRModel,
    modality="image",
    data_arguments=ImageDataArguments,
    prepare_data=prepare_data,
    features=FeatureSpec("image", description="the backbone's pooled features (pooler_output)"),
    exporter=Exporter(export, (*TIMM_FILES, "README.md")),
    min_batch_size=2,
    negatives_from_batch=True,
    summary="contrastive learning of images from two augmented views (NT-Xent), any timm backbone",
)
