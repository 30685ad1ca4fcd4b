"""Reconstruction figures for MAE (as in He et al., 2021, arXiv:2111.06377, figures 2-4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from hf_ssl.backbones.timm import eval_transform
from hf_ssl.data import pil_mode, to_pil
from hf_ssl.models.mae.configuration_mae import MAEConfig
from hf_ssl.models.mae.modeling_mae import MAEForPreTraining


def pixel_batch(config: MAEConfig, values: Sequence[Any]) -> torch.Tensor:
    """``(B, C, H, W)`` images as the checkpoint's evaluation preprocessing makes them (resize, centre crop,
    normalise), from raw dataset values (PIL images, ``{"bytes", "path"}`` dicts, paths, arrays)."""
    transform = eval_transform(config.data_config)
    mode = pil_mode(config.num_channels)
    return torch.stack([transform(to_pil(value, mode, where=f"row {i}")) for i, value in enumerate(values)])


def masking_noise(config: MAEConfig, count: int, seed: int) -> torch.Tensor:
    """``(count, L)`` masking noise from its own generator seeded with ``seed`` (the global one is not touched)."""
    return torch.rand(count, config.num_patches, generator=torch.Generator().manual_seed(seed))


def _to_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(..., C, H, W)`` normalised -> uint8 in ``[0, 255]`` with channels last."""
    pixels = (images * std + mean).clamp(0.0, 1.0)
    return (pixels * 255.0).round().to(torch.uint8).movedim(-3, -1)


@torch.no_grad()
def reconstruction_grid(
    model: MAEForPreTraining,
    pixel_values: torch.Tensor,
    noise: torch.Tensor | None = None,
    padding: int = 2,
    masked_fill: float = 0.5,
) -> Image.Image:
    """One row per image: original, masked input, reconstruction, reconstruction with the visible patches pasted.

    Predictions are mapped back to pixels: with ``norm_pix_loss`` each predicted patch is un-normalised with its
    target patch's mean and variance (as in the loss, unbiased, +1e-6), then every panel with the config's mean and
    std, and clamped to ``[0, 1]``.

    Args:
        model: a :class:`MAEForPreTraining`; run in eval mode here, its mode is restored afterwards.
        pixel_values: ``(B, C, H, W)`` normalised images.
        noise: ``(B, L)`` optional masking noise (see :meth:`MAEForPreTraining.forward`).
        padding: pixels of white between panels and around the grid.
        masked_fill: grey level in ``[0, 1]`` shown where patches were removed in the masked input.

    Returns:
        An RGB (or ``"L"`` for one channel) image of ``B * H + (B + 1) * padding`` rows and
        ``4 * W + 5 * padding`` columns.
    """
    config = model.config
    was_training = model.training
    model.eval()
    try:
        out = model(pixel_values, noise=noise)
    finally:
        model.train(was_training)
    pred, mask = out.logits, out.mask.unsqueeze(-1)  # (B, L, p*p*C), (B, L, 1)
    target = model.patchify(pixel_values)  # (B, L, p*p*C)
    if config.norm_pix_loss:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    channel_mean = torch.tensor(config.image_mean, dtype=pixel_values.dtype, device=pixel_values.device)
    channel_std = torch.tensor(config.image_std, dtype=pixel_values.dtype, device=pixel_values.device)
    channel_mean, channel_std = channel_mean.view(-1, 1, 1), channel_std.view(-1, 1, 1)  # (C, 1, 1)
    grey = ((masked_fill - channel_mean) / channel_std).expand_as(pixel_values[0])  # (C, H, W) normalised grey
    masked = torch.where(model.unpatchify(mask.expand_as(target)) > 0, grey, pixel_values)  # (B, C, H, W)
    pasted = pred * mask + target * (1 - mask)  # (B, L, p*p*C)
    panels = torch.stack(
        [pixel_values, masked, model.unpatchify(pred), model.unpatchify(pasted)], dim=1
    )  # (B, 4, C, H, W)
    panels = _to_uint8(panels.float().cpu(), channel_mean.float().cpu(), channel_std.float().cpu())  # (B, 4, H, W, C)

    batch, columns, height, width, channels = panels.shape
    grid = torch.full(
        (batch * height + (batch + 1) * padding, columns * width + (columns + 1) * padding, channels),
        255,
        dtype=torch.uint8,
    )
    for row in range(batch):
        top = padding + row * (height + padding)
        for column in range(columns):
            left = padding + column * (width + padding)
            grid[top : top + height, left : left + width] = panels[row, column]
    array = grid.numpy()
    return Image.fromarray(array[..., 0] if channels == 1 else array)  # mode "L" or "RGB"
