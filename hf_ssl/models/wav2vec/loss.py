"""wav2vec 2.0's losses (Baevski et al., 2020, arXiv:2006.11477): the contrastive task and the codebook diversity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_ssl.losses import full_precision


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
