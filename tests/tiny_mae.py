"""The tiny MAE the tests build: 32x32 images in 4x4 patches (an 8x8 grid), an encoder of width 32 and 2 layers,
a decoder of width 16 and 1 layer, quick on one CPU thread."""

from __future__ import annotations

from typing import Any

from hf_ssl.models.mae.configuration_mae import MAEConfig

TINY = dict(
    image_size=32,
    patch_size=4,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=32,
)
"""The ``MAEConfig`` fields of the tiny model."""
TINY_FLAGS = [arg for key, value in TINY.items() for arg in (f"--{key}", str(value))]
"""The tiny config as ``hf-ssl pretrain mae`` flags."""


def tiny_mae_config(**overrides: Any) -> MAEConfig:
    """The tiny config, with ``overrides`` of its fields."""
    return MAEConfig(**{**TINY, **overrides})
