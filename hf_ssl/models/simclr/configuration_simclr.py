"""SimCLR configuration."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from hf_ssl.backbones.timm import backbone_kwargs, check_model_name, data_config, default_normalization
from hf_ssl.errors import UsageError, check_int, check_range

# The augmentations of SimCLR's pipeline (Chen et al., 2020, appendix A), each with the config value that turns it
# off; :class:`~hf_ssl.models.simclr.transforms.SimCLRTransform` applies them in this order.
AUGMENTATIONS: dict[str, dict[str, float]] = {
    "crop": {"crop_min_scale": 1.0},
    "flip": {"hflip_prob": 0.0},
    "color_jitter": {"color_jitter_prob": 0.0},
    "grayscale": {"grayscale_prob": 0.0},
    "blur": {"blur_prob": 0.0},
}


class SimCLRConfig(PretrainedConfig):
    """Configuration of :class:`SimCLRModel` / :class:`SimCLRForPreTraining` (Chen et al., 2020).

    Everything the objective depends on lives here, so ``save_pretrained`` captures a run completely.

    Args:
        backbone: timm model name, e.g. ``"resnet18"`` or ``"convnext_atto"``.
        backbone_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``{"drop_path_rate": 0.1}``).
        pretrained_backbone: start a new run from timm's pretrained weights (needs Hub access); random init
            otherwise. Kept in the config as provenance: loading a checkpoint never downloads them.
        small_image_stem: adapt the backbone's stem to small inputs such as 32x32 through timm's own arguments
            (ConvNeXt: patch size 2; ViT / MLP-Mixer: ``img_size=image_size``, patch size ``image_size // 8``), so
            that the exported backbone is rebuilt exactly by ``timm.create_model``.
        image_size: side of the square crops fed to the backbone.
        num_channels: input channels.
        image_mean: normalisation mean; defaults to the backbone's pretrained config (ImageNet statistics).
        image_std: normalisation std; defaults likewise.
        projection_hidden_dim: hidden width of the projection MLP.
        projection_dim: output size of the projection MLP, where the loss is computed.
        projection_layers: number of Linear layers in the projection MLP (2 in SimCLR v1, 3 in v2).
        loss_temperature: NT-Xent temperature tau (named so because transformers reserves ``temperature`` for
            generation).
        gather_distributed: use the other processes' views as negatives when training on several processes.
        crop_min_scale: smallest area fraction of the random resized crop; 1 turns cropping off (every view is the
            whole square image, resized to ``image_size``).
        hflip_prob: probability of a horizontal flip (0: off).
        color_jitter_prob: probability of applying colour jitter (0: off).
        color_jitter_strength: strength ``s`` of the jitter: brightness, contrast, saturation ``0.8 s``, hue ``0.2 s``.
        grayscale_prob: probability of converting a view to grayscale (0: off).
        blur_prob: probability of a Gaussian blur (0.5 on ImageNet in the paper, 0 for CIFAR-sized images).
        gradient_cache_chunk_size: in training, encode the batch in chunks of this many images (both views) with
            the gradient cache of Gao et al. (2021, arXiv:2101.06983): the NT-Xent loss and gradients of the whole
            batch, with the activations of one chunk in memory, for the cost of a second forward pass. BatchNorm
            layers (the projection head's) normalise each chunk with its own statistics. ``None``: one pass.
    """

    model_type = "hf_ssl_simclr"

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained_backbone: bool = False,
        small_image_stem: bool = False,
        image_size: int = 224,
        num_channels: int = 3,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        projection_hidden_dim: int = 2048,
        projection_dim: int = 128,
        projection_layers: int = 2,
        loss_temperature: float = 0.5,
        gather_distributed: bool = True,
        crop_min_scale: float = 0.08,
        hflip_prob: float = 0.5,
        color_jitter_prob: float = 0.8,
        color_jitter_strength: float = 0.5,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.0,
        gradient_cache_chunk_size: int | None = None,
        **kwargs: Any,
    ):
        check_model_name(backbone)
        if not isinstance(backbone_kwargs, dict | None):
            raise UsageError(f"backbone_kwargs must be a mapping of timm arguments, got {backbone_kwargs!r}")
        check_range("image_size", image_size, 1)
        check_range("num_channels", num_channels, 1)
        check_range("projection_hidden_dim", projection_hidden_dim, 1)
        check_range("projection_dim", projection_dim, 1)
        check_range("projection_layers", projection_layers, 1)
        check_range("loss_temperature", loss_temperature, 0, low_inclusive=False)
        check_range("crop_min_scale", crop_min_scale, 0, 1, low_inclusive=False)
        for name, p in (
            ("hflip_prob", hflip_prob),
            ("color_jitter_prob", color_jitter_prob),
            ("grayscale_prob", grayscale_prob),
            ("blur_prob", blur_prob),
        ):
            check_range(name, p, 0, 1)
        check_range("color_jitter_strength", color_jitter_strength, 0)
        if gradient_cache_chunk_size is not None:
            check_int("gradient_cache_chunk_size", gradient_cache_chunk_size, 1)
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
        self.projection_hidden_dim = projection_hidden_dim
        self.projection_dim = projection_dim
        self.projection_layers = projection_layers
        self.loss_temperature = loss_temperature
        self.gather_distributed = gather_distributed
        self.crop_min_scale = crop_min_scale
        self.hflip_prob = hflip_prob
        self.color_jitter_prob = color_jitter_prob
        self.color_jitter_strength = color_jitter_strength
        self.grayscale_prob = grayscale_prob
        self.blur_prob = blur_prob
        self.gradient_cache_chunk_size = gradient_cache_chunk_size
        super().__init__(**kwargs)
        self.timm_kwargs  # noqa: B018 (refuses a small_image_stem the backbone's family cannot take)

    @property
    def timm_kwargs(self) -> dict[str, Any]:
        """The arguments ``timm.create_model(self.backbone, **timm_kwargs)`` rebuilds the backbone with."""
        return backbone_kwargs(
            self.backbone, self.image_size, self.num_channels, self.small_image_stem, self.backbone_kwargs
        )

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations this config applies, in pipeline order, among ``AUGMENTATIONS``."""
        active = {
            "crop": self.crop_min_scale < 1,
            "flip": self.hflip_prob > 0,
            "color_jitter": self.color_jitter_prob > 0 and self.color_jitter_strength > 0,
            "grayscale": self.grayscale_prob > 0,
            "blur": self.blur_prob > 0,
        }
        return tuple(name for name in AUGMENTATIONS if active[name])

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's preprocessing keys for this backbone (see :func:`hf_ssl.backbones.timm.data_config`)."""
        return data_config(self.image_size, self.num_channels, self.image_mean, self.image_std)
