"""Random patch masking of MAE (He et al., 2021, arXiv:2111.06377, sec. 3 "Masking"), drawn on the device."""

from __future__ import annotations

import torch


def num_visible_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` patches stay visible: ``round((1 - mask_ratio) * num_patches)``.

    Rounded to the nearest integer (Python's ``round``, half to even), then clamped to ``[1, num_patches - 1]`` so
    that at least one patch is seen and one is predicted. transformers' ``ViTMAEEmbeddings.random_masking`` and
    facebookresearch/mae truncate with ``int()`` instead, which agrees whenever ``(1 - mask_ratio) * num_patches`` is
    an integer (e.g. ratio 0.75 with 64 or 196 patches) but otherwise keeps one patch fewer, and where float error
    puts the product just below an integer (``(1 - 0.9) * 10 = 0.999...``) keeps one fewer even then.
    """
    return min(max(round((1.0 - mask_ratio) * num_patches), 1), num_patches - 1)


def random_patch_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting noise (He et al., 2021, arXiv:2111.06377, sec. 3 "Masking").

    The patches with the smallest noise are kept, in that order, as in facebookresearch/mae ``models_mae.py``
    and transformers' ``ViTMAEEmbeddings.random_masking`` (same noise, same kept patches and order).

    Args:
        x: ``(B, L, D)`` patch tokens.
        mask_ratio: fraction of patches to remove; the number kept is :func:`num_visible_patches`.
        noise: ``(B, L)`` values whose argsort orders the patches; uniform random if ``None``.

    Returns:
        ``x_visible (B, K, D)`` the kept tokens, ``mask (B, L)`` in ``x.dtype`` with 1 where a patch is removed,
        and ``ids_restore (B, L)``, the permutation that puts ``[kept, removed]`` back in patch order.
    """
    batch, length, dim = x.shape
    keep = num_visible_patches(length, mask_ratio)
    if noise is None:
        noise = torch.rand(batch, length, device=x.device)
    ids_shuffle = torch.argsort(noise.to(x.device), dim=1)  # (B, L): ascending noise, kept patches first
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    ids_keep = ids_shuffle[:, :keep]  # (B, K)
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (B, K, D)
    mask = torch.ones(batch, length, device=x.device, dtype=x.dtype).scatter_(1, ids_keep, 0.0)  # (B, L)
    return x_visible, mask, ids_restore
