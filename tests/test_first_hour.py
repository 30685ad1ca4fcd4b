"""A new user's first hour: inputs that would train silently into a broken model stop with one line naming
the flag or file (exit status 2), help is honest, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

import hf_ssl
import hf_ssl.cli
from hf_ssl.cli import main

TINY = ["--backbone", "convnext_atto", "--small_image_stem", "--image_size", "32", "--projection_hidden_dim", "32",
        "--projection_dim", "16"]  # fmt: skip
QUIET = ["--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none", "--logging_steps", "1"]


def _error(argv: list[str], capsys) -> str:
    """Run the CLI expecting a user error: exit status 2 and one line ``hf-ssl: error: ...`` on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("hf-ssl: error:")]
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


def _pretrain(tmp_path: Path, *flags: str) -> list[str]:
    return ["pretrain", "simclr", *TINY, "--output_dir", str(tmp_path / "run"), *QUIET, *flags]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loss_temperature", "0"], "loss_temperature must be > 0, got 0.0"),
        (["--loss_temperature", "-1"], "loss_temperature must be > 0, got -1.0"),
        (["--image_size", "0"], "image_size must be >= 1, got 0"),
        (["--per_device_train_batch_size", "1"], "--per_device_train_batch_size 1: this objective needs at least 2"),
        (["--learning_rat", "0.5"], "unrecognised arguments: --learning_rat 0.5"),
        (["--loss_temp", "0.1"], "unrecognised arguments: --loss_temp 0.1"),
        (["--dataset_name", "./no/such/folder"], "--dataset_name ./no/such/folder: no such file or folder"),
        (["--train_split", "validation"], "splits 'train' and 'test'"),
        (["--resume_from_checkpoint", "true"], "--resume_from_checkpoint true: no complete checkpoint-* folder"),
    ],
)
def test_bad_input_stops_before_training_with_one_line(flags, message, tmp_path, capsys):
    line = _error(_pretrain(tmp_path, "--max_steps", "2", *flags), capsys)
    assert message in line
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_file_that_is_not_what_its_name_says(tmp_path, capsys):
    fake = tmp_path / "images.parquet"
    fake.write_text("not parquet at all\n")
    line = _error(_pretrain(tmp_path, "--dataset_name", str(fake), "--max_steps", "2"), capsys)
    assert f"--dataset_name {fake}: cannot read it: Parquet magic bytes not found" in line


@pytest.mark.slow
def test_config_file_keys_must_be_flags_written_out(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("loss_temp: 0.1\nmax_steps: 2\n")
    line = _error(["pretrain", "simclr", "--config", str(config)], capsys)
    assert f"--config {config}: unknown keys ['loss_temp']" in line


def _tiny_image_folder(root: Path, count: int, broken: int = 0) -> Path:
    folder = root / "images" / "train" / "a"
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (12, 12), (i * 20 % 255, 0, 0)).save(folder / f"{i}.png")
    for i in range(broken):
        (folder / f"broken{i}.png").write_bytes(b"not a png")
    return root / "images"


@pytest.mark.slow
def test_fewer_examples_than_one_batch(tmp_path, capsys):
    folder = _tiny_image_folder(tmp_path, 3)
    for flags in (["--max_steps", "2"], ["--num_train_epochs", "1"]):
        line = _error(_pretrain(tmp_path, "--dataset_name", str(folder), "--per_device_train_batch_size", "8", *flags),
                      capsys)  # fmt: skip
        assert "3 training examples make no full batch of 8 per device x 1 processes" in line


@pytest.mark.slow
def test_every_image_undecodable_is_an_error_even_when_skipping(tmp_path, capsys):
    folder = _tiny_image_folder(tmp_path, 0, broken=3)
    line = _error(_pretrain(tmp_path, "--dataset_name", str(folder), "--on_bad_example", "skip", "--max_steps", "2"),
                  capsys)  # fmt: skip
    assert "none of the 3 images is usable" in line


@pytest.mark.slow
def test_diverging_training_stops_at_the_step_and_saves_nothing(tmp_path, capsys):
    line = _error(_pretrain(tmp_path, "--max_steps", "6", "--learning_rate", "1e30", "--warmup_steps", "0",
                            "--per_device_train_batch_size", "16"), capsys)  # fmt: skip
    assert "training stopped at step 2: the loss is nan" in line
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(hf_ssl.UsageError, match="loss_temperature"):
        main([*_pretrain(tmp_path, "--loss_temperature", "0"), "--debug"])


