"""DINO configuration (Caron et al., 2021, arXiv:2104.14294)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from hf_ssl.backbones.timm import (
    backbone_kwargs,
    check_model_name,
    data_config,
    default_normalization,
    variable_size_kwargs,
)
from hf_ssl.errors import UsageError, check_int, check_range


def _check_scale(name: str, scale: Any) -> list[float]:
    """A crop's ``(min, max)`` area fraction, ``0 < min <= max <= 1``, as a list (JSON round trip)."""
    if not isinstance(scale, list | tuple) or len(scale) != 2:
        raise UsageError(f"{name} must be a (min, max) pair of area fractions, got {scale!r}")
    check_range(f"{name}[0]", scale[0], 0, 1, low_inclusive=False)
    check_range(f"{name}[1]", scale[1], scale[0], 1)
    return [float(scale[0]), float(scale[1])]


def _check_probabilities(name: str, values: Any) -> list[float]:
    """A non-empty list of probabilities (one per global view, cycled)."""
    if not isinstance(values, list | tuple) or not values:
        raise UsageError(f"{name} must be a non-empty list of probabilities, got {values!r}")
    for i, p in enumerate(values):
        check_range(f"{name}[{i}]", p, 0, 1)
    return [float(p) for p in values]


class DINOConfig(PretrainedConfig):
    """Configuration of :class:`DINOModel` / :class:`DINOForPreTraining` (Caron et al., 2021).

    Every hyperparameter of the objective lives here, so ``save_pretrained`` captures a run completely. The defaults
    are those of facebookresearch/dino's ``main_dino.py`` (and of lightly's DINO pieces).

    Args:
        backbone: timm model name, e.g. ``"vit_small_patch16_224"`` or ``"resnet18"``.
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``{"drop_path_rate": 0.1}``).
        pretrained_backbone: start a new run from timm's pretrained weights (needs Hub access); random init
            otherwise. Kept as provenance: loading a checkpoint never downloads them.
        small_image_stem: adapt the backbone's stem to small inputs through timm's own arguments (see
            :func:`hf_ssl.backbones.timm.backbone_kwargs`), sized for ``image_size``.
        image_size: side of the global crops, and of the images the exported backbone is given.
        num_channels: input channels.
        image_mean: normalisation mean; defaults to the backbone's pretrained config (ImageNet statistics).
        image_std: normalisation std; defaults likewise.
        out_dim: ``K``, the number of prototypes of the head's last layer (65536 in DINO).
        head_hidden_dim: width of the head's hidden layers.
        head_bottleneck_dim: output size of the head's MLP, L2-normalised before the prototypes.
        head_layers: Linear layers of the head's MLP (3 in DINO).
        head_batch_norm: BatchNorm in the head's MLP (DINO: off for ViTs, on for ResNets in its ablations).
        norm_last_layer: keep the weight-norm gain of the prototypes fixed to 1 (DINO's default).
        freeze_last_layer_epochs: epochs during which the prototypes get no update (1 in DINO).
        student_temperature: the student's softmax temperature ``tps``.
        teacher_temperature: the teacher's softmax temperature ``tpt`` after warm-up.
        warmup_teacher_temperature: the teacher's temperature at the start of the warm-up.
        warmup_teacher_temperature_epochs: length of the linear warm-up of the teacher temperature, in epochs.
        warmup_teacher_temperature_steps: the same in optimizer steps; when set, it replaces the epochs.
        center_momentum: EMA momentum of the center of the teacher's outputs.
        teacher_momentum: EMA momentum of the teacher at the first step (cosine schedule).
        teacher_momentum_final: EMA momentum of the teacher at the end of the run.
        num_global_crops: global views of each image (2 in DINO), the only ones the teacher sees.
        global_crop_scale: ``(min, max)`` area fraction of the global crops.
        num_local_crops: small local views of each image, seen by the student only (0 turns multi-crop off).
        local_crop_size: side of the local crops.
        local_crop_scale: ``(min, max)`` area fraction of the local crops.
        hflip_prob: probability of a horizontal flip of each view.
        color_jitter_prob: probability of DINO's colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue
            0.1) on each view.
        grayscale_prob: probability of converting each view to grayscale.
        global_blur_probs: probability of a Gaussian blur of global view ``i`` is ``global_blur_probs[i % n]``
            (DINO: 1.0 for the first, 0.1 for the second; 0 for CIFAR-sized images).
        local_blur_prob: probability of a Gaussian blur of each local view (DINO: 0.5).
        global_solarization_probs: probability of solarizing global view ``i``, likewise (DINO: 0 and 0.2).
    """

    model_type = "hf_ssl_dino"

    def __init__(
        self,
        backbone: str = "vit_small_patch16_224",
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained_backbone: bool = False,
        small_image_stem: bool = False,
        image_size: int = 224,
        num_channels: int = 3,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        head_layers: int = 3,
        head_batch_norm: bool = False,
        norm_last_layer: bool = True,
        freeze_last_layer_epochs: float = 1.0,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        warmup_teacher_temperature: float = 0.04,
        warmup_teacher_temperature_epochs: float = 0.0,
        warmup_teacher_temperature_steps: int | None = None,
        center_momentum: float = 0.9,
        teacher_momentum: float = 0.996,
        teacher_momentum_final: float = 1.0,
        num_global_crops: int = 2,
        global_crop_scale: list[float] | tuple[float, float] = (0.4, 1.0),
        num_local_crops: int = 8,
        local_crop_size: int = 96,
        local_crop_scale: list[float] | tuple[float, float] = (0.05, 0.4),
        hflip_prob: float = 0.5,
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        global_blur_probs: list[float] | tuple[float, ...] = (1.0, 0.1),
        local_blur_prob: float = 0.5,
        global_solarization_probs: list[float] | tuple[float, ...] = (0.0, 0.2),
        **kwargs: Any,
    ):
        check_model_name(backbone)
        if not isinstance(backbone_kwargs, dict | None):
            raise UsageError(f"backbone_kwargs must be a mapping of timm arguments, got {backbone_kwargs!r}")
        check_int("image_size", image_size, 1)
        check_int("num_channels", num_channels, 1)
        check_int("out_dim", out_dim, 1)
        check_int("head_hidden_dim", head_hidden_dim, 1)
        check_int("head_bottleneck_dim", head_bottleneck_dim, 1)
        check_int("head_layers", head_layers, 1)
        check_range("freeze_last_layer_epochs", freeze_last_layer_epochs, 0)
        check_range("student_temperature", student_temperature, 0, low_inclusive=False)
        check_range("teacher_temperature", teacher_temperature, 0, low_inclusive=False)
        check_range("warmup_teacher_temperature", warmup_teacher_temperature, 0, low_inclusive=False)
        check_range("warmup_teacher_temperature_epochs", warmup_teacher_temperature_epochs, 0)
        if warmup_teacher_temperature_steps is not None:
            check_int("warmup_teacher_temperature_steps", warmup_teacher_temperature_steps, 0)
        check_range("center_momentum", center_momentum, 0, 1)
        check_range("teacher_momentum", teacher_momentum, 0, 1)
        check_range("teacher_momentum_final", teacher_momentum_final, teacher_momentum, 1)
        check_int("num_global_crops", num_global_crops, 1)
        check_int("num_local_crops", num_local_crops, 0)
        if num_global_crops + num_local_crops < 2:
            raise UsageError(
                f"DINO needs at least two views of each image, got {num_global_crops} global and {num_local_crops} "
                "local crops"
            )
        check_int("local_crop_size", local_crop_size, 1)
        global_crop_scale = _check_scale("global_crop_scale", global_crop_scale)
        local_crop_scale = _check_scale("local_crop_scale", local_crop_scale)
        for name, p in (
            ("hflip_prob", hflip_prob),
            ("color_jitter_prob", color_jitter_prob),
            ("grayscale_prob", grayscale_prob),
            ("local_blur_prob", local_blur_prob),
        ):
            check_range(name, p, 0, 1)
        global_blur_probs = _check_probabilities("global_blur_probs", global_blur_probs)
        global_solarization_probs = _check_probabilities("global_solarization_probs", global_solarization_probs)
        default_mean, default_std = default_normalization(num_channels, backbone)
        image_mean = list(image_mean) if image_mean is not None else default_mean
        image_std = list(image_std) if image_std is not None else default_std
        if len(image_mean) != num_channels or len(image_std) != num_channels:
            raise UsageError(
                f"image_mean and image_std need one value per channel ({num_channels}), got {image_mean} and "
                f"{image_std}"
            )
        if any(s <= 0 for s in image_std):
            raise UsageError(f"image_std must be positive, got {image_std}")
        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.pretrained_backbone = pretrained_backbone
        self.small_image_stem = small_image_stem
        self.image_size = image_size
        self.num_channels = num_channels
        self.image_mean = image_mean
        self.image_std = image_std
        self.out_dim = out_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.head_layers = head_layers
        self.head_batch_norm = head_batch_norm
        self.norm_last_layer = norm_last_layer
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.warmup_teacher_temperature_epochs = warmup_teacher_temperature_epochs
        self.warmup_teacher_temperature_steps = warmup_teacher_temperature_steps
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.teacher_momentum_final = teacher_momentum_final
        self.num_global_crops = num_global_crops
        self.global_crop_scale = global_crop_scale
        self.num_local_crops = num_local_crops
        self.local_crop_size = local_crop_size
        self.local_crop_scale = local_crop_scale
        self.hflip_prob = hflip_prob
        self.color_jitter_prob = color_jitter_prob
        self.grayscale_prob = grayscale_prob
        self.global_blur_probs = global_blur_probs
        self.local_blur_prob = local_blur_prob
        self.global_solarization_probs = global_solarization_probs
        super().__init__(**kwargs)
        self.timm_kwargs  # noqa: B018 (refuses a small_image_stem the backbone's family cannot take)

    @property
    def timm_kwargs(self) -> dict[str, Any]:
        """The arguments ``timm.create_model(self.backbone, **timm_kwargs)`` rebuilds the backbone with; local crops
        of another size than the global ones make a ViT take any input size (``dynamic_img_size``), unless
        ``backbone_kwargs`` says otherwise."""
        extra = dict(self.backbone_kwargs)
        if self.num_local_crops and self.local_crop_size != self.image_size:
            extra = variable_size_kwargs(self.backbone) | extra
        return backbone_kwargs(self.backbone, self.image_size, self.num_channels, self.small_image_stem, extra)

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's preprocessing keys for this backbone (see :func:`hf_ssl.backbones.timm.data_config`)."""
        return data_config(self.image_size, self.num_channels, self.image_mean, self.image_std)
