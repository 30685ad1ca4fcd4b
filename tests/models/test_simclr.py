"""SimCLR model: registration, save/load, config, small-image stem, augmentation, and learning on real data."""

import numpy as np
import pytest
import torch
from common import ObjectiveChecks
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl import SimCLRConfig, SimCLRForPreTraining, SimCLRModel, UsageError
from hf_ssl.data import ImageCollator, ImageDataArguments, load_data, undecoded
from hf_ssl.models.simclr import SIMCLR
from hf_ssl.models.simclr.transforms import SimCLRTransform


def test_auto_classes_know_simclr(tiny_simclr_config, tmp_path):
    tiny_simclr_config.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SimCLRConfig) and config.model_type == "hf_ssl_simclr"
    assert isinstance(AutoModel.from_config(config), SimCLRModel)
    assert isinstance(AutoModelForPreTraining.from_config(config), SimCLRForPreTraining)


def test_save_load_round_trip_in_safetensors(tiny_simclr_config, tmp_path):
    model = SimCLRForPreTraining(tiny_simclr_config).eval()
    with torch.no_grad():  # move away from the seeded init so equality proves loading
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    keys = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("projection_head.") for k in keys) and any(k.startswith("simclr.backbone.") for k in keys)

    x = torch.randn(3, 2, 3, 32, 32)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).loss, model(x).loss)
        backbone = AutoModel.from_pretrained(tmp_path).eval()  # backbone only, from the pretraining checkpoint
        torch.testing.assert_close(backbone(x[:, 0]).pooler_output, model.simclr(x[:, 0]).pooler_output)


def test_config_captures_every_hyperparameter(tmp_path):
    config = SimCLRConfig(backbone="resnet18", loss_temperature=0.2, projection_layers=3, blur_prob=0.5)
    assert config.image_mean == [0.485, 0.456, 0.406]  # from timm's pretrained config of the backbone
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    for key in ("loss_temperature", "projection_layers", "blur_prob", "image_mean", "image_std", "backbone"):
        assert getattr(again, key) == getattr(config, key)
    model = SimCLRForPreTraining(again)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.projection_head.modules()) == 3


def test_small_image_stem_uses_timm_arguments():
    convnext = SimCLRConfig(backbone="convnext_atto", small_image_stem=True, image_size=32)
    assert convnext.timm_kwargs == {"patch_size": 2}
    vit = SimCLRConfig(
        backbone="vit_tiny_patch16_224", small_image_stem=True, image_size=32, backbone_kwargs={"depth": 2}
    )
    assert vit.timm_kwargs == {"img_size": 32, "patch_size": 4, "depth": 2}
    features = SimCLRModel(vit)(torch.randn(2, 3, 32, 32))
    assert features.last_hidden_state.shape[1] == 1 + 64  # class token + an 8x8 grid of patches
    stem = SimCLRModel(convnext).backbone.stem[0]
    assert stem.stride == (2, 2)
    with pytest.raises(UsageError, match="small_image_stem is not available for 'resnet18'"):
        SimCLRConfig(backbone="resnet18", small_image_stem=True)  # refused when the config is built


def test_single_channel_input():
    config = SimCLRConfig(backbone="resnet18", num_channels=1, image_size=32, image_mean=[0.5], image_std=[0.5])
    assert SimCLRModel(config)(torch.randn(2, 1, 32, 32)).pooler_output.shape == (2, 512)


def test_loss_goes_down_on_real_images(tiny_simclr_config):
    """A few optimiser steps on a batch of the embedded digits (real scans) lower the NT-Xent loss."""
    ds = undecoded(load_data("digits", "train"), "image").select(range(64))
    collate = ImageCollator(SimCLRTransform(tiny_simclr_config), "image")
    batch = collate([ds[i] for i in range(len(ds))])
    model = SimCLRForPreTraining(tiny_simclr_config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


def test_prepare_data_converts_images_to_the_configured_channels():
    ds = load_data("digits", "train").select(range(4))
    for channels, mode in ((1, "L"), (3, "RGB")):
        config = SimCLRConfig(backbone="resnet18", image_size=16, num_channels=channels)
        prepared = SIMCLR.prepare_data(ds, config, ImageDataArguments())
        assert isinstance(prepared.collator, ImageCollator) and prepared.collator.mode == mode
        batch = prepared.collator([prepared.dataset[i] for i in range(4)])
        assert batch["pixel_values"].shape == (4, 2, channels, 16, 16)


def test_checkpoint_of_a_pretrained_start_loads_offline_and_keeps_its_provenance(tiny_simclr_config, tmp_path):
    model = SimCLRForPreTraining(tiny_simclr_config)
    model.config.pretrained_backbone = True  # as if the run had started from timm's weights
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)  # would need the Hub (offline in tests) if it fetched timm weights
    assert loaded.config.pretrained_backbone is True
    torch.testing.assert_close(loaded.backbone.stem[0].weight, model.simclr.backbone.stem[0].weight)


