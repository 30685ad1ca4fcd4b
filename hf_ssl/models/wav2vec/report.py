"""wav2vec 2.0's picture on the ``hf-ssl report`` page: how often each codebook entry is chosen, per group.

A quantizer that uses few of its ``V`` entries per group has (partly) collapsed: its targets carry little
information and the contrastive task gets easy (Baevski et al., 2020, sec. 3.2, the diversity loss).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from hf_ssl.data import find_column
from hf_ssl.data.audio import DEFAULT_AUDIO_DATASET, load_default_audio, undecoded_audio
from hf_ssl.data.collators import AudioCollator
from hf_ssl.evaluation.run_report import pyplot
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining

logger = logging.getLogger(__name__)

REPORT_CLIPS = 32
"""Clips of the labelled set whose frames are counted (a seeded sample)."""


@torch.no_grad()
def codebook_usage(model: Wav2VecForPreTraining, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(G, V)`` counts of the frames that choose each codebook entry, per group, over the unpadded frames of
    ``batch`` (``input_values (B, L)``, ``attention_mask (B, L)``): the quantizer's argmax codes, as in evaluation
    (no Gumbel noise). The model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        input_values = batch["input_values"].to(device=parameter.device, dtype=parameter.dtype)
        attention_mask = batch.get("attention_mask")
        attention_mask = attention_mask.to(parameter.device) if attention_mask is not None else None
        _, extract, _, frame_mask = model.forward_features(input_values, attention_mask)
        _, _, codes = model.quantizer(extract)  # (B, T, G)
    finally:
        model.train(was_training)
    groups, entries = model.quantizer.num_groups, model.quantizer.num_vars
    codes = codes[frame_mask] if frame_mask is not None else codes.flatten(0, 1)  # (N, G)
    offsets = torch.arange(groups, device=codes.device) * entries  # entry v of group g -> g * V + v
    counts = torch.bincount((codes + offsets).flatten(), minlength=groups * entries)
    return counts.view(groups, entries).cpu()


def plot_codebook_usage(counts: torch.Tensor, path: Path) -> Path:
    """A bar plot per group of the share of frames choosing each entry, titled with the entries used and the
    perplexity of the usage (``exp`` of its entropy: ``V`` when uniform, 1 when collapsed)."""
    plt = pyplot()
    groups, entries = counts.shape
    share = counts.double() / counts.sum(dim=1, keepdim=True).clamp_min(1)
    figure, axes = plt.subplots(groups, 1, figsize=(7.5, 2.2 * groups), squeeze=False)
    for group, ax in enumerate(axes[:, 0]):
        p = share[group]
        perplexity = torch.exp(-(p * torch.log(p + 1e-12)).sum()).item()
        ax.bar(range(entries), p.tolist(), width=1.0, color="tab:blue")
        ax.set_xlim(-0.5, entries - 0.5)
        used = int((counts[group] > 0).sum())
        ax.set_title(
            f"group {group}: {used} of {entries} entries used, perplexity {perplexity:.1f} of {entries}", fontsize=9
        )
        ax.set_ylabel("share of frames", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("codebook entry", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def report_pictures(model_dir: str, output_dir: Path, args: Any) -> list[tuple[str, Path]]:
    """Codebook usage on (at most) :data:`REPORT_CLIPS` clips of the report's labelled set (``args.dataset_name`` /
    ``args.split``, default the embedded synthetic words), cropped from their start as in evaluation. None for a
    folder without the quantizer (an exported backbone)."""
    model, info = Wav2VecForPreTraining.from_pretrained(model_dir, output_loading_info=True)
    if any(key.startswith("quantizer.") for key in info.get("missing_keys") or ()):
        logger.info("%s has no quantizer: no codebook usage on the report", model_dir)
        return []
    ds = args.load_split((DEFAULT_AUDIO_DATASET, load_default_audio))
    column = find_column(ds, "audio", args.input_column)
    if len(ds) > REPORT_CLIPS:
        ds = ds.select(sorted(random.Random(args.seed).sample(range(len(ds)), REPORT_CLIPS)))
    batch = AudioCollator(model.config, column, random_crop=False)(list(undecoded_audio(ds, column)))
    counts = codebook_usage(model, batch)
    path = plot_codebook_usage(counts, Path(output_dir) / "wav2vec_codebook_usage.png")
    frames = int(counts[0].sum())
    return [(f"Codebook usage: {frames} frames of {len(ds)} clips, per group", path)]
