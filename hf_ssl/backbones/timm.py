"""timm backbones: building them by name, small-image stems through timm's own arguments, and their data config.

The data config (timm's ``pretrained_cfg`` preprocessing keys) is the one source of a vision backbone's evaluation
preprocessing: :func:`eval_transform` builds the transform from it with timm's ``create_transform``, the exporter
writes it into the exported ``config.json``, and :func:`image_processor` saves it beside a pretraining checkpoint,
so training, evaluation, timm and transformers all preprocess an image the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn
from transformers import TimmWrapperConfig, TimmWrapperModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf_ssl.errors import UsageError

# timm families whose stem is set by keyword arguments, so that a small-image stem survives export to timm.
_SMALL_STEM_KWARGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "timm.models.convnext": lambda size: {"patch_size": 2},
    "timm.models.vision_transformer": lambda size: {"img_size": size, "patch_size": max(1, size // 8)},
    "timm.models.mlp_mixer": lambda size: {"img_size": size, "patch_size": max(1, size // 8)},
}


def check_model_name(name: str, field: str = "backbone") -> None:
    """Raise :class:`UsageError` unless timm knows the architecture ``name``."""
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8] if isinstance(name, str) and name else []
        hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise UsageError(f"{field} {name!r} is not a timm architecture{hint}")


def default_normalization(num_channels: int, name: str | None = None) -> tuple[list[float], list[float]]:
    """The mean and std of timm architecture ``name``'s pretrained config (ImageNet's without one, or without a
    name), for ``num_channels`` inputs (a single value, the mean over channels, repeated when the channel count
    differs)."""
    cfg = timm.get_pretrained_cfg(name) if name is not None and timm.is_model(name) else None
    mean = list(cfg.mean) if cfg else list(timm.data.IMAGENET_DEFAULT_MEAN)
    std = list(cfg.std) if cfg else list(timm.data.IMAGENET_DEFAULT_STD)
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


_DYNAMIC_SIZE_FAMILIES = ("timm.models.vision_transformer", "timm.models.deit", "timm.models.eva")
"""timm families whose fixed input size is lifted by ``dynamic_img_size=True`` (position embeddings interpolated)."""


def variable_size_kwargs(name: str) -> dict[str, Any]:
    """The timm arguments that let architecture ``name`` take inputs of any size (multi-crop views of several
    sizes): ``{"dynamic_img_size": True}`` for ViT-like families, nothing for convolutional ones, which take any
    size already."""
    family = timm.models.model_entrypoint(name).__module__
    return {"dynamic_img_size": True} if family in _DYNAMIC_SIZE_FAMILIES else {}


def create_backbone(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, num_classes=0, **kwargs)``, randomly initialised: the pooled feature is its output.

    Building never downloads anything; :func:`load_pretrained_weights` fetches timm's weights when a new run asks.
    """
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def check_input_sizes(name: str, kwargs: dict[str, Any], num_channels: int, sizes: dict[str, int]) -> None:
    """Raise :class:`UsageError` naming the flag when the backbone cannot take square images of a size in ``sizes``
    (``{flag: side}``): one image of each size goes through a freshly built backbone before training, instead of the
    first step failing deep inside a convolution (a stride too large for a small crop, a ViT patch that does not
    divide it). The check's backbone is built under a forked random state, so the run's seeded initialisation is
    the same as without it."""
    with torch.random.fork_rng(devices=[]):
        backbone = create_backbone(name, kwargs).eval()
    for flag, size in sizes.items():
        try:
            with torch.no_grad():
                backbone(torch.zeros(1, num_channels, size, size))
        except (RuntimeError, AssertionError, ValueError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UsageError(
                f"{flag} {size}: backbone {name!r} cannot take {size} x {size} images ({reason}); use larger images "
                "or another backbone"
            ) from None


def load_pretrained_weights(backbone: nn.Module, name: str, kwargs: dict[str, Any]) -> None:
    """Copy timm's pretrained weights for ``name`` (downloaded by timm, needs the Hub) into ``backbone``."""
    source = timm.create_model(name, pretrained=True, num_classes=0, **kwargs)
    backbone.load_state_dict(source.state_dict())


class TimmBackboneModel:
    """The body of an objective's backbone-only ``...Model`` (what ``AutoModel`` loads) around a timm backbone:
    mixed in before the objective's ``PreTrainedModel`` (``class SimCLRModel(TimmBackboneModel,
    SimCLRPreTrainedModel)``), whose config carries ``backbone`` (a timm name) and ``timm_kwargs``."""

    def __init__(self, config: Any):
        super().__init__(config)
        self.backbone = create_backbone(config.backbone, config.timm_kwargs)  # built only: never downloads
        self.post_init()

    def load_pretrained_backbone(self) -> None:
        """Replace the backbone's weights by timm's pretrained ones (a new run with ``pretrained_backbone``)."""
        load_pretrained_weights(self.backbone, self.config.backbone, self.config.timm_kwargs)

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        """``pixel_values (B, C, H, W)`` -> ``last_hidden_state`` (the unpooled feature map or tokens) and
        ``pooler_output (B, num_features)``."""
        hidden = self.backbone.forward_features(pixel_values)
        pooled = self.backbone.forward_head(hidden, pre_logits=True)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


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


TIMM_PREFIX = "timm:"
"""``--model_name_or_path timm:<architecture>`` names a timm architecture rather than a checkpoint folder."""

TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""The weight files looked for when a timm checkpoint is given as a folder (timm's Hub layout)."""


def timm_model_name(model_name_or_path: str) -> str | None:
    """The architecture of ``timm:<architecture>``, or ``None`` when ``model_name_or_path`` does not start so."""
    if isinstance(model_name_or_path, str) and model_name_or_path.startswith(TIMM_PREFIX):
        return model_name_or_path[len(TIMM_PREFIX) :]
    return None


def timm_weights_file(path: str) -> str:
    """The weight file of a timm checkpoint given as a file or a folder (``model.safetensors`` or
    ``pytorch_model.bin`` in it).

    Raises:
        UsageError: no such file, or a folder without a weight file.
    """
    if os.path.isdir(path):
        for name in TIMM_WEIGHT_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise UsageError(f"--timm_checkpoint {path}: a folder without {' or '.join(TIMM_WEIGHT_FILES)}")
    if not os.path.isfile(path):
        raise UsageError(f"--timm_checkpoint {path}: no such file or folder")
    return path


def wrapped_timm_model(name: str, checkpoint: str | None = None, seed: int = 0) -> TimmWrapperModel:
    """The timm architecture ``name`` (a tag such as ``resnet18.a1_in1k`` picks that entry's preprocessing) as
    transformers' ``TimmWrapperModel`` (eval mode), whose config carries timm's ``pretrained_cfg`` for the name, so
    evaluation preprocesses images as timm's data config for the model says.

    Nothing is downloaded: without ``checkpoint`` the weights are a random initialisation (seeded by ``seed``), a
    baseline rather than a trained model; with it, the weights are read from a local file (safetensors or a PyTorch
    state dict, ``state_dict`` / ``model`` / EMA entries as timm reads them) or a folder holding one. A checkpoint's
    classifier weights are ignored (features are the pooled output); any other weight missing or left over is an
    error, so no layer silently stays random.

    Raises:
        UsageError: an unknown architecture or tag (naming ``--model_name_or_path``), or a checkpoint that is missing,
            unreadable or does not fit the architecture (naming ``--timm_checkpoint``).
    """
    flag = f"--model_name_or_path {TIMM_PREFIX}{name}"
    architecture = name.split(".", 1)[0]
    check_model_name(architecture, field=f"{flag}:")
    try:
        pretrained_cfg = timm.get_pretrained_cfg(name)
    except RuntimeError as error:  # an unknown tag
        raise UsageError(f"{flag}: {error}") from error
    config = TimmWrapperConfig(architecture=architecture)
    config.pretrained_cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}
    config.pretrained_cfg.setdefault("input_size", (3, 224, 224))
    with torch.random.fork_rng(devices=[]):  # the global RNG is left untouched
        model = TimmWrapperModel(config).eval()
    reset_to_timm_init(model, seed)
    if checkpoint is not None:
        load_timm_weights(model.timm_model, checkpoint)
    return model


def reset_to_timm_init(model: nn.Module, seed: int) -> None:
    """Give a ``TimmWrapperModel`` (or ``...ForImageClassification``) the random initialisation timm gives its
    architecture, seeded by ``seed`` (the global RNG is left untouched).

    transformers re-initialises the wrapped layers with its own scheme when it builds the wrapper; the architecture's
    random init is timm's own (as the image objectives build their backbones), so a random-init baseline of an export
    equals that of the run it came from.
    """
    config = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        native = timm.create_model(config.architecture, pretrained=False, num_classes=0, **(config.model_args or {}))
    # a classification wrapper keeps its new head as built (as a pretrained backbone's new head is), so its backbone
    # is exactly the feature extractor's at the same seed
    missing, unexpected = model.timm_model.load_state_dict(native.state_dict(), strict=False)
    head = (getattr(model.timm_model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    heads = (head,) if isinstance(head, str) else tuple(head)
    if unexpected or any(not key.startswith(heads) for key in missing):
        raise RuntimeError(f"timm's {config.architecture} does not fit its wrapper: {missing or unexpected}")


def load_timm_weights(model: nn.Module, checkpoint: str) -> None:
    """Copy a local timm checkpoint (file or folder, see :func:`timm_weights_file`) into ``model`` (built without
    classifier); the checkpoint's classifier weights are dropped.

    Raises:
        UsageError: the file is missing or unreadable, or weights are missing, left over or of the wrong shape.
    """
    path = timm_weights_file(checkpoint)
    try:
        state = timm.models.load_state_dict(path, weights_only=True)
    except Exception as error:  # noqa: BLE001  (a corrupt or foreign file: one line naming it)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--timm_checkpoint {checkpoint}: cannot read weights from {path}: {first}") from error
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(tuple(f"{c}." for c in classifiers))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
        problems += [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in mismatched]
        shown = ", ".join(problems[:4]) + (", ..." if len(problems) > 4 else "")
        raise UsageError(
            f"--timm_checkpoint {checkpoint}: its weights do not fit {type(model).__name__} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} of the wrong shape: {shown})"
        )
    model.load_state_dict(state)
