"""NT-Xent, the contrastive loss of SimCLR (Chen et al., 2020, arXiv:2002.05709)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hf_ssl.losses import full_precision, gather_with_offset


def nt_xent_loss(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float = 0.5, gather_distributed: bool = True
) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross entropy of SimCLR (Chen et al., 2020, eq. 1).

    Row ``i`` of ``z_a`` and row ``i`` of ``z_b`` are two views of one example. Each of the ``2N`` views is an anchor
    whose positive is its partner and whose negatives are the other ``2N - 2`` views of the batch. Logits are
    computed in fp32 whatever the input dtype, and the self-similarity is removed by masking rather than by
    subtracting a large constant, so the loss is finite for any temperature.

    With several processes (and ``gather_distributed``), the views of every process are gathered with gradients:
    each process computes the loss of its own anchors against all ``2 * world_size * N`` views, so that the mean over
    processes (what DDP's gradient averaging optimises) equals the one-process loss on the concatenated batch.

    Args:
        z_a: ``(N, D)`` embeddings of the first views.
        z_b: ``(N, D)`` embeddings of the second views.
        temperature: softmax temperature tau.
        gather_distributed: use the other processes' views as negatives.

    Returns:
        Scalar mean loss over this process' ``2N`` anchors.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"expected two (N, D) tensors of one shape, got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    n = z_a.shape[0]
    z_a = F.normalize(z_a.float(), dim=1)
    z_b = F.normalize(z_b.float(), dim=1)
    (all_a, all_b), offset = gather_with_offset(z_a, z_b, gather_distributed=gather_distributed)
    total = all_a.shape[0]
    anchors = torch.cat([z_a, z_b])  # (2n, D)
    candidates = torch.cat([all_a, all_b])  # (2 * total, D)
    with full_precision(z_a.device):  # fp32 logits under autocast too
        logits = anchors @ candidates.T / temperature  # (2n, 2 * total)
    local = torch.arange(n, device=z_a.device) + offset
    self_index = torch.cat([local, local + total])
    positive_index = torch.cat([local + total, local])
    rows = torch.arange(2 * n, device=z_a.device)
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive_index)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent_loss`."""

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = True):
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z_a, z_b, self.temperature, self.gather_distributed)
