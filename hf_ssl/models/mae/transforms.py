"""MAE pretraining augmentation (He et al., 2021, arXiv:2111.06377, appendix A.1).

The paper pretrains with a random resized crop (scale 0.2-1, bicubic) and a horizontal flip only; masking is the
rest of the augmentation.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from hf_ssl.models.mae.configuration_mae import MAEConfig


class MAETransform:
    """PIL image -> ``(C, H, W)`` float: random resized crop, horizontal flip, normalisation (all from ``config``).

    Draws the same random numbers as ``v2.Compose([RandomResizedCrop(size, scale=(crop_min_scale, 1),
    interpolation=BICUBIC), RandomHorizontalFlip(hflip_prob), ToImage, ToDtype(float32, scale=True),
    Normalize(mean, std)])``, calling each op's ``make_params`` / ``transform`` directly (v2's per-call input
    handling costs about as much as the op on CIFAR-sized images).

    Args:
        config: an :class:`~hf_ssl.MAEConfig` (``image_size``, ``crop_min_scale``, ``hflip_prob``,
            ``image_mean``, ``image_std``).
    """

    def __init__(self, config: MAEConfig):
        self.crop = v2.RandomResizedCrop(
            config.image_size,
            scale=(config.crop_min_scale, 1.0),
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
        )
        self.flip = v2.RandomHorizontalFlip(p=1.0)
        self.hflip_prob = config.hflip_prob
        self.mean, self.std = list(config.image_mean), list(config.image_std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self.crop.transform(image, self.crop.make_params([image]))
        if torch.rand(1) < self.hflip_prob:  # the draw RandomHorizontalFlip makes
            image = self.flip.transform(image, self.flip.make_params([image]))
        pixels = F.to_image(image).as_subclass(torch.Tensor)  # (C, H, W) uint8
        return F.normalize(F.to_dtype(pixels, torch.float32, scale=True), self.mean, self.std)
