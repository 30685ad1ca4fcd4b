"""MAE (He et al., 2021): config checks, masking, parity with transformers' ViTMAE, timm export, save/load, learning,
transform/collator and the reconstruction figure."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_mae import tiny_mae_config
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

from hf_ssl.data import ImageCollator, UndecodableImageError
from hf_ssl.errors import UsageError
from hf_ssl.models.mae.configuration_mae import MAEConfig
from hf_ssl.models.mae.modeling_mae import (
    TIMM_ARCHITECTURE,
    MAEForPreTraining,
    MAEModel,
    load_vit_mae_state_dict,
    timm_model_args,
    to_vit_mae_state_dict,
)
from hf_ssl.models.mae.transforms import MAETransform
from hf_ssl.models.mae.visualize import reconstruction_grid

CIFAR10_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "vision" / "cifar10" / "train.parquet"
NUM_PATCHES = 64  # (32 / 4) ** 2


tiny_config = functools.partial(tiny_mae_config, decoder_num_hidden_layers=2)


def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every weight away from its (structured) initialisation, so equalities below prove copying."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


# --- config and masking --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mask_ratio": 0.0}, r"mask_ratio must be in \(0, 1\), got 0.0"),
        ({"mask_ratio": 1.0}, r"mask_ratio must be in \(0, 1\), got 1.0"),
        ({"mask_ratio": -0.5}, "mask_ratio must be"),
        ({"patch_size": 5}, "patch_size must divide image_size, got patch_size=5 and image_size=32"),
        ({"num_attention_heads": 3}, "hidden_size must be divisible by num_attention_heads"),
        ({"decoder_num_attention_heads": 3}, "decoder_hidden_size must be divisible by decoder_num_attention_heads"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ({"decoder_num_hidden_layers": -1}, "decoder_num_hidden_layers must be a positive integer"),
        ({"image_mean": [0.5]}, "image_mean must have num_channels=3 values"),
        ({"crop_min_scale": 0.0}, "crop_min_scale must be in"),
        ({"hflip_prob": 2.0}, "hflip_prob must be in"),
    ],
)
def test_config_refuses_bad_values(overrides, message):
    with pytest.raises(UsageError, match=message):
        tiny_config(**overrides)


def test_config_derives_the_patch_grid_and_the_imagenet_normalisation():
    config = tiny_config()
    assert (config.grid_size, config.num_patches) == (8, NUM_PATCHES)
    assert config.image_mean == [0.485, 0.456, 0.406] and config.image_std == [0.229, 0.224, 0.225]
    gray = tiny_config(num_channels=1)  # one channel: the mean of ImageNet's three
    assert gray.image_mean == [0.449] and gray.image_std == [0.226]


@pytest.mark.parametrize("mask_ratio", [0.1, 0.5, 0.6, 0.75, 0.9])
def test_encoder_sees_rounded_number_of_visible_patches(mask_ratio):
    """round((1 - ratio) * L) patches + the class token reach the encoder blocks (0.6: 25.6 -> 26, int() gives 25)."""
    model = MAEForPreTraining(tiny_config(mask_ratio=mask_ratio))
    seen = []
    model.mae.encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    out = model(torch.randn(2, 3, 32, 32))
    visible = round((1 - mask_ratio) * NUM_PATCHES)
    assert seen == [torch.Size([2, visible + 1, 32])]
    assert out.mask.sum(dim=1).tolist() == [NUM_PATCHES - visible] * 2


def test_extreme_ratios_keep_one_patch_and_mask_one():
    for ratio, visible in ((0.999, 1), (0.001, NUM_PATCHES - 1)):
        out = MAEForPreTraining(tiny_config(mask_ratio=ratio))(torch.randn(1, 3, 32, 32))
        assert int(out.mask.sum()) == NUM_PATCHES - visible
        assert torch.isfinite(out.loss)


def test_masking_keeps_the_patches_with_least_noise():
    model = MAEForPreTraining(tiny_config())
    noise = torch.rand(3, NUM_PATCHES)
    tokens = torch.randn(3, NUM_PATCHES, 8)
    visible, mask, ids_restore = model.random_masking(tokens, noise)
    kept = noise.argsort(dim=1)[:, :16]
    torch.testing.assert_close(visible, torch.stack([tokens[b, kept[b]] for b in range(3)]))
    expected_mask = torch.ones(3, NUM_PATCHES)
    expected_mask[torch.arange(3).unsqueeze(1), kept] = 0
    torch.testing.assert_close(mask, expected_mask)
    shuffled = torch.stack([tokens[b, noise[b].argsort()] for b in range(3)])  # (B, L, D) visible first
    torch.testing.assert_close(torch.stack([shuffled[b, ids_restore[b]] for b in range(3)]), tokens)


def test_patchify_round_trip_and_layout():
    model = MAEForPreTraining(tiny_config())
    images = torch.randn(2, 3, 32, 32)
    patches = model.patchify(images)
    assert patches.shape == (2, NUM_PATCHES, 4 * 4 * 3)
    torch.testing.assert_close(model.unpatchify(patches), images)
    # patch 9 is row 1, column 1 of the 8x8 grid; flattened as (p, p, C)
    torch.testing.assert_close(patches[:, 9], images[:, :, 4:8, 4:8].permute(0, 2, 3, 1).reshape(2, -1))


# --- parity with transformers' ViTMAE ------------------------------------------------------------------------


def reference_of(config: MAEConfig) -> ViTMAEForPreTraining:
    """ViTMAE with every field our config shares with it by name (MAEConfig names its fields as ViTMAEConfig)."""
    ours = inspect.signature(MAEConfig.__init__).parameters
    fields = [field.name for field in dataclasses.fields(ViTMAEConfig) if field.name in ours]
    reference_config = ViTMAEConfig(**{k: getattr(config, k) for k in fields}, hidden_act="gelu")
    return ViTMAEForPreTraining(reference_config)


def reference_position_embedding(grid: int, dim: int) -> torch.Tensor:
    """ViTMAE's sin-cos table (its own function and half swap), ``(1, 1 + grid**2, dim)``."""
    table = build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
    return torch.cat([table[:, dim // 2 :], table[:, : dim // 2]], dim=-1).unsqueeze(0)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_parity_with_transformers_vit_mae(norm_pix_loss):
    """Same weights, same noise: same loss, logits, mask and gradients as ViTMAEForPreTraining."""
    config = tiny_config(norm_pix_loss=norm_pix_loss)
    ours = MAEForPreTraining(config)
    # our freshly initialised fixed position embeddings are ViTMAE's formula
    torch.testing.assert_close(ours.mae.encoder.pos_embed, reference_position_embedding(8, 32))
    torch.testing.assert_close(ours.decoder.pos_embed, reference_position_embedding(8, 16))

    reference = reference_of(config)
    with torch.no_grad():  # a fresh ViTMAE (transformers 5.24) leaves these at zero; give it its own table
        reference.vit.embeddings.position_embeddings.copy_(reference_position_embedding(8, 32))
        reference.decoder.decoder_pos_embed.copy_(reference_position_embedding(8, 16))
    perturb(reference)
    ours.load_state_dict(load_vit_mae_state_dict(reference.state_dict()), strict=True)
    back = to_vit_mae_state_dict(ours.state_dict())
    assert back.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)

    pixel_values, noise = torch.randn(4, 3, 32, 32), torch.rand(4, NUM_PATCHES)
    out, ref = ours(pixel_values, noise=noise), reference(pixel_values, noise=noise)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mask, ref.mask)
    torch.testing.assert_close(out.ids_restore, ref.ids_restore)
    out.loss.backward()
    ref.loss.backward()
    torch.testing.assert_close(
        ours.mae.encoder.patch_embed.proj.weight.grad,
        reference.vit.embeddings.patch_embeddings.projection.weight.grad,
        rtol=1e-4,
        atol=1e-6,
    )
    torch.testing.assert_close(ours.decoder.mask_token.grad, reference.decoder.mask_token.grad, rtol=1e-4, atol=1e-6)


# --- encoder as a timm model ---------------------------------------------------------------------------------


def test_encoder_model_encodes_every_patch():
    model = MAEModel(tiny_config()).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.last_hidden_state.shape == (2, 1 + NUM_PATCHES, 32)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 1:].mean(dim=1))
    assert not torch.allclose(out.pooler_output, out.last_hidden_state[:, 0])


