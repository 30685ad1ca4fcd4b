"""data2vec's regression targets and loss (Baevski et al., 2022, "data2vec: A General Framework for Self-supervised
Learning in Speech, Vision and Language", arXiv:2202.03555, section 3.3 "Targets" and 3.4 "Objective").

Checked against fairseq's ``examples/data2vec/models/data2vec_text.py`` (``Data2VecTextEncoder.forward``): the
teacher's top-K layer outputs, each normalised without parameters (text: ``layer_norm_target_layer``, a layer norm
over the features of each token; speech: ``instance_norm_target_layer``, an instance norm over the time axis), are
averaged; the student's regression output at the masked positions is compared with smooth L1 of ``beta`` (L2 when
``beta`` is 0), summed over the features and scaled by ``loss_scale`` (``1 / sqrt(H)`` when unset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

TARGET_NORMS = ("layer_norm", "instance_norm")
"""The per-layer normalisations of the targets: fairseq's ``layer_norm_target_layer`` (text, the default) and
``instance_norm_target_layer`` (speech)."""


def data2vec_targets(
    layer_outputs: Sequence[torch.Tensor],
    top_k: int,
    norm: str = "layer_norm",
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The regression targets: the mean of the last ``top_k`` layer outputs, each normalised first.

    Args:
        layer_outputs: the teacher's per-layer outputs, first layer first, each ``(B, L, H)``.
        top_k: how many of the last layers to average (``1 <= top_k <= len(layer_outputs)``).
        norm: ``"layer_norm"`` (over ``H`` for each token, no parameters, as fairseq's text model) or
            ``"instance_norm"`` (over ``L`` for each sequence and feature, as ``F.instance_norm`` on ``(B, H, L)``;
            with ``attention_mask``, over the non-padding tokens only).
        attention_mask: ``(B, L)``, 1 for tokens and 0 for padding; used by ``"instance_norm"`` only.

    Returns:
        ``(B, L, H)`` float32 targets (computed in float32, as fairseq does).
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ValueError(f"top_k must be in [1, {len(layer_outputs)}], got {top_k}")
    if norm not in TARGET_NORMS:
        raise ValueError(f"norm must be one of {TARGET_NORMS}, got {norm!r}")
    normalised = [_normalise(layer.float(), norm, attention_mask) for layer in layer_outputs[-top_k:]]
    return torch.stack(normalised).mean(dim=0)  # (K, B, L, H) -> (B, L, H)


def _normalise(layer: torch.Tensor, norm: str, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if norm == "layer_norm":
        return F.layer_norm(layer, layer.shape[-1:])  # over H, no parameters
    if attention_mask is None:
        return F.instance_norm(layer.transpose(1, 2)).transpose(1, 2)  # (B, H, L): over L for each feature
    weights = attention_mask.to(layer.dtype).unsqueeze(-1)  # (B, L, 1)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, 1)
    mean = (layer * weights).sum(dim=1, keepdim=True) / count
    var = ((layer - mean).pow(2) * weights).sum(dim=1, keepdim=True) / count  # biased, as instance_norm
    return (layer - mean) / torch.sqrt(var + 1e-5)


def regression_loss(
    predictions: torch.Tensor, targets: torch.Tensor, beta: float, scale: float | None = None
) -> torch.Tensor:
    """The summed regression loss of ``N`` predicted items (divide by the item count for the mean).

    Args:
        predictions: ``(N, H)`` the regression head's outputs at the masked positions.
        targets: ``(N, H)`` the teacher's targets there.
        beta: smooth L1's ``beta`` (quadratic below it, linear above); 0 means the squared error (L2).
        scale: the factor on each item's loss summed over ``H``; ``None`` means ``1 / sqrt(H)`` (fairseq's
            ``loss_scale`` left unset).

    Returns:
        Scalar: ``scale * sum over items and features`` of the element-wise loss, in float32.
    """
    predictions, targets = predictions.float(), targets.float()
    if beta == 0:
        elementwise = F.mse_loss(predictions, targets, reduction="none")
    else:
        elementwise = F.smooth_l1_loss(predictions, targets, reduction="none", beta=beta)
    factor = 1.0 / math.sqrt(predictions.shape[-1]) if scale is None else scale
    return elementwise.sum() * factor
