"""Self-supervised losses: plain functions and modules, no model code."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

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
    """The negatives-gathering piece shared by the contrastive losses (:func:`nt_xent_loss`, :func:`info_nce_loss`).

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
    :func:`nt_xent_loss` the loss is not symmetric and anchors are not each other's negatives (the SimCSE loss;
    sentence-transformers' ``MultipleNegativesRankingLoss`` is the same with ``scale = 1 / tau``). Logits are fp32.

    With several processes (and ``gather_distributed``), positives and hard negatives are gathered with gradients
    (:func:`gather_with_offset`): each process scores its own anchors against all ``world_size * N`` candidates, and
    the mean over processes equals the one-process loss on the concatenated batch.

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


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Alignment of positive pairs (Wang & Isola, 2020, "Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere", arXiv:2005.10242): ``E ||f(x) - f(y)||_2^alpha`` over L2-normalised
    pairs; lower is better (0: positives coincide).

    Args:
        x: ``(N, D)`` embeddings; ``y``: ``(N, D)`` their positives.
        alpha: the exponent (2 in the paper).
    """
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Uniformity (Wang & Isola, 2020): ``log E exp(-t ||f(x) - f(y)||_2^2)`` over all pairs of distinct rows of
    L2-normalised ``x (N, D)``, N >= 2; lower is more uniform on the hypersphere (collapse gives 0)."""
    x = F.normalize(x.float(), dim=-1)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


# --- wav2vec 2.0: contrastive and diversity losses ------------------------------------------------------------------


def wav2vec_contrastive_loss(
    predicted: torch.Tensor,
    targets: torch.Tensor,
    mask_time_indices: torch.Tensor,
    sampled_negative_indices: torch.Tensor,
    logits_temperature: float = 0.1,
    target_codes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The contrastive task L_m of wav2vec 2.0 (Baevski et al., 2020, arXiv:2006.11477, eq. 3), mean over masked
    frames.

    For a masked frame ``t`` of utterance ``b``, the logits are ``sim(c_t, q) / kappa`` for the true quantized
    target ``q_t`` and its ``K`` distractors, ``sim`` the cosine similarity. The similarities are one batched matmul
    of L2-normalised vectors per utterance, ``(B, T, D) @ (B, D, T)``, from which the positive (diagonal) and the
    distractors are gathered: no ``(K, B, T, D)`` tensor of distractor vectors is built. As in transformers'
    ``Wav2Vec2ForPreTraining`` and fairseq, a distractor identical to the positive (same codes) gets logit
    ``-inf``. transformers sums over masked frames; this returns the mean (its sum divided by the number of masked
    frames, fairseq's per-sample normalisation), so the scale does not depend on batch size or duration.

    Args:
        predicted: ``(B, T, D)`` context vectors projected to the target space (``c_t``).
        targets: ``(B, T, D)`` projected quantized targets (``q_t``).
        mask_time_indices: ``(B, T)`` bool, the masked frames; the loss is over these only.
        sampled_negative_indices: ``(B, T, K)`` flat indices ``b * T + t'`` of distractors, each in its own
            utterance (the format of transformers' ``_sample_negative_indices``).
        logits_temperature: kappa.
        target_codes: ``(B, T, G)`` codebook entries chosen for each target; distractors with the same codes as
            the positive are dropped. ``None`` compares the target vectors instead.

    Returns:
        ``(loss, accuracy)``: scalar mean cross entropy over masked frames (0 when nothing is masked) and the
        fraction of masked frames whose positive has the highest logit.
    """
    batch, length, _ = predicted.shape
    mask = mask_time_indices.bool()
    predicted = F.normalize(predicted.float(), dim=-1)
    targets_n = F.normalize(targets.float(), dim=-1)
    with full_precision(predicted.device):  # fp32 logits under autocast too
        similarity = torch.bmm(predicted, targets_n.transpose(1, 2)) / logits_temperature  # (B, T, T)
    positive = similarity.diagonal(dim1=1, dim2=2)  # (B, T)
    offsets = torch.arange(batch, device=predicted.device)[:, None, None] * length
    local = sampled_negative_indices.long() - offsets  # (B, T, K): frame index within the utterance
    negative = similarity.gather(2, local)  # (B, T, K)
    flat_neg = sampled_negative_indices.long().flatten(1)  # (B, T * K)
    if target_codes is not None:
        codes = target_codes.flatten(0, 1)  # (B * T, G)
        same = (codes[flat_neg].view(batch, length, -1, codes.shape[-1]) == target_codes[:, :, None]).all(-1)
    else:
        flat = targets.flatten(0, 1)  # (B * T, D)
        same = (flat[flat_neg].view(batch, length, -1, flat.shape[-1]) == targets[:, :, None]).all(-1)
    negative = negative.masked_fill(same, float("-inf"))
    logits = torch.cat([positive[..., None], negative], dim=-1)  # (B, T, 1 + K), positive first
    per_frame = torch.logsumexp(logits, dim=-1) - positive  # (B, T) cross entropy with target 0
    weights = mask.float()
    count = weights.sum().clamp(min=1.0)
    loss = (per_frame * weights).sum() / count
    correct = (positive >= negative.max(dim=-1).values).float()  # (B, T)
    accuracy = (correct * weights).sum() / count
    return loss, accuracy


def codevector_perplexity(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Perplexity of the average codebook usage, summed over groups (Baevski et al., 2020, eq. 4).

    ``exp(-sum_v p_gv log p_gv)`` for each group ``g``, with ``p_g`` the distribution averaged over the frames in
    ``mask`` (all frames if ``None``), as transformers' ``Wav2Vec2GumbelVectorQuantizer._compute_perplexity``.

    Args:
        probs: ``(N, G, V)`` per-frame codebook distributions.
        mask: ``(N,)`` bool, the frames to average over.

    Returns:
        Scalar in ``[G, G * V]``.
    """
    if mask is None:
        marginal = probs.mean(dim=0)  # (G, V)
    else:
        weights = mask.to(probs.dtype)[:, None, None]
        marginal = (probs * weights).sum(dim=0) / weights.sum().clamp(min=1.0)  # (G, V)
    # log(p + 1e-7) as transformers: xlogy's gradient at p = 0 (a codebook entry unused by every frame) is NaN
    return torch.exp(-(marginal * torch.log(marginal + 1e-7)).sum(dim=-1)).sum()


def wav2vec_diversity_loss(perplexity: torch.Tensor, num_codevectors: int) -> torch.Tensor:
    """The diversity penalty L_d of wav2vec 2.0 (Baevski et al., 2020, eq. 4): ``(G V - perplexity) / (G V)``.

    0 when every codebook entry is used equally, ``1 - 1 / V`` when each group always picks one entry. transformers
    multiplies it by the number of masked frames (its losses are sums); this is the per-frame value.

    Args:
        perplexity: scalar from :func:`codevector_perplexity`.
        num_codevectors: ``G * V``.
    """
    return (num_codevectors - perplexity) / num_codevectors