def test_new_model_starts_from_pretrained_weights_only_when_asked(tiny_simclr_config, monkeypatch):
    """Building never downloads; a new run with pretrained_backbone loads timm's weights explicitly, once."""
    calls = []
    monkeypatch.setattr("hf_ssl.backbones.timm.load_pretrained_weights", lambda *args: calls.append(args[1:]))
    SIMCLR.make_model(tiny_simclr_config)
    assert calls == []
    tiny_simclr_config.pretrained_backbone = True
    SimCLRForPreTraining(tiny_simclr_config)  # __init__ only builds
    assert calls == []
    SIMCLR.make_model(tiny_simclr_config)
    assert calls == [("convnext_atto", {"patch_size": 2})]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_temperature": 0}, r"loss_temperature must be > 0, got 0"),
        ({"loss_temperature": -1.0}, r"loss_temperature must be > 0, got -1.0"),
        ({"loss_temperature": float("nan")}, r"loss_temperature must be > 0"),
        ({"image_size": 0}, r"image_size must be >= 1, got 0"),
        ({"crop_min_scale": 0.0}, r"crop_min_scale must be in \(0, 1\]"),
        ({"hflip_prob": 1.5}, r"hflip_prob must be in \[0, 1\]"),
        ({"projection_layers": 0}, r"projection_layers must be >= 1"),
        ({"backbone": "resnet_18"}, r"backbone 'resnet_18' is not a timm architecture"),
        ({"num_channels": 1, "image_mean": [0.5, 0.5, 0.5]}, r"one value per channel \(1\)"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SimCLRConfig(**kwargs)


def test_batches_of_one_image_are_refused(tiny_simclr_config):
    """With one image the only candidate of each view is its partner: the loss is 0 and nothing is learned."""
    with pytest.raises(ValueError, match="B >= 2"):
        SimCLRForPreTraining(tiny_simclr_config)(torch.randn(1, 2, 3, 32, 32))


def test_augmentation_follows_the_config():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    plain = SimCLRConfig(
        image_size=16, crop_min_scale=1.0, hflip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0,
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
    )  # fmt: skip
    views = SimCLRTransform(plain)(image)
    # with every random op disabled and a full-area crop (aspect ratio fixed by the square input) both views are
    # the plain resize, equal to the deterministic evaluation transform
    assert views.shape == (2, 3, 16, 16)
    torch.testing.assert_close(views[0], views[1])
    resize = v2.Compose([v2.Resize(16, antialias=True), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    torch.testing.assert_close(views[0], resize(image), atol=1e-6, rtol=0)
    gray = SimCLRConfig(image_size=16, grayscale_prob=1.0, color_jitter_prob=0.0)
    gray_views = SimCLRTransform(gray)(image)
    # grayscale: the channels only differ by the per-channel normalisation
    mean, std = torch.tensor(gray.image_mean)[:, None, None], torch.tensor(gray.image_std)[:, None, None]
    raw = gray_views[0] * std + mean
    torch.testing.assert_close(raw[0], raw[1], atol=1e-5, rtol=0)


class TestSimCLRObjective(ObjectiveChecks):
    objective = SIMCLR

    def tiny_config(self):
        return SimCLRConfig(
            backbone="convnext_atto", small_image_stem=True, image_size=32, projection_hidden_dim=32, projection_dim=16
        )

    def pretrain_flags(self):
        return ["--backbone", "convnext_atto", "--small_image_stem", "--image_size", "32", "--projection_hidden_dim",
                "32", "--projection_dim", "16", "--per_device_train_batch_size", "8"]  # fmt: skip

    def batch(self, config):
        generator = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(6, 2, 3, 32, 32, generator=generator)}
