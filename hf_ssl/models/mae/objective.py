"""MAE as an objective: its data (images, one augmented crop each), its features for evaluation, its export, and the
``hf-ssl reconstruct`` command that draws reconstruction figures (He et al., 2021, arXiv:2111.06377)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, IterableDataset
from transformers import AutoConfig, AutoModelForPreTraining

from hf_ssl.backbones import load_backbone
from hf_ssl.backbones.timm import image_processor
from hf_ssl.data import ImageCollator, ImageDataArguments, find_column, load_data, pil_mode, prepare_images, undecoded
from hf_ssl.data.loading import DEFAULT_DATASET, load_digits_dataset
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.export import ExportContext, Exporter
from hf_ssl.export.model_card import write_card
from hf_ssl.export.timm import TIMM_FILES, card_fields, save_timm_backbone
from hf_ssl.models.mae.callbacks import ReconstructionImagesCallback
from hf_ssl.models.mae.configuration_mae import MAEConfig
from hf_ssl.models.mae.modeling_mae import TIMM_ARCHITECTURE, MAEForPreTraining, MAEModel, timm_model_args
from hf_ssl.models.mae.report import report_pictures
from hf_ssl.models.mae.transforms import MAETransform
from hf_ssl.models.mae.visualize import masking_noise, pixel_batch, reconstruction_grid
from hf_ssl.objectives import NEW_MODEL, Objective, PreparedData, RunContext

logger = logging.getLogger(__name__)

PAPER = ("arXiv:2111.06377", "Masked Autoencoders Are Scalable Vision Learners")
RECONSTRUCTION_IMAGES = 1024
"""Test images (at most) whose masked reconstruction loss ``hf-ssl evaluate`` reports for an MAE checkpoint."""
FEATURES = (
    "the mean of the encoder's patch tokens after its final norm, all patches visible (MAEModel.pooler_output, "
    "timm global_pool='avg'); the class token (last_hidden_state[:, 0]) is not used"
)


def prepare_data(
    ds: Dataset | IterableDataset, config: MAEConfig, args: ImageDataArguments, run: RunContext = NEW_MODEL
) -> PreparedData:
    """Images checked (or filtered when streamed) before training; cropped and flipped in the collator, seeded per
    batch; the encoder's evaluation preprocessing saved as the image processor."""
    column = find_column(ds, "image", args.image_column)
    ds, skipped = prepare_images(ds, column, args.on_bad_example)
    return PreparedData(
        dataset=ds,
        collator=ImageCollator(MAETransform(config), column, mode=pil_mode(config.num_channels)),
        columns={"image": column},
        num_skipped=skipped,
        processing_class=image_processor(config.data_config),
    )


@torch.no_grad()
def reconstruction_metrics(model: Any, test: Dataset, column: str, preprocess: Any) -> dict[str, Any]:
    """The pretraining loss on the evaluated split: masked-patch MSE of the checkpoint's encoder + decoder on (at
    most) :data:`RECONSTRUCTION_IMAGES` test images, preprocessed as for the features, with masks drawn from seed 0.

    Empty when the checkpoint has no decoder (an encoder saved alone).
    """
    path = getattr(model, "name_or_path", None)
    if not path:
        return {}
    full, info = AutoModelForPreTraining.from_pretrained(path, output_loading_info=True)
    if not isinstance(full, MAEForPreTraining) or info.get("missing_keys"):
        logger.info("%s has no MAE decoder: no reconstruction loss reported", path)
        return {}
    parameter = next(model.parameters())
    full = full.to(device=parameter.device, dtype=parameter.dtype).eval()
    count = min(len(test), RECONSTRUCTION_IMAGES)
    generator = torch.Generator().manual_seed(0)
    total, batch_size = 0.0, 256
    for start in range(0, count, batch_size):
        values = test[start : min(start + batch_size, count)][column]
        pixel_values = preprocess(values)["pixel_values"].to(device=parameter.device, dtype=parameter.dtype)
        noise = torch.rand(len(values), full.config.num_patches, generator=generator).to(parameter.device)
        total += full(pixel_values, noise=noise).loss.item() * len(values)
    return {
        "reconstruction": {
            "loss": total / count,
            "num_images": count,
            "mask_ratio": full.config.mask_ratio,
            "norm_pix_loss": full.config.norm_pix_loss,
            "description": "MAE loss (MSE on the removed patches) on the first test images, masks from seed 0",
        }
    }


def export(context: ExportContext) -> None:
    """Write the MAE encoder alone (no decoder) in timm's Hub format and its model card.

    The folder loads with ``timm.create_model("local-dir:..." / "hf-hub:...", pretrained=True)`` and with
    ``transformers.AutoModel`` (``TimmWrapperModel``), whose pooled output equals :class:`MAEModel`'s
    ``pooler_output`` (the mean of the patch tokens).
    """
    config: MAEConfig = context.config  # type: ignore[assignment]
    try:
        model_args = timm_model_args(config)
    except ValueError as err:
        raise UsageError(str(err)) from err
    model = load_backbone(context.model_dir, config=config)
    if not isinstance(model, MAEModel):
        raise TypeError(f"expected AutoModel to build an MAEModel from {context.model_dir}, got {type(model)}")
    encoder = model.encoder.eval()
    license_id = "apache-2.0"
    hub_config = save_timm_backbone(encoder, context.output_dir, model_args, config.data_config, license_id, PAPER)
    exported_args = hub_config.get("model_args", {})
    call_args = "".join(f", {key}={value!r}" for key, value in exported_args.items())
    label = f"MAE ViT ({config.hidden_size} wide, {config.num_hidden_layers} layers, patch {config.patch_size})"
    write_card(
        context,
        model_name=label,
        library_name="timm",
        pipeline_tag="image-feature-extraction",
        license=license_id,
        tags=["hf_ssl", "self-supervised", "mae", "masked-image-modeling", "image-feature-extraction", "timm"],
        unit="images",
        label=label,
        backbone_call=f"timm.create_model({TIMM_ARCHITECTURE!r}{call_args})",
        num_features=encoder.num_features,
        num_patches=config.num_patches,
        image_size=config.image_size,
        **card_fields(hub_config),
        config=config,
        reconstruction=(context.evaluation or {}).get("reconstruction"),
    )


