"""World size / rank helpers, unwrapping a wrapped model, and an all_gather that keeps gradients."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def unwrap_model(model: Any) -> Any:
    """The model inside DDP / accelerate wrappers (``model.module``, as deep as they go)."""
    while hasattr(model, "module"):
        model = model.module
    return model


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over processes and keeps this process' slice.

    With every process computing a loss on the gathered tensor, the summed gradient is the gradient of the sum of
    the per-process losses; DDP's gradient averaging then turns it into the gradient of their mean.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.rank = dist.get_rank()
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return tuple(gathered)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        grad = torch.stack(grads)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every process) from all processes along dim 0, keeping gradients.

    Args:
        tensor: ``(n, ...)`` on every process.

    Returns:
        ``(world_size * n, ...)``, rank 0's rows first. Without a process group this is ``tensor`` itself.
    """
    if not is_distributed():
        return tensor
    return torch.cat(_GatherWithGrad.apply(tensor), dim=0)