@pytest.mark.slow
def test_the_run_says_where_its_data_came_from(tmp_path):
    folder = _tiny_image_folder(tmp_path, 20)
    main(_pretrain(tmp_path, "--dataset_name", str(folder), "--max_steps", "1", "--per_device_train_batch_size", "8"))
    info = json.loads((tmp_path / "run" / "hf_ssl_run.json").read_text())
    assert info["dataset_source"] == f"local folder {folder.resolve()}"


@pytest.mark.slow
def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "simclr", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hf-ssl pretrain simclr [--config FILE]")
    assert "--config FILE" in text and "(default: 0.5) (default: None)" not in text and "(default: None)" not in text
    assert "not directly used by" not in text  # --resume_from_checkpoint says what it does here
    for group in ("data (images):", "objective (SimCLRConfig; saved in config.json):", "training ("):
        assert group in text
    main(["pretrain", "--help"])  # the objectives, exit 0
    assert "simclr" in capsys.readouterr().out
    main(["--version"])
    assert capsys.readouterr().out.strip() == f"hf-ssl {hf_ssl.__version__}"


@pytest.mark.slow
def test_evaluate_names_a_missing_checkpoint(capsys):
    line = _error(["evaluate", "--model_name_or_path", "/nonexistent"], capsys)
    assert "/nonexistent: no such checkpoint folder" in line


@pytest.mark.slow
def test_streamed_run_needs_max_steps(tmp_path, capsys):
    line = _error(_pretrain(tmp_path, "--streaming", "--num_train_epochs", "1"), capsys)
    assert "--streaming needs --max_steps" in line


# ---------------------------------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_streamed_bad_image_gives_every_process_full_batches(tmp_path):
    """2 processes stream a dataset with an undecodable image: filtered before batching, so both processes get
    batches of the same size and the gathered NT-Xent runs (uneven batches would fail in all_gather)."""
    rows = [{"image": {"bytes": _png(i), "path": f"{i}.png"}} for i in range(40)]
    rows.insert(5, {"image": {"bytes": b"broken", "path": "broken.png"}})
    folder = tmp_path / "stream"
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).save_to_disk(str(folder))
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(Path(__file__).resolve().parents[1] / "scripts" / "run_pretraining.py"), "simclr", *TINY,
        "--dataset_name", str(folder), "--streaming", "--on_bad_example", "skip", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--output_dir", str(out), *QUIET,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broken.png" in result.stderr  # the skip is logged
    info = json.loads((out / "hf_ssl_run.json").read_text())
    assert info["world_size"] == 2 and info["global_step"] == 3


def _png(seed: int) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_logging_and_cpu_defaults_print_nothing_twice(tmp_path):
    """hf_ssl logs through its own handler (a root handler would repeat what huggingface_hub and datasets log
    through theirs), and no pin_memory warning on a machine without an accelerator."""
    import logging

    from hf_ssl.trainer import SSLTrainingArguments

    main(["--version"])
    assert not [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]  # pytest adds its own
    assert logging.getLogger("hf_ssl").handlers and not logging.getLogger("hf_ssl").propagate
    if not torch.accelerator.is_available():
        assert SSLTrainingArguments(output_dir=str(tmp_path)).dataloader_pin_memory is False


def test_a_hub_id_answered_from_the_cache_says_so(monkeypatch):
    from hf_ssl.data import data_source

    class Cached:
        cache_files = [{"filename": "/root/.cache/huggingface/datasets/cifar10/default/0.0.0/abc/data.arrow"}]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = data_source("cifar10", Cached())
    assert source.startswith("Hub dataset 'cifar10', read from the cache /root/.cache/huggingface/datasets/cifar10")
    assert "offline" in source


def test_the_readme_first_command_evaluates_what_its_config_trains():
    """The README's first command pretrains with the digit-scenes config and evaluates the folder that config writes,
    on the data it trained on (tests/test_recipes.py runs the config itself)."""
    import re
    import shlex

    import yaml

    root = Path(__file__).resolve().parents[1]
    section = root.joinpath("README.md").read_text().split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    parts = [shlex.split(part) for part in command.split("&&")]
    pretrain = next(p for p in parts if "pretrain" in p)
    evaluate = next(p for p in parts if "evaluate" in p)
    config_path = pretrain[pretrain.index("--config") + 1]
    config = yaml.safe_load((root / config_path).read_text())
    assert evaluate[evaluate.index("--model_name_or_path") + 1] == config["output_dir"]
    assert evaluate[evaluate.index("--dataset_name") + 1] == config["dataset_name"]
