"""Image augmentations (torchvision v2), built from an objective's config so train and export agree."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2


def _normalize(config: Any) -> list[v2.Transform]:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(config.image_mean, config.image_std),
    ]


class SimCLRTransform:
    """The SimCLR augmentation (Chen et al., 2020, appendix A), applied ``num_views`` times to one image.

    Random resized crop, horizontal flip, colour jitter (brightness/contrast/saturation ``0.8 s``, hue ``0.2 s``,
    applied with ``color_jitter_prob``), random grayscale, optional Gaussian blur, then normalisation with the
    config's mean and std. Every setting comes from the config (:class:`~hf_ssl.SimCLRConfig`).

    Returns:
        ``(num_views, C, H, W)`` float tensor for one PIL image.
    """

    def __init__(self, config: Any, num_views: int = 2):
        size, s = config.image_size, config.color_jitter_strength
        ops: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=(config.crop_min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(config.hflip_prob),
            v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=config.color_jitter_prob),
            v2.RandomGrayscale(config.grayscale_prob),
        ]
        if config.blur_prob > 0:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, about 10% of the side as in the paper
            ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=config.blur_prob))
        self.view = v2.Compose(ops + _normalize(config))
        self.num_views = num_views

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.view(image) for _ in range(self.num_views)])


def eval_transform(config: Any) -> v2.Compose:
    """Deterministic preprocessing for feature extraction: resize the short side, centre crop, normalise."""
    size = config.image_size
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *_normalize(config)])
