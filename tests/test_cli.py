"""The command line: generated config flags, --config files, and pretraining end to end (1 and 2 processes)."""

import dataclasses
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig

from hf_ssl import SimCLRConfig, SimCLRModel
from hf_ssl.cli import DataArguments, config_arguments, config_overrides, main, make_parser, parse
from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--backbone", "convnext_atto", "--small_image_stem", "--image_size", "32",
    "--projection_hidden_dim", "32", "--projection_dim", "16",
]  # fmt: skip


def test_every_config_hyperparameter_is_a_flag_with_help():
    fields = {f.name: f for f in dataclasses.fields(config_arguments(SimCLRConfig))}
    assert {"backbone", "loss_temperature", "small_image_stem", "crop_min_scale", "backbone_kwargs"} <= set(fields)
    assert "NT-Xent temperature" in fields["loss_temperature"].metadata["help"]
    parser = make_parser(config_arguments(SimCLRConfig))
    (args,) = parse(
        parser,
        ["--loss_temperature", "0.1", "--backbone_kwargs", '{"drop_path_rate": 0.1}',
         "--image_mean", "0.5", "0.4", "0.3", "--small_image_stem", "--gather_distributed", "false"],
    )  # fmt: skip
    assert config_overrides(args) == {
        "small_image_stem": True,
        "gather_distributed": False,
        "loss_temperature": 0.1,
        "backbone_kwargs": {"drop_path_rate": 0.1},
        "image_mean": [0.5, 0.4, 0.3],
    }


def test_config_file_values_are_overridden_by_later_flags(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("dataset_name: somewhere\nlearning_rate: 0.5\nloss_temperature: 0.3\nmax_steps: 7\n")
    parser = make_parser(DataArguments, SSLTrainingArguments, config_arguments(SimCLRConfig))
    data, training, config = parse(parser, ["--config", str(yaml_file), "--learning_rate", "0.01", "--output_dir", "x"])
    assert data.dataset_name == "somewhere" and training.max_steps == 7 and config.loss_temperature == 0.3
    assert training.learning_rate == 0.01  # the flag wins over the file
    assert training.remove_unused_columns is False and training.per_device_train_batch_size == 256
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"backbone_kwargs": {"drop_rate": 0.2}, "output_dir": "y"}))
    _, _, config = parse(parser, ["--config", str(json_file)])
    assert config_overrides(config) == {"backbone_kwargs": {"drop_rate": 0.2}}


@pytest.mark.slow
def test_pretrain_on_the_embedded_default(tmp_path):
    out = tmp_path / "run"

    def runs_objects() -> set[int]:
        return {id(obj) for obj in gc.get_objects() if isinstance(obj, (SSLTrainer, SimCLRModel))}

    gc.collect()
    before = runs_objects()  # what earlier tests still hold
    gc.disable()  # only the command's own collection may free the run's reference cycles
    try:
        main(["pretrain", "simclr", *TINY, "--loss_temperature", "0.2", "--max_steps", "4",
              "--per_device_train_batch_size", "32", "--logging_steps", "2", "--health_steps", "2",
              "--output_dir", str(out), "--save_strategy", "no", "--disable_tqdm", "true"])  # fmt: skip
        # nothing of the run outlives the command: left to the interpreter's exit, a DDP wrapper's gloo threads can
        # abort a finished multi-process run
        assert not runs_objects() - before
    finally:
        gc.enable()
    assert (out / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(out)
    assert config.loss_temperature == 0.2 and config.backbone == "convnext_atto"
    info = json.loads((out / "hf_ssl_run.json").read_text())
    assert info["objective"] == "simclr" and info["num_examples"] == 1500 and info["global_step"] == 4
    assert info["dataset_source"] == "the embedded 'digits' dataset (no download)"
    assert info["dataset_name"] == "digits" and info["columns"] == {"image": "image"}
    assert (out / "preprocessor_config.json").exists()  # the processing class is saved with the model
    logged = [entry for entry in info["log_history"] if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:  # loss and learning rate are logged at every logging step
        assert {"loss", "learning_rate"} <= set(entry)
    health = [entry for entry in info["log_history"] if "health/embedding_std" in entry]
    assert [entry["step"] for entry in health] == [2, 4]  # the collapse signal, every --health_steps
    assert all(0 < entry["health/embedding_std"] < 1 for entry in health)


@pytest.mark.slow
def test_unknown_objective_and_command(capsys):
    for argv, message in (
        (["pretrain", "byol"], "unknown objective 'byol'; available: "),
        (["train"], "unknown command"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert f"hf-ssl: error: {message}" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_help():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hf-ssl"), "--help"], capture_output=True, text=True, check=True
    )
    assert "hf-ssl pretrain <objective>" in result.stdout


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tmp_path):
    """A real 2-process run (gloo on CPU) of scripts/run_pretraining.py under `accelerate launch` (torchrun)."""
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(ROOT / "scripts" / "run_pretraining.py"), "simclr", *TINY, "--max_steps", "2",
        "--per_device_train_batch_size", "16", "--output_dir", str(out), "--save_strategy", "no",
        "--disable_tqdm", "true", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "hf_ssl_run.json").read_text())
    assert info["world_size"] == 2
    assert info["train_metrics"]["train_samples_per_second"] > 0


@pytest.mark.slow
def test_help_and_version_answer_without_loading_torch():
    code = (
        "import sys, hf_ssl_launcher; hf_ssl_launcher.main(['--help']); hf_ssl_launcher.main(['--version']); "
        "heavy = [m for m in ('torch', 'transformers', 'hf_ssl') if m in sys.modules]; assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "hf-ssl pretrain <objective>" in result.stdout and "hf-ssl 0.1.0" in result.stdout
