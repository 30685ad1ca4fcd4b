"""The tiny wav2vec 2.0 the tests build: a 4-layer convolutional front end (receptive field 80 samples, a frame every
40, so 199 frames a second at 8 kHz) under 2 transformer layers of width 32, quick on one CPU thread."""

from __future__ import annotations

import json
from typing import Any

from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig

RATE = 8000
TINY_BACKBONE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[16, 16, 16, 16],
    conv_kernel=[10, 3, 3, 3],
    conv_stride=[5, 2, 2, 2],
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer",
)
"""A transformers ``Wav2Vec2Config`` (also ``HubertConfig``, ``Data2VecAudioConfig``) as keyword arguments."""
NO_DROPOUT = dict(
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0
)
"""Backbone keys that turn every dropout of the backbone off."""
TINY_OBJECTIVE = dict(
    num_codevectors_per_group=16,
    codevector_dim=16,
    proj_codevector_dim=16,
    num_negatives=10,
    mask_time_prob=0.5,
    mask_time_length=4,
    sampling_rate=RATE,
    max_duration_seconds=1.0,
)
"""The ``Wav2VecConfig`` fields around the backbone."""


def tiny_wav2vec_config(backbone: dict[str, Any] | None = None, **overrides: Any) -> Wav2VecConfig:
    """The tiny config; ``backbone`` updates :data:`TINY_BACKBONE`, ``overrides`` the objective's fields."""
    return Wav2VecConfig(backbone={**TINY_BACKBONE, **(backbone or {})}, **{**TINY_OBJECTIVE, **overrides})


def tiny_wav2vec_flags(backbone: dict[str, Any] | None = None) -> list[str]:
    """The tiny config as ``hf-ssl pretrain wav2vec`` flags (``--backbone`` JSON first, then one flag per field)."""
    flags = ["--backbone", json.dumps({**TINY_BACKBONE, **(backbone or {})})]
    return flags + [arg for key, value in TINY_OBJECTIVE.items() for arg in (f"--{key}", str(value))]
