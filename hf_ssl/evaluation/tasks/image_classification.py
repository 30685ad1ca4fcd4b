"""Image classification of frozen features: the checkpoint's data config gives the preprocessing; raw pixels are the
task's baseline."""

from __future__ import annotations

from typing import Any

import timm
import torch
from datasets import Dataset
from transformers import PretrainedConfig

from hf_ssl.backbones.timm import eval_transform
from hf_ssl.data.images import pil_mode, to_pil, undecoded
from hf_ssl.data.loading import DEFAULT_DATASET, load_digits_dataset
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.tasks.base import Preprocessor, register_task
from hf_ssl.evaluation.tasks.classification import ClassificationTask


def image_data_config(config: PretrainedConfig) -> dict[str, Any]:
    """timm's preprocessing keys of a checkpoint: an hf_ssl config's ``data_config``, or the ``pretrained_cfg`` of
    an exported timm backbone (read through transformers' ``TimmWrapperConfig``).

    Raises:
        UsageError: the config does not say how to preprocess images.
    """
    if getattr(config, "data_config", None) is not None:
        return dict(config.data_config)
    pretrained_cfg = getattr(config, "pretrained_cfg", None)
    if pretrained_cfg:
        return timm.data.resolve_data_config(pretrained_cfg=dict(pretrained_cfg), verbose=False)
    raise UsageError(
        f"the checkpoint's {type(config).__name__} does not say how to preprocess images (no data_config or "
        "pretrained_cfg), so it cannot be evaluated on them"
    )


def image_preprocessor(model_name_or_path: str, config: PretrainedConfig) -> Preprocessor:
    """Images -> ``{"pixel_values": (B, C, H, W)}`` with the checkpoint's deterministic transform."""
    data_config = image_data_config(config)
    transform = eval_transform(data_config)
    mode = pil_mode(data_config["input_size"][0])

    def preprocess(values: list[Any]) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.stack([transform(to_pil(value, mode)) for value in values])}

    return preprocess


def raw_pixels(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The raw-pixel baseline: ``(B, C, H, W) -> (B, C * H * W)``, the preprocessed pixels, flat."""
    return inputs["pixel_values"].flatten(1)


def _prepare(ds: Dataset, column: str) -> Dataset:
    return undecoded(ds, column)


IMAGE_CLASSIFICATION = register_task(
    ClassificationTask(
        modality="image",
        preprocessor=image_preprocessor,
        prepare=_prepare,
        baselines=lambda config: {"raw_pixels": raw_pixels},
        default_dataset=(DEFAULT_DATASET, load_digits_dataset),
    )
)
