"""wav2vec 2.0's contrastive task's distractors, drawn on the device (its span masks: :mod:`hf_ssl.masking`)."""

from __future__ import annotations

import torch


def sample_negative_indices(
    mask_time_indices: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Distractors for the contrastive task: for each masked frame, ``num_negatives`` other masked frames of the
    same utterance, uniformly with replacement, never the frame itself (Baevski et al., 2020, sec. 3.2).

    Drawn with torch on the mask's device; same distribution and output format as transformers'
    ``_sample_negative_indices``: indices into the flattened ``(B * T)`` frames. Rows of unmasked frames (and of
    utterances with a single masked frame, which has no possible distractor) point at the frame itself; the loss
    ignores unmasked frames and drops distractors equal to the positive.

    Args:
        mask_time_indices: ``(B, T)`` bool, the masked frames.
        num_negatives: ``K``.
        generator: optional torch generator.

    Returns:
        ``(B, T, K)`` long tensor of flat frame indices ``b * T + t'``.
    """
    mask = mask_time_indices.bool()
    batch_size, sequence_length = mask.shape
    device = mask.device
    num_masked = mask.sum(dim=1, keepdim=True)  # (B, 1)
    # masked frame positions first, in time order: row b's first M_b entries are its masked frames
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
    rank = mask.long().cumsum(dim=1) - 1  # (B, T): index of each masked frame among its row's masked frames
    # r uniform in [0, M_b - 2], shifted past the frame's own rank: uniform over the M_b - 1 other masked frames
    uniform = torch.rand(batch_size, sequence_length, num_negatives, device=device, generator=generator)
    choices = (uniform * (num_masked - 1).clamp(min=0)[:, :, None]).long()  # (B, T, K)
    choices = choices + (choices >= rank[:, :, None]).long()
    negatives = order.gather(1, choices.clamp(max=sequence_length - 1).flatten(1)).view_as(choices)  # (B, T, K)
    own = torch.arange(sequence_length, device=device)[None, :, None]
    valid = mask[:, :, None] & (num_masked[:, :, None] > 1)
    negatives = torch.where(valid, negatives, own)
    offsets = torch.arange(batch_size, device=device)[:, None, None] * sequence_length
    return negatives + offsets
