"""MAE configuration (He et al., 2021, "Masked Autoencoders Are Scalable Vision Learners", arXiv:2111.06377)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from hf_ssl.backbones.timm import data_config, default_normalization
from hf_ssl.errors import UsageError, check_range

_POSITIVE_INTS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
)


class MAEConfig(PretrainedConfig):
    """Configuration of :class:`MAEModel` / :class:`MAEForPreTraining`.

    Field names follow transformers' ``ViTMAEConfig``; the defaults are ViT-B/16 with the paper's 8-block,
    512-wide decoder. Every value is checked here, so a bad one fails when the config is built, naming the field.

    Args:
        image_size: side of the square input images.
        patch_size: side of the square patches; must divide ``image_size``.
        num_channels: input channels.
        hidden_size: encoder width.
        num_hidden_layers: encoder depth.
        num_attention_heads: encoder heads; must divide ``hidden_size``.
        intermediate_size: encoder MLP width (timm's ``mlp_ratio = intermediate_size / hidden_size``).
        decoder_hidden_size: decoder width.
        decoder_num_hidden_layers: decoder depth.
        decoder_num_attention_heads: decoder heads; must divide ``decoder_hidden_size``.
        decoder_intermediate_size: decoder MLP width.
        mask_ratio: fraction of the patches removed before the encoder, in (0, 1).
        norm_pix_loss: regress each patch's pixels normalised by that patch's mean and variance (paper sec. 3).
        image_mean: per-channel normalisation mean (ImageNet statistics by default).
        image_std: per-channel normalisation std.
        qkv_bias: bias in the query/key/value projections.
        layer_norm_eps: epsilon of every LayerNorm; timm's ViT uses 1e-6 (and only 1e-6 can be exported to timm).
        initializer_range: std of the normal initialisation of the class and mask tokens.
        crop_min_scale: smallest area fraction of the random resized crop (0.2 in the paper's pretraining).
        hflip_prob: probability of a horizontal flip.
    """

    model_type = "hf_ssl_mae"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        decoder_hidden_size: int = 512,
        decoder_num_hidden_layers: int = 8,
        decoder_num_attention_heads: int = 16,
        decoder_intermediate_size: int = 2048,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = False,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        crop_min_scale: float = 0.2,
        hflip_prob: float = 0.5,
        **kwargs: Any,
    ):
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = bool(norm_pix_loss)
        default_mean, default_std = default_normalization(num_channels)
        self.image_mean = [float(v) for v in (image_mean if image_mean is not None else default_mean)]
        self.image_std = [float(v) for v in (image_std if image_std is not None else default_std)]
        self.qkv_bias = bool(qkv_bias)
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.crop_min_scale = crop_min_scale
        self.hflip_prob = hflip_prob
        self._validate()
        super().__init__(**kwargs)

    @property
    def grid_size(self) -> int:
        """Patches along each side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image, ``L`` in the model's shapes."""
        return self.grid_size**2

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's preprocessing keys of the encoder (see :func:`hf_ssl.backbones.timm.data_config`): what evaluation,
        the saved image processor and the exported ``pretrained_cfg`` apply to an image."""
        return data_config(self.image_size, self.num_channels, self.image_mean, self.image_std)

    def _validate(self) -> None:
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise UsageError(
                f"patch_size must divide image_size, got patch_size={self.patch_size} and image_size={self.image_size}"
            )
        for width, heads in (
            ("hidden_size", "num_attention_heads"),
            ("decoder_hidden_size", "decoder_num_attention_heads"),
        ):
            if getattr(self, width) % getattr(self, heads):
                raise UsageError(
                    f"{width} must be divisible by {heads}, got {width}={getattr(self, width)} and "
                    f"{heads}={getattr(self, heads)}"
                )
        for width in ("hidden_size", "decoder_hidden_size"):  # 2-D sin-cos position embedding: sin/cos of (h, w)
            if getattr(self, width) % 4:
                raise UsageError(
                    f"{width} must be a multiple of 4 (2-D sin-cos position embedding), got {getattr(self, width)}"
                )
        # timm builds its MLP with int(hidden_size * mlp_ratio) units; the ratio must give back intermediate_size
        if int(self.hidden_size * (self.intermediate_size / self.hidden_size)) != self.intermediate_size:
            raise UsageError(f"intermediate_size={self.intermediate_size} cannot be expressed as timm's mlp_ratio")
        check_range("mask_ratio", self.mask_ratio, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        check_range("layer_norm_eps", self.layer_norm_eps, 0.0, low_inclusive=False)
        check_range("initializer_range", self.initializer_range, 0.0)
        check_range("crop_min_scale", self.crop_min_scale, 0.0, 1.0, low_inclusive=False)
        check_range("hflip_prob", self.hflip_prob, 0.0, 1.0)
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != self.num_channels:
                raise UsageError(f"{name} must have num_channels={self.num_channels} values, got {values!r}")
        for i, std in enumerate(self.image_std):
            check_range(f"image_std[{i}]", std, 0.0, low_inclusive=False)
