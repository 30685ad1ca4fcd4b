"""What the objectives' losses share: the mean over a step's predicted items, the fp32 islands of mixed precision,
the gathering of contrastive negatives across processes, and data2vec's targets and regression loss (text and
audio). A loss only one objective uses lives in its objective's folder."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from hf_ssl.distributed import all_gather_with_grad, get_rank, is_distributed


def mean_over_items(
    total: torch.Tensor, count: torch.Tensor | int, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """A loss summed over this micro-batch's ``count`` predicted items, as its share of the step's mean.

    With ``num_items_in_batch`` (the items of every micro-batch of the optimisation step on every process, as
    :class:`~hf_ssl.trainer.SSLTrainer` counts them) the micro-batches' losses add up to the mean over the whole
    step, so the update does not depend on how the batch is split over processes and accumulation steps; without
    it, the mean over this micro-batch.
    """
    divisor = num_items_in_batch if num_items_in_batch is not None else count
    if isinstance(divisor, torch.Tensor):
        divisor = divisor.to(total.device, total.dtype)
    return total / divisor


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A block computed in its inputs' own dtype, outside any autocast: the fp32 islands of mixed precision.

    Under ``torch.autocast`` (the Trainer's ``--bf16`` / ``--fp16``) matrix products run in the low-precision dtype
    even on fp32 inputs. Similarity logits divided by a small temperature, the Gumbel quantizer's logits and the like
    lose too much there (bf16 keeps 8 significant bits), so they are computed inside this block on ``.float()``
    inputs. A device type without autocast gets a no-op block.

    Args:
        device: the device (or its type) of the tensors computed in the block.
    """
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def gather_with_offset(*tensors: torch.Tensor, gather_distributed: bool = True) -> tuple[tuple[torch.Tensor, ...], int]:
    """The negatives-gathering piece shared by the contrastive losses (SimCLR's NT-Xent, SimCSE's InfoNCE).

    With several processes (and ``gather_distributed``), each ``(n, ...)`` tensor is gathered from every process
    **with gradients** (:func:`~hf_ssl.distributed.all_gather_with_grad`), so that a loss computed by each process on
    its own anchors against all gathered candidates, averaged over processes by DDP, equals the one-process loss on
    the concatenated batch, gradients included.

    Args:
        *tensors: ``(n, ...)`` tensors, the same ``n`` on every process.
        gather_distributed: gather from the other processes (otherwise the tensors are returned as they are).

    Returns:
        ``(gathered tensors ((world_size * n, ...) each, rank 0's rows first), offset)``: ``offset`` is the row of
        this process' first example in the gathered tensors (``rank * n``; 0 without gathering).
    """
    if gather_distributed and is_distributed():
        return tuple(all_gather_with_grad(t) for t in tensors), get_rank() * tensors[0].shape[0]
    return tensors, 0


# --- data2vec's regression targets and loss (text and audio) ---------------------------------------------------------

TARGET_NORMS = ("layer_norm", "instance_norm")
"""The parameter-free normalisations of data2vec's targets (Baevski et al., 2022, arXiv:2202.03555, sec. 3.3):
``"layer_norm"`` over the features of each position (fairseq's ``layer_norm_target_layer`` / ``layer_norm_targets``)
and ``"instance_norm"`` over the positions of each sequence, per feature (``instance_norm_target_layer`` /
``instance_norm_targets``)."""


def data2vec_targets(
    layer_outputs: Sequence[torch.Tensor],
    top_k: int,
    layer_norms: Sequence[str] = ("layer_norm",),
    target_norms: Sequence[str] = (),
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """data2vec's regression targets: the mean of the last ``top_k`` layer outputs, each normalised first.

    Checked against fairseq's ``examples/data2vec/models/data2vec_text.py`` (``Data2VecTextEncoder.forward``) and
    ``data2vec_audio.py`` (``Data2VecAudioModel.forward``): each of the top-K layers is normalised (audio: instance
    norm, then layer norm where both are on; text: layer norm), the layers are averaged, and the average is
    normalised again where the audio recipe asks (``layer_norm_targets``, then ``instance_norm_targets``). All in
    float32, as fairseq. Where we differ: with ``attention_mask`` the instance norm runs over the unpadded positions
    only (fairseq's includes the padding).

    Args:
        layer_outputs: the teacher's per-layer outputs, first layer first, each ``(B, L, H)``.
        top_k: how many of the last layers to average (``1 <= top_k <= len(layer_outputs)``).
        layer_norms: the norms applied to each layer before averaging, in order (names of :data:`TARGET_NORMS`).
        target_norms: the norms applied to the average, in order.
        attention_mask: ``(B, L)``, nonzero on real positions; used by ``"instance_norm"`` only.

    Returns:
        ``(B, L, H)`` float32 targets.
    """
    if not 1 <= top_k <= len(layer_outputs):
        raise ValueError(f"top_k must be in [1, {len(layer_outputs)}], got {top_k}")
    for norm in (*layer_norms, *target_norms):
        if norm not in TARGET_NORMS:
            raise ValueError(f"norms must be among {TARGET_NORMS}, got {norm!r}")
    layers = [layer.float() for layer in layer_outputs[-top_k:]]
    for norm in layer_norms:
        layers = [_target_norm(layer, norm, attention_mask) for layer in layers]
    targets = torch.stack(layers).mean(dim=0)  # (K, B, L, H) -> (B, L, H)
    for norm in target_norms:
        targets = _target_norm(targets, norm, attention_mask)
    return targets


def _target_norm(layer: torch.Tensor, norm: str, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, L, H)`` layer-normalised over ``H`` or instance-normalised over ``L`` (``F.instance_norm`` on
    ``(B, H, L)``: eps 1e-5, biased variance; over the unpadded positions only when ``attention_mask`` is given)."""
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
    """data2vec's summed regression loss of ``N`` predicted items (divide by the item count for the mean; fairseq's
    ``examples/data2vec/models/data2vec_*.py``: smooth L1 of ``beta``, L2 when 0, summed over the features, times
    ``loss_scale``).

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
