"""Span masks of frames, drawn on the device: wav2vec 2.0's masking (Baevski et al., 2020), which data2vec audio
(Baevski et al., 2022) reuses with the same defaults (fairseq ``examples/data2vec/models/data2vec_audio.py``:
``mask_prob`` 0.65, ``mask_length`` 10)."""

from __future__ import annotations

import torch


def compute_span_mask(
    batch_size: int,
    sequence_length: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    lengths: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random time spans to mask, as in wav2vec 2.0 (Baevski et al., 2020, arXiv:2006.11477, sec. 3.1 and 4.2).

    Drawn entirely with torch on ``device`` (no host synchronisation, no numpy), following the sampling of
    transformers' ``_compute_mask_indices`` (checked against ``models/wav2vec2/modeling_wav2vec2.py``): utterance
    ``b`` of ``L_b`` unpadded frames gets ``n_b = int(mask_prob * L_b / mask_length + u)`` span starts (``u ~ U[0, 1)``
    drawn once per batch, probabilistic rounding), at least ``min_masks``, at most what fits, chosen uniformly
    without replacement among ``0 .. L_b - mask_length``; each start masks ``mask_length`` frames. Spans may overlap,
    so ``mask_prob`` is an upper bound of the masked fraction, and a span never reaches the padding.

    Args:
        batch_size: ``B``.
        sequence_length: ``T``, frames per row (the padded length).
        mask_prob: expected fraction of frames that start-plus-span covers before overlaps (0.65 in the paper).
        mask_length: frames per span (10 in the paper).
        min_masks: least number of spans per utterance (when it fits).
        lengths: ``(B,)`` unpadded frames per row; ``None`` means all ``T``.
        device: where to draw (defaults to ``lengths``' device, else the CPU).
        generator: optional torch generator for reproducible draws.

    Returns:
        ``(B, T)`` bool mask, ``True`` at masked frames.
    """
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    if device is None:
        device = lengths.device if lengths is not None else "cpu"
    if lengths is None:
        lengths = torch.full((batch_size,), sequence_length, dtype=torch.long, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    epsilon = torch.rand((), device=device, generator=generator)
    num_spans = (mask_prob * lengths / mask_length + epsilon).floor().long()  # (B,)
    num_spans = num_spans.clamp(min=min_masks)
    num_spans = torch.minimum(num_spans, torch.full_like(num_spans, sequence_length // mask_length))
    num_starts = (lengths - (mask_length - 1)).clamp(min=0)  # valid start positions: 0 .. L_b - mask_length
    num_spans = torch.minimum(num_spans, num_starts)
    # a uniform subset of n_b starts without replacement: the n_b best of iid random scores over the valid starts
    positions = torch.arange(sequence_length, device=device)
    scores = torch.rand(batch_size, sequence_length, device=device, generator=generator)
    scores = scores.masked_fill(positions[None, :] >= num_starts[:, None], -1.0)  # (B, T), invalid starts last
    rank = scores.argsort(dim=1, descending=True).argsort(dim=1)  # (B, T): rank of each position's score
    starts = rank < num_spans[:, None]  # (B, T) bool, n_b starts per row
    # frame t is masked when a span starts in (t - mask_length, t]: a running count over a window of mask_length
    counts = starts.long().cumsum(dim=1)  # (B, T)
    shifted = torch.nn.functional.pad(counts, (mask_length, 0))[:, :sequence_length]  # counts[t - mask_length]
    return (counts - shifted) > 0
