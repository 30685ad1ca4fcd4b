"""timm backbones: building them by name, small-image stems through timm's own arguments, and their data config.

The data config (timm's ``pretrained_cfg`` preprocessing keys) is the one source of a vision backbone's evaluation
preprocessing: :func:`eval_transform` builds the transform from it with timm's ``create_transform``, the exporter
writes it into the exported ``config.json``, and :func:`image_processor` saves it beside a pretraining checkpoint,
so training, evaluation, timm and transformers all preprocess an image the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from hf_ssl.errors import UsageError

# timm families whose stem is set by keyword arguments, so that a small-image stem survives export to timm.
_SMALL_STEM_KWARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "timm.models.convnext": lambda size: {"patch_size": 2},
    "timm.models.vision_transformer": lambda size: {"img_size": size, "patch_size": max(1, size // 8)},
    "timm.models.mlp_mixer": lambda size: {"img_size": size, "patch_size": max(1, size // 8)},
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_model_name(name: str, field: str = "backbone") -> None:
    """Raise :class:`UsageError` unless timm knows the architecture ``name``."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8] if isinstance(name, str) and name else []
        hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise UsageError(f"{field} {name!r} is not a timm architecture{hint}")


def default_normalization(name: str, num_channels: int) -> tuple[list[float], list[float]]:
    """The mean and std of ``name``'s pretrained config (ImageNet's if it has none), for ``num_channels`` inputs
    (a single value, the mean over channels, repeated when the channel count differs)."""
    cfg = timm.get_pretrained_cfg(name) if timm.is_model(name) else None
    mean = list(cfg.mean) if cfg else list(IMAGENET_MEAN)
    std = list(cfg.std) if cfg else list(IMAGENET_STD)
    if num_channels != len(mean):
        mean = [sum(mean) / len(mean)] * num_channels
        std = [sum(std) / len(std)] * num_channels
    return mean, std


def backbone_kwargs(
    name: str, image_size: int, num_channels: int = 3, small_image_stem: bool = False, extra: dict | None = None
) -> dict[str, Any]:
    """The keyword arguments ``timm.create_model(name, **kwargs)`` needs to rebuild the backbone exactly.

    Raises:
        UsageError: ``small_image_stem`` for a family whose stem timm cannot resize by arguments.
    """
    kwargs: dict[str, Any] = {}
    if num_channels != 3:
        kwargs["in_chans"] = num_channels
    if small_image_stem:
        family = timm.models.model_entrypoint(name).__module__
        if family not in _SMALL_STEM_KWARGS:
            supported = ", ".join(sorted(m.rsplit(".", 1)[-1] for m in _SMALL_STEM_KWARGS))
            raise UsageError(
                f"small_image_stem is not available for {name!r} ({family}): timm has no argument that resizes its "
                f"stem, so an altered stem could not be exported. Families with one: {supported}; or pass the "
                "architecture's own arguments in backbone_kwargs."
            )
        kwargs.update(_SMALL_STEM_KWARGS[family](image_size))
    kwargs.update(extra or {})
    return kwargs


def create_backbone(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, num_classes=0, **kwargs)``, randomly initialised: the pooled feature is its output.

    Building never downloads anything; :func:`load_pretrained_weights` fetches timm's weights when a new run asks.
    """
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def load_pretrained_weights(backbone: nn.Module, name: str, kwargs: dict[str, Any]) -> None:
    """Copy timm's pretrained weights for ``name`` (downloaded by timm, needs the Hub) into ``backbone``."""
    source = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
    backbone.load_state_dict(source.state_dict())


def data_config(image_size: int, num_channels: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    """timm's preprocessing keys for our backbones: shorter side resized to ``image_size`` (bilinear), centre crop
    (``crop_pct`` 1), scaled to [0, 1], normalised with ``mean`` / ``std``."""
    return {
        "input_size": (num_channels, image_size, image_size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": tuple(mean),
        "std": tuple(std),
    }


def eval_transform(config: dict[str, Any]) -> Callable[[Any], torch.Tensor]:
    """The deterministic transform of a data config (timm's ``create_transform``): PIL image -> ``(C, H, W)``."""
    return timm.data.create_transform(**config, is_training=False)


def image_processor(config: dict[str, Any]):
    """A transformers image processor doing what :func:`eval_transform` does, to save beside a pretraining checkpoint
    so that ``AutoImageProcessor`` and ``pipeline("image-feature-extraction")`` load it.

    It resizes the shorter side (bilinear), centre-crops, rescales and normalises as timm does; the two differ by
    PIL rounding only.
    """
    from transformers import BitImageProcessor
    from transformers.image_utils import PILImageResampling

    channels, height, width = config["input_size"]
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": height},
        resample=PILImageResampling.BILINEAR,
        do_center_crop=True,
        crop_size={"height": height, "width": width},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(config["mean"]),
        image_std=list(config["std"]),
        do_convert_rgb=channels == 3,
    )