def test_timm_rebuilds_the_encoder(tmp_path):
    config = tiny_config()
    model = MAEModel(config).eval()
    perturb(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        rebuilt = timm.create_model(TIMM_ARCHITECTURE, pretrained=False, **timm_model_args(config)).eval()
        rebuilt.load_state_dict(model.encoder.state_dict(), strict=True)
        torch.testing.assert_close(rebuilt.forward_features(x), expected.last_hidden_state)
        torch.testing.assert_close(rebuilt(x), expected.pooler_output)

        timm.models.save_for_hf(model.encoder, tmp_path / "encoder", safe_serialization=True)
        loaded = timm.create_model(f"local-dir:{tmp_path / 'encoder'}", pretrained=True).eval()
        torch.testing.assert_close(loaded(x), expected.pooler_output)
    assert tuple(loaded.pretrained_cfg["mean"]) == tuple(config.image_mean)
    assert tuple(loaded.pretrained_cfg["input_size"]) == (3, 32, 32)

    with pytest.raises(ValueError, match="layer_norm_eps=1e-12 cannot be exported to timm"):
        timm_model_args(tiny_config(layer_norm_eps=1e-12))


# --- training, saving, loading -------------------------------------------------------------------------------


def test_every_trainable_parameter_gets_a_gradient():
    model = MAEForPreTraining(tiny_config(norm_pix_loss=True))
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"mae.encoder.pos_embed", "decoder.pos_embed"}  # the fixed sin-cos tables
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = MAEForPreTraining(tiny_config()).train()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, NUM_PATCHES)
    loss = model(x, noise=noise).loss
    grads = torch.autograd.grad(loss, [model.mae.encoder.cls_token, model.decoder.mask_token])
    model.activation_checkpointing_enable()
    assert model.mae.encoder.grad_checkpointing and model.decoder.grad_checkpointing
    loss_ckpt = model(x, noise=noise).loss
    grads_ckpt = torch.autograd.grad(loss_ckpt, [model.mae.encoder.cls_token, model.decoder.mask_token])
    torch.testing.assert_close(loss_ckpt, loss)
    for a, b in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b)


