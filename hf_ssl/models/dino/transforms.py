"""DINO's multi-crop augmentation (torchvision v2): global and local views of one image, every setting from the
config."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hf_ssl.models.dino.configuration_dino import DINOConfig


def _blur_kernel(size: int) -> int:
    """An odd Gaussian kernel of about 10% of the crop's side (at least 3)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


class DINOTransform:
    """DINO's multi-crop augmentation (Caron et al., 2021, sec. 3.1 and appendix; facebookresearch/dino's
    ``DataAugmentationDINO``, lightly's ``DINOTransform``).

    Each view: a random resized crop (bicubic; global crops of side ``image_size`` and area in
    ``global_crop_scale``, local ones of side ``local_crop_size`` and area in ``local_crop_scale``), a horizontal
    flip, colour jitter (0.4, 0.4, 0.2, 0.1) with ``color_jitter_prob``, grayscale with ``grayscale_prob``, a
    Gaussian blur (sigma in [0.1, 2]) with the view's probability, solarization (threshold 128) for the global views
    with theirs, then scaling to [0, 1] and normalisation with the config's mean and std. Every setting comes from
    :class:`~hf_ssl.models.dino.configuration_dino.DINOConfig`; draws come from torch's global generator (the
    collator seeds it per batch).

    Returns:
        For one PIL image, ``{"pixel_values": (G, C, H, W)}`` plus ``"local_pixel_values": (L, C, h, w)`` when
        the config has local crops: the model's inputs, which :class:`~hf_ssl.data.ImageCollator` stacks.
    """

    def __init__(self, config: DINOConfig):
        self.config = config
        self.global_views = [
            self._view(
                config.image_size,
                config.global_crop_scale,
                config.global_blur_probs[i % len(config.global_blur_probs)],
                config.global_solarization_probs[i % len(config.global_solarization_probs)],
            )
            for i in range(config.num_global_crops)
        ]
        self.local_view = self._view(config.local_crop_size, config.local_crop_scale, config.local_blur_prob, 0.0)
        self.mean, self.std = list(config.image_mean), list(config.image_std)

    def _view(self, size: int, scale: list[float], blur_prob: float, solarization_prob: float) -> v2.Compose:
        config = self.config
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(p=config.hflip_prob),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=config.color_jitter_prob),
            v2.RandomGrayscale(p=config.grayscale_prob),
        ]
        if blur_prob > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_prob))
        if solarization_prob > 0:
            steps.append(v2.RandomSolarize(threshold=128, p=solarization_prob))
        return v2.Compose([*steps, v2.PILToTensor()])

    def _normalise(self, views: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(views)  # (V, C, H, W) uint8
        return F.normalize(F.to_dtype(stacked, torch.float32, scale=True), self.mean, self.std)

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        out = {"pixel_values": self._normalise([view(image) for view in self.global_views])}
        if self.config.num_local_crops:
            out["local_pixel_values"] = self._normalise(
                [self.local_view(image) for _ in range(self.config.num_local_crops)]
            )
        return out
