"""Collators: they decode and augment inside DataLoader workers, so the training step never waits on images."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from hf_ssl.data.images import UndecodableImageError, to_pil

logger = logging.getLogger(__name__)


class ImageViewsCollator:
    """Rows with an image column -> ``{"pixel_values": (B, V, C, H, W)}`` of augmented views.

    Undecodable images (possible only where :func:`~hf_ssl.data.images.check_images` did not run, e.g. when
    streaming) are skipped with a warning naming the file; a batch with no decodable image is an error.

    Args:
        transform: PIL image -> ``(V, C, H, W)`` tensor, e.g. :class:`~hf_ssl.data.augmentations.SimCLRTransform`.
        image_column: the column holding the images.
        mode: PIL mode the images are converted to (``"RGB"``, or ``"L"`` for one channel).
    """

    def __init__(self, transform: Callable[[Any], torch.Tensor], image_column: str, mode: str = "RGB"):
        self.transform, self.image_column, self.mode = transform, image_column, mode

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        views = []
        for row in rows:
            try:
                views.append(self.transform(to_pil(row[self.image_column], self.mode, where="a streamed row")))
            except UndecodableImageError as err:
                logger.warning("skipped: %s", err)
        if not views:
            raise UndecodableImageError(f"no image of this batch of {len(rows)} rows could be decoded")
        return {"pixel_values": torch.stack(views)}


class ImageClassificationCollator:
    """Rows -> ``{"pixel_values": (B, C, H, W), "labels": (B,)}`` with a deterministic transform (evaluation)."""

    def __init__(self, transform: Callable[[Any], torch.Tensor], image_column: str, label_column: str, mode="RGB"):
        self.transform, self.image_column, self.label_column, self.mode = (
            transform,
            image_column,
            label_column,
            mode,
        )

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = [self.transform(to_pil(row[self.image_column], self.mode)) for row in rows]
        labels = torch.tensor([int(row[self.label_column]) for row in rows])
        return {"pixel_values": torch.stack(pixels), "labels": labels}