# --- hf-ssl reconstruct ------------------------------------------------------------------------------------------


@dataclass
class ReconstructArguments:
    """Flags of ``hf-ssl reconstruct RUN``."""

    model_dir: str = field(metadata={"help": "An MAE pretraining checkpoint folder (with its decoder)."})
    output_file: str = field(default="reconstructions.png", metadata={"help": "PNG file to write the grid to."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "As for pretrain; empty: the embedded default dataset."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    split: str = field(default="test", metadata={"help": "Split the images are taken from (its first rows)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected if not given)."})
    num_images: int = field(default=16, metadata={"help": "Images (rows of the grid), the split's first ones."})
    mask_ratio: float | None = field(
        default=None, metadata={"help": "Fraction of patches removed (default: the checkpoint's own)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the masking noise."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches downloads."})

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise UsageError(f"--num_images must be at least 1, got {self.num_images}")
        if not self.output_file.lower().endswith(".png"):
            raise UsageError(f"--output_file {self.output_file}: the grid is written as PNG; name a .png file")


def load_for_reconstruction(model_dir: str, mask_ratio: float | None = None) -> MAEForPreTraining:
    """The encoder and decoder of an MAE checkpoint, in eval mode.

    Raises:
        UsageError: not a checkpoint folder, not an MAE checkpoint, or one without its decoder.
    """
    if not (Path(model_dir) / "config.json").is_file():
        raise UsageError(f"{model_dir}: not a checkpoint folder (no config.json)")
    config = AutoConfig.from_pretrained(model_dir)
    if not isinstance(config, MAEConfig):
        raise UsageError(
            f"{model_dir} is a {config.model_type!r} checkpoint, not an MAE one ({MAEConfig.model_type!r})"
        )
    if mask_ratio is not None:
        config.mask_ratio = mask_ratio
        config._validate()
    model, info = MAEForPreTraining.from_pretrained(model_dir, config=config, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise UsageError(
            f"{model_dir}: {len(missing)} weights are missing ({', '.join(missing[:3])}, ...); reconstructions need "
            "a pretraining checkpoint with its decoder, not an exported encoder"
        )
    return model.eval()


def reconstruct(argv: list[str]) -> Path:
    """``hf-ssl reconstruct RUN --dataset_name D --split test --num_images 16 --output_file grid.png``.

    Writes a PNG of one row per image: the original, the masked input (removed patches grey), the reconstruction,
    and the reconstruction with the visible patches pasted back (as in the paper's figures 2-4). Images get the
    checkpoint's evaluation preprocessing (resize, centre crop, normalise); the masks come from ``--seed``.

    Returns:
        The written file.
    """
    from hf_ssl.cli import make_parser, parse  # the CLI imports the objectives: import it only when called

    positional = [a for a in argv[:1] if not a.startswith("--")]
    argv = [f"--model_dir={value}" for value in positional] + argv[len(positional) :]
    (args,) = parse(make_parser(ReconstructArguments, prog="hf-ssl reconstruct"), argv)
    model = load_for_reconstruction(args.model_dir, args.mask_ratio)
    config = model.config
    ds = load_data(
        args.dataset_name,
        args.split,
        config_name=args.dataset_config_name,
        cache_dir=args.cache_dir,
        default=MAE.default_dataset,
    )
    column = find_column(ds, "image", args.image_column)
    ds = undecoded(ds, column)
    if isinstance(ds, IterableDataset):
        rows = [row[column] for _, row in zip(range(args.num_images), ds, strict=False)]
    else:
        rows = ds[: args.num_images][column]
    if len(rows) < args.num_images:
        logger.warning("split %r has %d images only; the grid shows them all", args.split, len(rows))
    grid = reconstruction_grid(model, pixel_batch(config, rows), noise=masking_noise(config, len(rows), args.seed))
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(output, format="PNG")
    print(f"wrote {output} ({len(rows)} images: original | masked | reconstruction | with visible patches)")
    return output


MAE = Objective(
    name="mae",
    config_class=MAEConfig,
    model_class=MAEForPreTraining,
    base_model_class=MAEModel,
    modality="image",
    data_arguments=ImageDataArguments,
    prepare_data=prepare_data,
    features=FeatureSpec("image", description=FEATURES, extra_metrics=reconstruction_metrics),
    exporter=Exporter(export, (*TIMM_FILES, "README.md")),
    default_dataset=(DEFAULT_DATASET, load_digits_dataset),
    callbacks=lambda config: [ReconstructionImagesCallback()],
    commands={"reconstruct": reconstruct},
    report_pictures=report_pictures,
    summary="masked autoencoder: a ViT encodes 25% of the patches, a light decoder reconstructs the rest",
)
