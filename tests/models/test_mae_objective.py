"""MAE as an objective: the shared checks, data preparation, and the command line end to end (pretrain on the
embedded digits, evaluate, reconstruct, export to timm)."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import timm
import torch
from common import ObjectiveChecks
from huggingface_hub import ModelCard
from PIL import Image
from tiny_mae import TINY, TINY_FLAGS
from transformers import AutoImageProcessor, AutoModel

from hf_ssl import MAEConfig, MAEForPreTraining, MAEModel, UsageError
from hf_ssl.cli import main
from hf_ssl.data import ImageCollator, ImageDataArguments, load_data
from hf_ssl.evaluation.features import FEATURE_SPECS
from hf_ssl.models.mae import MAE
from hf_ssl.models.mae.objective import reconstruct


class TestMAEObjective(ObjectiveChecks):
    objective = MAE

    def tiny_config(self):
        return MAEConfig(**TINY)

    def pretrain_flags(self):
        return [*TINY_FLAGS, "--per_device_train_batch_size", "8"]

    def batch(self, config):
        generator = torch.Generator().manual_seed(0)
        return {
            "pixel_values": torch.randn(4, 3, 32, 32, generator=generator),
            "noise": torch.rand(4, config.num_patches, generator=generator),
        }


def test_prepare_data_checks_images_and_saves_the_encoder_preprocessing():
    ds = load_data("digits", "train").select(range(8))
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"not an image", "path": "broken.png"}], "label": [0]}, features=ds.features
    )
    ds = datasets.concatenate_datasets([ds, broken])
    config = MAEConfig(**TINY)
    with pytest.raises(UsageError, match="broken.png"):  # refused before training, naming the file
        MAE.prepare_data(ds, config, ImageDataArguments())
    prepared = MAE.prepare_data(ds, config, ImageDataArguments(on_bad_example="skip"))
    assert prepared.num_skipped == 1 and len(prepared.dataset) == 8 and prepared.columns == {"image": "image"}
    assert isinstance(prepared.collator, ImageCollator)
    batch = prepared.collator([prepared.dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    processor = prepared.processing_class
    assert processor.crop_size == {"height": 32, "width": 32} and list(processor.image_mean) == config.image_mean
    assert config.data_config["input_size"] == (3, 32, 32) and config.data_config["mean"] == tuple(config.image_mean)


def test_features_are_the_mean_of_the_patch_tokens():
    spec = FEATURE_SPECS[MAEConfig.model_type]
    assert spec is MAE.features and spec.modality == "image" and "mean" in spec.description
    model = MAEModel(MAEConfig(**TINY)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(spec.pool(out, {}), out.last_hidden_state[:, 1:].mean(dim=1))


def _pretrain(tmp_path, *extra):
    run = tmp_path / "run"
    main(["pretrain", "mae", *TINY_FLAGS, "--mask_ratio", "0.6", "--max_steps", "3",
          "--per_device_train_batch_size", "16", "--logging_steps", "1", "--learning_rate", "1e-3",
          "--output_dir", str(run), "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none",
          *extra])  # fmt: skip
    return run


@pytest.mark.slow
def test_pretrain_evaluate_reconstruct_and_export_from_the_command_line(tmp_path, capsys):
    run = _pretrain(tmp_path)
    info = json.loads((run / "hf_ssl_run.json").read_text())
    assert info["objective"] == "mae" and info["global_step"] == 3 and info["columns"] == {"image": "image"}
    assert [entry["loss"] > 0 for entry in info["log_history"] if "loss" in entry] == [True] * 3
    config = MAEConfig.from_pretrained(run)
    assert config.mask_ratio == 0.6 and config.hidden_size == 32
    assert AutoImageProcessor.from_pretrained(run).crop_size == {"height": 32, "width": 32}

    # evaluation reads the checkpoint's own data config: no change to the image task
    eval_file = run / "eval_results.json"
    main(["evaluate", "--model_name_or_path", str(run), "--train_split", "train[:300]", "--split", "test[:100]",
          "--output_file", str(eval_file), "--probe_max_iter", "20"])  # fmt: skip
    results = json.loads(eval_file.read_text())
    assert results["features"] == MAE.features.description and results["num_features"] == 32
    assert {"random_init", "raw_pixels"} <= set(results["baselines"])
    assert 0 <= results["linear_probe"]["accuracy"] <= 1
    reconstruction = results["reconstruction"]
    assert reconstruction["num_images"] == 100 and reconstruction["mask_ratio"] == 0.6 and reconstruction["loss"] > 0

    grid_file = tmp_path / "figures" / "grid.png"
    main(["reconstruct", str(run), "--split", "test", "--num_images", "5", "--output_file", str(grid_file)])
    with Image.open(grid_file) as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.size == (4 * 32 + 5 * 2, 5 * 32 + 6 * 2)  # 4 panels per row, one row per image, 2 px padding
        first = np.asarray(grid)
    reconstruct([str(run), "--split", "test", "--num_images", "5", "--output_file", str(grid_file)])
    with Image.open(grid_file) as again:
        np.testing.assert_array_equal(np.asarray(again), first)  # seeded masks: the same figure
    reconstruct([str(run), "--num_images", "5", "--seed", "1", "--output_file", str(grid_file)])
    with Image.open(grid_file) as other:
        assert not np.array_equal(np.asarray(other), first)  # another seed masks other patches

    out = tmp_path / "export"
    main(["export", str(run), str(out)])
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    hub_config = json.loads((out / "config.json").read_text())
    assert hub_config["pretrained_cfg"]["paper_ids"] == "arXiv:2111.06377"
    assert tuple(hub_config["pretrained_cfg"]["mean"]) == tuple(config.image_mean)
    encoder = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert encoder.num_classes == 0 and encoder.num_features == 32
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = MAEModel.from_pretrained(run).eval()(x).pooler_output
        torch.testing.assert_close(encoder(x), expected)
    assert not any(key.startswith("decoder") for key in encoder.state_dict())
    wrapped = AutoModel.from_pretrained(out).eval()  # transformers' TimmWrapperModel
    assert type(wrapped).__name__ == "TimmWrapperModel"
    with torch.no_grad():
        torch.testing.assert_close(wrapped(pixel_values=x).pooler_output, expected)

    # the export evaluates as the checkpoint does: same preprocessing (its pretrained_cfg), same features
    export_eval = tmp_path / "export_eval.json"
    main(["evaluate", "--model_name_or_path", str(out), "--train_split", "train[:300]", "--split", "test[:100]",
          "--output_file", str(export_eval), "--probe_max_iter", "20", "--baselines", "false"])  # fmt: skip
    exported = json.loads(export_eval.read_text())
    assert exported["num_features"] == 32
    # float rounding between the two implementations may flip at most one near-tie vote of the 100 test images
    assert exported["knn"]["accuracy"] == pytest.approx(results["knn"]["accuracy"], abs=0.0101)

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "apache-2.0"
    model_index = card.data.to_dict()["model-index"]
    metrics = {m["name"]: m["value"] for m in model_index[0]["results"][0]["metrics"]}
    assert metrics["linear probe accuracy"] == round(results["linear_probe"]["accuracy"], 4)
    assert "He, Kaiming" in card.text and "60% of the 64 patches" in card.text
    assert f"{results['reconstruction']['loss']:.4f}" in card.text
    capsys.readouterr()


@pytest.mark.slow
def test_reconstruct_refuses_what_it_cannot_draw(tmp_path, capsys):
    model = MAEForPreTraining(MAEConfig(**TINY))
    model.save_pretrained(tmp_path / "mae")
    MAEModel(MAEConfig(**TINY)).save_pretrained(tmp_path / "encoder")
    for argv, message in (
        ([str(tmp_path / "nothing")], "not a checkpoint folder"),
        ([str(tmp_path / "encoder")], "reconstructions need a pretraining checkpoint with its decoder"),
        ([str(tmp_path / "mae"), "--output_file", str(tmp_path / "grid.jpg")], "name a .png file"),
        ([str(tmp_path / "mae"), "--num_images", "0"], "--num_images must be at least 1"),
        ([str(tmp_path / "mae"), "--split", "validation"], "validation"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["reconstruct", *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
