"""The SimCLR augmentation (torchvision v2): the views of one image, every setting from the config."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig


class SimCLRTransform:
    """The SimCLR augmentation (Chen et al., 2020, appendix A), applied ``num_views`` times to one image.

    Random resized crop, horizontal flip, colour jitter (brightness/contrast/saturation ``0.8 s``, hue ``0.2 s``,
    applied with ``color_jitter_prob``), random grayscale, optional Gaussian blur, then normalisation with the
    config's mean and std. Every setting comes from the config (:class:`~hf_ssl.SimCLRConfig`).

    The views equal those of ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip,
    RandomApply([ColorJitter]), RandomGrayscale, (RandomApply([GaussianBlur])), ToImage, ToDtype,
    Normalize])`` under the same seed (same random draws in the same order), computed faster: each op is
    called through its ``make_params`` / ``transform`` methods, skipping v2's per-call input handling, which
    on CIFAR-sized images costs about as much as the op; and the stacked views are converted to float and
    normalised at once.

    Returns:
        ``(num_views, C, H, W)`` float tensor for one PIL image.
    """

    def __init__(self, config: SimCLRConfig, num_views: int = 2):
        size, s = config.image_size, config.color_jitter_strength
        # (probability, op): the op runs when a draw of torch.rand(1) is below the probability (None: always),
        # the draw v2's RandomApply / RandomHorizontalFlip / RandomGrayscale make (hence p=1.0 in the ops)
        steps: list[tuple[float | None, v2.Transform]] = [
            (None, v2.RandomResizedCrop(size, scale=(config.crop_min_scale, 1.0), antialias=True)),
            (config.hflip_prob, v2.RandomHorizontalFlip(p=1.0)),
            (config.color_jitter_prob, v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)),
            (config.grayscale_prob, v2.RandomGrayscale(p=1.0)),
        ]
        if config.blur_prob > 0:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, about 10% of the side as in the paper
            steps.append((config.blur_prob, v2.GaussianBlur(kernel, sigma=(0.1, 2.0))))
        self.steps = steps
        self.mean, self.std = list(config.image_mean), list(config.image_std)
        self.num_views = num_views

    def augment(self, image: Image.Image) -> torch.Tensor:
        """One augmented view, before normalisation: ``(C, H, W)`` uint8."""
        for p, op in self.steps:
            if p is not None and torch.rand(1) >= p:
                continue
            image = op.transform(image, op.make_params([image]))
        return F.to_image(image).as_subclass(torch.Tensor)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        views = torch.stack([self.augment(image) for _ in range(self.num_views)])  # (V, C, H, W) uint8
        return F.normalize(F.to_dtype(views, torch.float32, scale=True), self.mean, self.std)