def test_save_load_round_trip_and_auto_classes(tmp_path):
    config = tiny_config(mask_ratio=0.6, norm_pix_loss=True, hflip_prob=0.3)
    model = MAEForPreTraining(config).eval()
    perturb(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    keys = load_file(tmp_path / "model.safetensors")
    assert "mae.encoder.pos_embed" in keys and "decoder.pred.weight" in keys

    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, MAEConfig) and again.model_type == "hf_ssl_mae"
    assert (again.mask_ratio, again.norm_pix_loss, again.hflip_prob) == (0.6, True, 0.3)

    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, NUM_PATCHES)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MAEForPreTraining)
    assert not loaded.mae.encoder.pos_embed.requires_grad and not loaded.decoder.pos_embed.requires_grad
    encoder = AutoModel.from_pretrained(tmp_path).eval()  # the encoder alone, from the pretraining checkpoint
    assert isinstance(encoder, MAEModel)
    with torch.no_grad():
        expected, got = model(x, noise=noise), loaded(x, noise=noise)
        torch.testing.assert_close(got.loss, expected.loss)
        torch.testing.assert_close(got.logits, expected.logits)
        torch.testing.assert_close(encoder(x).last_hidden_state, model.mae(x).last_hidden_state)


def test_return_dict_false_gives_a_tuple_in_field_order():
    model = MAEForPreTraining(tiny_config()).eval()
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, NUM_PATCHES)
    with torch.no_grad():
        as_tuple, as_output = model(x, noise=noise, return_dict=False), model(x, noise=noise)
    assert len(as_tuple) == 4
    for a, b in zip(as_tuple, (as_output.loss, as_output.logits, as_output.mask, as_output.ids_restore), strict=True):
        torch.testing.assert_close(a, b)


def small_images(count: int) -> list[dict]:
    """Rows of real CIFAR-10 images when ../shared/data has them, else smooth synthetic images (PNG bytes)."""
    if CIFAR10_TRAIN.exists():
        import pyarrow.parquet as pq

        return pq.read_table(CIFAR10_TRAIN).slice(0, count).to_pylist()
    rows, grid = [], np.linspace(0, 1, 32)
    generator = np.random.default_rng(0)
    for _ in range(count):
        fx, fy, phase = generator.uniform(1, 4, size=3)
        base = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * grid[None, :] + fy * grid[:, None]) + phase)
        array = (np.stack([base, base[::-1], base.T], axis=-1) * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        rows.append({"image": {"bytes": buffer.getvalue(), "path": None}})
    return rows


def test_loss_goes_down_on_a_small_batch():
    config = tiny_config()
    batch = ImageCollator(MAETransform(config), "image")(small_images(32))
    model = MAEForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    noise = torch.rand(32, NUM_PATCHES)  # the same masks every step, so only learning moves the loss
    losses = []
    for _ in range(20):
        loss = model(**batch, noise=noise).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


# --- transform, collator, figure -----------------------------------------------------------------------------


def test_transform_normalises_flips_and_crops():
    array = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3))  # brightness grows to the right
    image = Image.fromarray(array)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = (torch.from_numpy(array).permute(2, 0, 1).float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    # crop_min_scale=1 on a square image: RandomResizedCrop falls back to the whole image
    plain = MAETransform(tiny_config(crop_min_scale=1.0, hflip_prob=0.0))(image)
    assert plain.shape == (3, 32, 32) and plain.dtype == torch.float32
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)
    flipped = MAETransform(tiny_config(crop_min_scale=1.0, hflip_prob=1.0))(image)
    torch.testing.assert_close(flipped, expected.flip(-1), atol=1e-5, rtol=0)
    cropped = torch.stack([MAETransform(tiny_config(crop_min_scale=0.2, hflip_prob=0.0))(image) for _ in range(8)])
    assert cropped.shape == (8, 3, 32, 32) and not torch.allclose(cropped, expected.expand_as(cropped), atol=1e-3)


