"""Frozen-feature extraction: run a dataset through one or several encoders in a single decoding pass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""``pixel_values (B, C, H, W) -> features (B, F)``."""


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def raw_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
    """The raw-pixel baseline encoder: ``(B, C, H, W) -> (B, C * H * W)``, the preprocessed pixels, flat."""
    return pixel_values.flatten(1)


def model_encoder(model: nn.Module) -> Encoder:
    """Wrap a backbone whose ``forward(pixel_values=...)`` returns ``pooler_output (B, F)`` as an encoder.

    The inputs are cast to the model's dtype (a checkpoint may be stored in bfloat16) and moved to its device.
    """
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixel_values.to(device=device, dtype=dtype)).pooler_output

    return encode


@torch.no_grad()
def extract_feature_sets(
    encoders: Mapping[str, Encoder | nn.Module],
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of every row of ``dataset`` under each encoder, decoding and preprocessing each image once.

    Modules are put in eval mode for the pass (and restored afterwards) and moved to ``device``.

    Args:
        encoders: name -> an ``nn.Module`` backbone (called as ``model(pixel_values=...).pooler_output``) or a
            plain :data:`Encoder` callable such as :func:`raw_pixels`.
        dataset: a map-style dataset whose rows ``collator`` accepts.
        collator: rows -> ``{"pixel_values": (B, C, H, W), "labels": (B,)}``, e.g.
            :class:`~hf_ssl.data.ImageClassificationCollator`.
        batch_size: rows per forward pass.
        device: where the encoders run; default: CUDA when available, else the CPU.
        num_workers: DataLoader worker processes decoding the images.

    Returns:
        ``({name: (N, F_name) float32 CPU tensor}, labels (N,) int64)``, in dataset order.
    """
    device = torch.device(device) if device is not None else default_device()
    modules = {name: enc for name, enc in encoders.items() if isinstance(enc, nn.Module)}
    was_training = {name: module.training for name, module in modules.items()}
    functions: dict[str, Encoder] = {}
    for name, encoder in encoders.items():
        if isinstance(encoder, nn.Module):
            encoder.to(device).eval()
            functions[name] = model_encoder(encoder)
        else:
            functions[name] = encoder
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, num_workers=num_workers)
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in functions}
    labels: list[torch.Tensor] = []
    try:
        for batch in loader:
            pixel_values = batch["pixel_values"].to(device)  # (B, C, H, W)
            for name, encode in functions.items():
                chunks[name].append(encode(pixel_values).float().cpu())  # (B, F)
            labels.append(batch["labels"].long())
    finally:
        for name, module in modules.items():
            module.train(was_training[name])
    if not labels:
        raise ValueError("the dataset is empty: there are no features to extract")
    return {name: torch.cat(parts) for name, parts in chunks.items()}, torch.cat(labels)


def extract_features(
    model: Encoder | nn.Module,
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every row of ``dataset``: ``model(pixel_values=...).pooler_output`` in eval mode.

    Args:
        model: a backbone returning ``pooler_output (B, F)`` (e.g. :class:`~hf_ssl.SimCLRModel`), or an
            :data:`Encoder` callable.
        dataset: a map-style dataset whose rows ``collator`` accepts.
        collator: rows -> ``{"pixel_values": (B, C, H, W), "labels": (B,)}``.
        batch_size: rows per forward pass.
        device: where the model runs; default: CUDA when available, else the CPU.
        num_workers: DataLoader worker processes decoding the images.

    Returns:
        ``(features (N, F) float32, labels (N,) int64)``, both on the CPU, in dataset order.
    """
    features, labels = extract_feature_sets(
        {"model": model}, dataset, collator, batch_size=batch_size, device=device, num_workers=num_workers
    )
    return features["model"], labels
