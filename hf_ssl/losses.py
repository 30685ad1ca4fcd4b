"""What the objectives' losses share: the mean over a step's predicted items, the fp32 islands of mixed precision
and the gathering of contrastive negatives across processes. Each loss itself lives in its objective's folder."""

from __future__ import annotations

import contextlib

import torch

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
