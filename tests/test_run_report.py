"""``hf-ssl report``: the page and its pictures for short SimCLR and MLM runs, the objectives' picture hooks (MAE
reconstructions, wav2vec codebook usage), the missing extra, bad input, and MAE reconstructions in TensorBoard that
leave training unchanged."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_wav2vec import tiny_wav2vec_config

from hf_ssl import MAEConfig, MAEForPreTraining
from hf_ssl.cli import main
from hf_ssl.evaluation.run_report import ReportArguments, group_curves, project_2d
from hf_ssl.models.mae.callbacks import TAG
from hf_ssl.models.mae.report import report_pictures as mae_pictures
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining
from hf_ssl.models.wav2vec.report import codebook_usage
from hf_ssl.models.wav2vec.report import report_pictures as wav2vec_pictures

QUIET = ["--save_strategy", "no", "--disable_tqdm", "true", "--logging_steps", "1"]
SIMCLR_FLAGS = ["--backbone", "convnext_atto", "--small_image_stem", "--image_size", "32", "--projection_hidden_dim",
                "32", "--projection_dim", "16", "--per_device_train_batch_size", "8"]  # fmt: skip
MLM_FLAGS = ["--encoder", json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}), "--max_seq_length", "32", "--vocab_size", "200",
             "--per_device_train_batch_size", "8"]  # fmt: skip
MAE_TINY = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                decoder_num_attention_heads=2, decoder_intermediate_size=32)  # fmt: skip


def linked_pictures(page: Path) -> dict[str, Path]:
    """``{title: file}`` of every picture the Markdown page links; each must exist and decode as a real PNG."""
    links = dict(re.findall(r"!\[([^\]]+)\]\(([^)]+)\)", page.read_text()))
    assert links, "the page links no picture"
    for title, name in links.items():
        picture = page.parent / name
        assert picture.is_file(), f"{title}: {picture} is missing"
        with Image.open(picture) as image:
            assert image.format == "PNG"
            image.load()  # decodes the whole file
            assert image.width >= 200 and image.height >= 150, (title, image.size)
    return {title: page.parent / name for title, name in links.items()}


@pytest.mark.slow
def test_report_of_a_short_simclr_run(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "report"
    main(["pretrain", "simclr", *SIMCLR_FLAGS, *QUIET, "--max_steps", "4", "--report_to", "none",
          "--output_dir", str(run)])  # fmt: skip
    main(["evaluate", "--model_name_or_path", str(run), "--train_split", "train[:100]", "--split", "test[:40]",
          "--probe_max_iter", "10", "--output_file", str(run / "eval_results.json")])  # fmt: skip
    record = json.loads((run / "hf_ssl_run.json").read_text())  # warnings of the run record are listed
    record["warnings"] = ["step 3: embeddings collapsed (test)"]
    (run / "hf_ssl_run.json").write_text(json.dumps(record))
    capsys.readouterr()

    main(["report", str(run), "--output_dir", str(out), "--max_points", "80"])
    page = out / "report.md"
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    pictures = linked_pictures(page)
    assert {"Losses", "Learning rate", "Embedding map"} <= set(pictures)
    assert pictures["Losses"].name == "curves_loss.png" and pictures["Embedding map"].name == "embeddings.png"
    assert "## Warnings" in text and "- step 3: embeddings collapsed (test)" in text
    assert "## Evaluation" in text and "| pretrained |" in text and "| random init |" in text  # the eval table
    assert "80 rows of digits split 'test'" in text  # the map draws the capped, labelled rows
    assert "## Pictures of" not in text  # SimCLR brings no pictures of its own


@pytest.mark.slow
def test_report_of_a_short_mlm_run_reads_a_checkpoint_when_the_run_has_no_record(tmp_path):
    run, out = tmp_path / "run", tmp_path / "report"
    main(["pretrain", "mlm", *MLM_FLAGS, "--logging_steps", "1", "--disable_tqdm", "true", "--max_steps", "4",
          "--save_steps", "4", "--report_to", "none", "--output_dir", str(run)])  # fmt: skip
    (run / "hf_ssl_run.json").unlink()  # e.g. a run killed before its end: the checkpoint's trainer state is read
    main(["report", str(run), "--output_dir", str(out), "--max_points", "60", "--projection", "tsne"])
    pictures = linked_pictures(out / "report.md")
    assert {"Losses", "Learning rate", "Embedding map"} <= set(pictures)
    assert "t-SNE of the features (mean of the encoder" in (out / "report.md").read_text()


def test_curves_are_grouped_by_prefix_without_naming_metrics():
    history = [
        {"loss": 2.0, "learning_rate": 1e-3, "grad_norm": 1.5, "epoch": 0.1, "step": 1},
        {"health/rankme": 12.0, "health/embedding_std": 0.2, "step": 2},
        {"eval_probe_knn_accuracy": 0.4, "eval_runtime": 3.0, "eval_samples_per_second": 9.0, "step": 2},
        {"loss": 1.5, "contrastive_loss": 1.4, "learning_rate": 5e-4, "step": 3},
        {"train_runtime": 9.0, "train_loss": 1.7, "step": 3},  # the closing summary: no point of a curve
    ]
    groups = group_curves(history)
    assert list(groups) == ["loss", "learning_rate", "training", "health", "eval"]
    assert groups["loss"] == {"loss": ([1, 3], [2.0, 1.5]), "contrastive_loss": ([3], [1.4])}
    assert set(groups["health"]) == {"health/rankme", "health/embedding_std"}
    assert groups["eval"] == {"eval_probe_knn_accuracy": ([2], [0.4])}  # timing keys are left out
    assert groups["training"] == {"grad_norm": ([1], [1.5])}


def test_pca_map_matches_the_leading_principal_components():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=generator) * torch.tensor([5.0, 2.0, 0.1, 0.1, 0.1, 0.1])
    coords, labels = project_2d(features, "pca")
    centred = features.double() - features.double().mean(0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)  # independent: the covariance's eigenvectors
    expected = centred @ eigenvectors[:, [-1, -2]]
    for axis in range(2):  # equal up to the sign of each component
        assert torch.allclose(coords[:, axis].abs().double(), expected[:, axis].abs(), atol=1e-4)
    share = eigenvalues[-1] / eigenvalues.sum()
    assert labels[0] == f"PC1 ({100 * share:.0f}% of variance)"


def test_mae_hook_draws_reconstructions(tmp_path):
    folder, out = tmp_path / "mae", tmp_path / "out"
    MAEForPreTraining(MAEConfig(**MAE_TINY)).save_pretrained(folder)
    out.mkdir()
    made = mae_pictures(str(folder), out, ReportArguments(run_dir=str(folder), output_dir=str(out)))
    assert len(made) == 1 and "Reconstructions" in made[0][0]
    with Image.open(made[0][1]) as image:
        image.load()
        # 8 rows of 4 panels of 32 pixels with 2-pixel padding, enlarged by a whole factor to >= 480 pixels wide
        factor = image.width // (4 * 32 + 5 * 2)
        assert factor >= 2 and image.size == ((4 * 32 + 5 * 2) * factor, (8 * 32 + 9 * 2) * factor)


def test_wav2vec_hook_counts_codebook_usage(tmp_path):
    config = tiny_wav2vec_config()
    model = Wav2VecForPreTraining(config).eval()
    batch = {"input_values": torch.randn(3, 8000), "attention_mask": torch.ones(3, 8000, dtype=torch.long)}
    batch["attention_mask"][0, 4000:] = 0
    counts = codebook_usage(model, batch)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor([4000, 8000, 8000])).sum())
    assert counts.shape == (config.num_codevector_groups, 16) and (counts.sum(dim=1) == frames).all()
    with torch.no_grad():  # a quantizer stuck on entry 5 of every group: all frames counted there
        model.quantizer.weight_proj.bias.copy_(
            torch.zeros(config.num_codevector_groups, 16).index_fill(1, torch.tensor([5]), 1e6).flatten()
        )
    stuck = codebook_usage(model, batch)
    assert (stuck[:, 5] == frames).all() and stuck.sum() == frames * config.num_codevector_groups

    folder, out = tmp_path / "w2v", tmp_path / "out"
    model.save_pretrained(folder)
    out.mkdir()
    made = wav2vec_pictures(str(folder), out, ReportArguments(run_dir=str(folder), output_dir=str(out)))
    assert len(made) == 1 and "Codebook usage" in made[0][0]
    with Image.open(made[0][1]) as image:
        image.load()
        assert image.width >= 400 and image.height >= 150


@pytest.mark.slow
def test_missing_matplotlib_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hf-ssl: error:") and "\n" not in error and 'pip install "hf_ssl[report]"' in error


@pytest.mark.slow
@pytest.mark.parametrize(
    ("record", "extra", "message"),
    [
        (None, [], "not a pretraining run folder"),
        ("{not json", [], "cannot read its hf_ssl_run.json"),
        ({"objective": "simclr", "hf_ssl_version": "0", "log_history": []}, [], "no log history"),
        (
            {"objective": "simclr", "hf_ssl_version": "0", "log_history": [{"loss": 1.0, "step": 1}]},
            ["--eval_file", "missing.json"],
            "--eval_file missing.json: cannot read it",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, record, extra, message):
    run = tmp_path / "run"
    run.mkdir()
    if record is not None:
        (run / "hf_ssl_run.json").write_text(record if isinstance(record, str) else json.dumps(record))
    with pytest.raises(SystemExit):
        main(["report", str(run), "--output_dir", str(tmp_path / "out"), *extra])
    error = capsys.readouterr().err.strip()
    assert error.startswith("hf-ssl: error:") and "\n" not in error and message in error
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.slow
def test_mae_reconstructions_go_to_tensorboard_without_changing_training(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    flags = [arg for key, value in MAE_TINY.items() for arg in (f"--{key}", str(value))]
    base = ["pretrain", "mae", *flags, *QUIET, "--per_device_train_batch_size", "8", "--max_steps", "3"]
    main([*base, "--report_to", "tensorboard", "--output_dir", str(tmp_path / "tb")])
    main([*base, "--report_to", "none", "--output_dir", str(tmp_path / "plain")])
    trained, plain = (load_file(tmp_path / name / "model.safetensors") for name in ("tb", "plain"))
    assert trained.keys() == plain.keys()
    for key in trained:  # the pictures changed nothing: same weights to the bit
        assert torch.equal(trained[key], plain[key]), key

    events = EventAccumulator(str(tmp_path / "tb" / "runs" / "mae_reconstructions"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images(TAG)
    assert [image.step for image in images] == [1, 2, 3]
    assert images[0].width == 4 * 32 + 5 * 2 and images[0].height == 8 * 32 + 9 * 2
    assert not (tmp_path / "plain" / "runs").exists()  # no tensorboard in report_to: no pictures


def test_mae_tensorboard_callback_leaves_the_generator_and_the_mode_alone(tmp_path, monkeypatch):
    from transformers import TrainerControl, TrainerState

    from hf_ssl.models.mae.callbacks import ReconstructionImagesCallback

    written = []

    class FakeWriter:
        def add_image(self, tag, image, step, dataformats):
            written.append((tag, image.shape, step, dataformats))

        def flush(self):
            pass

    model = MAEForPreTraining(MAEConfig(**MAE_TINY)).train()
    callback = ReconstructionImagesCallback(num_images=3)
    callback.writer, callback.every = FakeWriter(), 2
    callback.pixel_values = torch.randn(3, 3, 32, 32)
    state = TrainerState(global_step=4, max_steps=10)
    before = torch.get_rng_state()
    callback.on_step_end(None, state, TrainerControl(), model=model)
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert written == [(TAG, (3 * 32 + 4 * 2, 4 * 32 + 5 * 2, 3), 4, "HWC")]
    state.global_step = 5  # not a picture step
    callback.on_step_end(None, state, TrainerControl(), model=model)
    assert len(written) == 1
