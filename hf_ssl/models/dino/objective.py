"""DINO as an objective: its data (images, multi-crop views), its schedules, its features for evaluation, its export
(the teacher's backbone, as DINO releases it)."""

from __future__ import annotations

from datasets import Dataset, IterableDataset
from transformers import AutoModelForPreTraining

from hf_ssl.backbones.timm import check_input_sizes, image_processor
from hf_ssl.data import ImageCollator, ImageDataArguments, find_column, pil_mode, prepare_images
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.export import ExportContext, Exporter
from hf_ssl.export.model_card import write_card
from hf_ssl.export.timm import TIMM_FILES, card_fields, save_timm_backbone
from hf_ssl.models.dino.callbacks import DINOScheduleCallback
from hf_ssl.models.dino.configuration_dino import DINOConfig
from hf_ssl.models.dino.modeling_dino import DINOForPreTraining, DINOModel
from hf_ssl.models.dino.transforms import DINOTransform
from hf_ssl.objectives import NEW_MODEL, Objective, PreparedData, RunContext
from hf_ssl.teachers import MomentumTeacherCallback

PAPER = ("arXiv:2104.14294", "Emerging Properties in Self-Supervised Vision Transformers")


def prepare_data(
    ds: Dataset | IterableDataset, config: DINOConfig, args: ImageDataArguments, run: RunContext = NEW_MODEL
) -> PreparedData:
    """Images checked (or filtered when streamed) before training, and the backbone's take of both crop sizes;
    multi-crop views made in the collator."""
    sizes = {"--image_size": config.image_size}
    if config.num_local_crops:
        sizes["--local_crop_size"] = config.local_crop_size
    check_input_sizes(config.backbone, config.timm_kwargs, config.num_channels, sizes)
    column = find_column(ds, "image", args.image_column)
    ds, skipped = prepare_images(ds, column, args.on_bad_example)
    return PreparedData(
        dataset=ds,
        collator=ImageCollator(DINOTransform(config), column, mode=pil_mode(config.num_channels)),
        columns={"image": column},
        num_skipped=skipped,
        processing_class=image_processor(config.data_config),
    )


def callbacks(config: DINOConfig) -> list:
    """The teacher's EMA (cosine momentum) and DINO's own schedules."""
    return [MomentumTeacherCallback(config.teacher_momentum, config.teacher_momentum_final), DINOScheduleCallback()]


def export(context: ExportContext) -> None:
    """Write the **teacher's** backbone (DINO evaluates and releases the teacher) in timm's Hub format (see
    :func:`hf_ssl.export.timm.save_timm_backbone`) and its model card."""
    config: DINOConfig = context.config  # type: ignore[assignment]
    model = AutoModelForPreTraining.from_pretrained(context.model_dir, config=config)
    if not isinstance(model, DINOForPreTraining):
        raise TypeError(f"expected a DINOForPreTraining checkpoint in {context.model_dir}, got {type(model)}")
    backbone = model.teacher.dino.backbone.eval()
    source_license = (backbone.pretrained_cfg or {}).get("license")
    license_id = source_license if config.pretrained_backbone and source_license else "apache-2.0"
    timm_kwargs = config.timm_kwargs
    hub_config = save_timm_backbone(backbone, context.output_dir, timm_kwargs, config.data_config, license_id, PAPER)
    call_args = "".join(f", {key}={value!r}" for key, value in timm_kwargs.items())
    write_card(
        context,
        model_name=f"DINO {config.backbone}",
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        license=license_id,
        tags=["hf_ssl", "self-supervised", "dino", "image-feature-extraction", "timm"],
        unit="images",
        backbone=config.backbone,
        backbone_call=f"timm.create_model({config.backbone!r}{call_args})",
        num_features=backbone.num_features,
        image_size=config.image_size,
        **card_fields(hub_config),
        config=config,
    )


DINO = Objective(
    name="dino",
    config_class=DINOConfig,
    model_class=DINOForPreTraining,
    base_model_class=DINOModel,
    modality="image",
    data_arguments=ImageDataArguments,
    prepare_data=prepare_data,
    features=FeatureSpec(
        "image", description="the teacher backbone's pooled features (pooler_output), the backbone the export releases"
    ),
    exporter=Exporter(export, (*TIMM_FILES, "README.md")),
    callbacks=callbacks,
    summary="self-distillation from a momentum teacher on multi-crop views (DINO), any timm backbone",
)
