"""DINO's multi-crop transform: view counts and sizes from the config, settings wired through, batching by the
shared image collator into the model's inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_dino import tiny_config

from hf_ssl.data import ImageCollator
from hf_ssl.models.dino.modeling_dino import DINOForPreTraining
from hf_ssl.models.dino.transforms import DINOTransform


def picture(seed: int = 0, size: int = 40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_views_have_the_configs_counts_and_sizes_and_differ():
    config = tiny_config(num_local_crops=3, local_crop_size=12)
    torch.manual_seed(0)
    out = DINOTransform(config)(picture())
    assert out["pixel_values"].shape == (2, 3, 32, 32) and out["local_pixel_values"].shape == (3, 3, 12, 12)
    assert out["pixel_values"].dtype == torch.float32
    assert not torch.equal(out["pixel_values"][0], out["pixel_values"][1])
    assert "local_pixel_values" not in DINOTransform(tiny_config(num_local_crops=0))(picture())


def test_same_seed_same_views():
    transform = DINOTransform(tiny_config())
    torch.manual_seed(3)
    first = transform(picture())
    torch.manual_seed(3)
    second = transform(picture())
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


@pytest.mark.parametrize("solarize", [0.0, 1.0])
def test_solarization_and_normalisation_follow_the_config(solarize):
    """A uniform image with every other augmentation off: each view is the image, solarized (200 -> 55) or not."""
    config = tiny_config(
        num_local_crops=0,
        hflip_prob=0.0,
        color_jitter_prob=0.0,
        grayscale_prob=0.0,
        global_blur_probs=[0.0],
        global_solarization_probs=[solarize],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
    )
    image = Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8))
    views = DINOTransform(config)(image)["pixel_values"]
    value = (55 if solarize else 200) / 255
    torch.testing.assert_close(views, torch.full_like(views, (value - 0.5) / 0.25))


def test_the_image_collator_stacks_the_views_into_the_models_inputs():
    config = tiny_config()
    collator = ImageCollator(DINOTransform(config), "image")
    batch = collator([{"image": picture(i)} for i in range(3)])
    assert batch["pixel_values"].shape == (3, 2, 3, 32, 32) and batch["local_pixel_values"].shape == (3, 2, 3, 16, 16)
    torch.manual_seed(0)
    assert torch.isfinite(DINOForPreTraining(config)(**batch).loss)
