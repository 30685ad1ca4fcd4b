"""InfoNCE, the contrastive loss of SimCSE (Gao et al., 2021, arXiv:2104.08821)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_ssl.losses import full_precision, gather_with_offset


def info_nce_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    hard_negatives: torch.Tensor | None = None,
    temperature: float = 0.05,
    hard_negative_weight: float = 1.0,
    gather_distributed: bool = True,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives over cosine similarities, as in SimCSE (Gao et al., 2021, "SimCSE: Simple
    Contrastive Learning of Sentence Embeddings", arXiv:2104.08821, eq. 1 unsupervised and eq. 5 with hard negatives).

    Anchor ``i`` has one positive, row ``i`` of ``positives``; its negatives are every other positive of the batch
    and, when given, every hard negative, its own (row ``i`` of ``hard_negatives``) weighted by ``alpha``::

        l_i = -log  e^{s(h_i, h_i^+)/tau} / sum_j ( e^{s(h_i, h_j^+)/tau} + alpha^{1[j = i]} e^{s(h_i, h_j^-)/tau} )

    ``alpha`` enters as ``log(alpha)`` added to that logit (SimCSE's code adds its ``hard_negative_weight`` ``= log
    alpha`` there; ``alpha = 1`` is plain InfoNCE over all the candidates, the paper's choice). Unlike
    SimCLR's NT-Xent the loss is not symmetric and anchors are not each other's negatives (the SimCSE loss;
    sentence-transformers' ``MultipleNegativesRankingLoss`` is the same with ``scale = 1 / tau``). Logits are fp32.

    With several processes (and ``gather_distributed``), positives and hard negatives are gathered with gradients
    (:func:`~hf_ssl.losses.gather_with_offset`): each process scores its own anchors against all ``world_size * N``
    candidates, and the mean over processes equals the one-process loss on the concatenated batch.

    Args:
        anchors: ``(N, D)`` embeddings.
        positives: ``(N, D)`` embeddings of each anchor's positive.
        hard_negatives: ``(N, D)`` embeddings of each anchor's hard negative, or ``None``.
        temperature: tau.
        hard_negative_weight: alpha >= 0, the weight of an anchor's own hard negative in its denominator.
        gather_distributed: use the other processes' candidates as negatives.

    Returns:
        Scalar mean loss over this process' ``N`` anchors.
    """
    if anchors.ndim != 2 or positives.shape != anchors.shape:
        raise ValueError(
            f"expected two (N, D) tensors of one shape, got {tuple(anchors.shape)}, {tuple(positives.shape)}"
        )
    if hard_negatives is not None and hard_negatives.shape != anchors.shape:
        raise ValueError(f"hard_negatives must be {tuple(anchors.shape)}, got {tuple(hard_negatives.shape)}")
    n = anchors.shape[0]
    anchors = F.normalize(anchors.float(), dim=1)
    candidates = [F.normalize(positives.float(), dim=1)]
    if hard_negatives is not None:
        candidates.append(F.normalize(hard_negatives.float(), dim=1))
    gathered, offset = gather_with_offset(*candidates, gather_distributed=gather_distributed)
    total = gathered[0].shape[0]
    with full_precision(anchors.device):  # fp32 logits under autocast too
        logits = anchors @ torch.cat(gathered).T / temperature  # (N, total) or (N, 2 * total)
    targets = torch.arange(n, device=anchors.device) + offset
    if hard_negatives is not None and hard_negative_weight != 1.0:
        bias = torch.zeros_like(logits)
        bias[torch.arange(n, device=anchors.device), total + targets] = (
            math.log(hard_negative_weight) if (hard_negative_weight > 0) else float("-inf")
        )
        logits = logits + bias
    return F.cross_entropy(logits, targets)