def test_collator_stacks_images_and_refuses_broken_ones():
    """Rows are never dropped in the collator (uneven batches break multi-process runs): a broken image is an error
    naming its file; prepare_images is what checks or filters a dataset before batching."""
    collate = ImageCollator(MAETransform(tiny_config()), "image")
    batch = collate(small_images(3))
    assert set(batch) == {"pixel_values"} and batch["pixel_values"].shape == (3, 3, 32, 32)
    rows = small_images(3) + [{"image": {"bytes": b"not an image", "path": "broken.png"}}]
    with pytest.raises(UndecodableImageError, match="broken.png"):
        collate(rows)


def test_collator_draws_its_augmentations_from_the_batch_position():
    """Batch k of a run gets the same crops and flips whatever happened before (resuming is exact), different
    batches get different ones, and the global generator is left as it was."""
    rows = small_images(4)
    collate = ImageCollator(MAETransform(tiny_config()), "image")
    collate.set_position(seed=3, rank=0, batches_done=0)
    first, second = collate(rows)["pixel_values"], collate(rows)["pixel_values"]
    assert not torch.allclose(first, second)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    again = ImageCollator(MAETransform(tiny_config()), "image")
    again.set_position(seed=3, rank=0, batches_done=1)  # resumed after one batch
    torch.testing.assert_close(again(rows)["pixel_values"], second)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_reconstruction_grid_pastes_the_visible_patches_back(norm_pix_loss):
    config = tiny_config(norm_pix_loss=norm_pix_loss)
    model = MAEForPreTraining(config).train()
    pixel_values, noise = torch.randn(3, 3, 32, 32).clamp(-1.5, 1.5), torch.rand(3, NUM_PATCHES)
    grid = reconstruction_grid(model, pixel_values, noise=noise, padding=2)
    assert model.training  # mode restored
    assert grid.mode == "RGB" and grid.size == (4 * 32 + 5 * 2, 3 * 32 + 4 * 2)

    pixels = np.asarray(grid)
    mask = model(pixel_values, noise=noise).mask
    for row in range(3):
        top = 2 + row * 34
        original, masked, _, pasted = (pixels[top : top + 32, 2 + c * 34 : 2 + c * 34 + 32] for c in range(4))
        for patch in range(NUM_PATCHES):
            r, c = divmod(patch, 8)
            window = (slice(4 * r, 4 * r + 4), slice(4 * c, 4 * c + 4))
            if mask[row, patch] == 0:
                np.testing.assert_array_equal(pasted[window], original[window])
                np.testing.assert_array_equal(masked[window], original[window])
            else:
                assert (np.abs(masked[window].astype(int) - 128) <= 1).all()  # the grey fill, 0.5 in pixel space


def test_reconstruction_of_a_perfect_prediction_is_the_original():
    """With norm_pix_loss, un-normalising the target itself (a perfect prediction) gives back the image."""
    config = tiny_config(norm_pix_loss=True)
    model = MAEForPreTraining(config).eval()
    pixel_values, noise = torch.rand(2, 3, 32, 32), torch.rand(2, NUM_PATCHES)
    model.forward_decoder = lambda latent, ids_restore: model.target(pixel_values)  # a decoder that is always right
    grid = np.asarray(reconstruction_grid(model, pixel_values, noise=noise, padding=0))
    original, reconstruction = grid[:32, :32].astype(int), grid[:32, 64:96].astype(int)
    assert np.abs(original - reconstruction).max() <= 1


def test_initialisation_follows_the_mae_reference():
    """xavier_uniform Linear layers (std = sqrt(2 / (fan_in + fan_out))), zero biases, N(0, 0.02) tokens, as in
    facebookresearch/mae ``initialize_weights`` (timm's own ViT init would give std 0.02 everywhere)."""
    model = MAEForPreTraining(tiny_config(hidden_size=64, decoder_hidden_size=64, intermediate_size=256))
    for linear in (model.mae.encoder.blocks[0].attn.qkv, model.mae.encoder.blocks[1].mlp.fc1, model.decoder.pred):
        fan_out, fan_in = linear.weight.shape
        expected = (2 / (fan_in + fan_out)) ** 0.5
        assert abs(linear.weight.std().item() / expected - 1) < 0.1
        assert linear.bias.abs().max() == 0
    patch = model.mae.encoder.patch_embed.proj.weight  # (D, C, p, p) treated as a (D, C*p*p) Linear
    assert abs(patch.std().item() / (2 / (patch.shape[0] + patch[0].numel())) ** 0.5 - 1) < 0.1
    for token in (model.mae.encoder.cls_token, model.decoder.mask_token):
        assert 0.01 < token.std().item() < 0.03
