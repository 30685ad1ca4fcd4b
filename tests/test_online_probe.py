"""The online probe (``hf-ssl pretrain ... --probe_dataset_name D``): kNN / linear-probe accuracy logged at each
evaluation step, usable as ``--metric_for_best_model``, equal to ``hf-ssl evaluate`` on the same checkpoint, for images
and text, refusing bad probe sets before training, and leaving the training itself unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ssl import SimCLRConfig, SimCLRForPreTraining, UsageError
from hf_ssl.cli import main, parse_pretrain_args
from hf_ssl.evaluation.online_probe import OnlineProbe, ProbeArguments
from hf_ssl.models.simclr import SIMCLR

TINY_SIMCLR = [
    "--backbone", "convnext_atto", "--small_image_stem", "--image_size", "32", "--projection_hidden_dim", "32",
    "--projection_dim", "16", "--per_device_train_batch_size", "8", "--max_steps", "6", "--logging_steps", "2",
    "--report_to", "none", "--disable_tqdm", "true",
]  # fmt: skip
PROBE = ["--probe_dataset_name", "digit-scenes", "--probe_train_split", "train[:200]", "--probe_split", "test[:100]"]


def _log(run: Path) -> list[dict]:
    return json.loads((run / "hf_ssl_run.json").read_text())["log_history"]


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory) -> Path:
    """6 SimCLR steps probed every 2, keeping the best checkpoint by the probe's kNN accuracy."""
    out = tmp_path_factory.mktemp("probe") / "run"
    main(["pretrain", "simclr", *TINY_SIMCLR, *PROBE, "--probe_steps", "2", "--probe_linear", "--save_steps", "2",
          "--metric_for_best_model", "probe_knn_accuracy", "--load_best_model_at_end",
          "--output_dir", str(out)])  # fmt: skip
    return out


def _checkpoint_state(run: Path) -> dict:
    last = max(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())


@pytest.mark.slow
def test_probe_is_logged_at_each_probe_step(probed_run):
    history = _log(probed_run)
    probes = {entry["step"]: entry for entry in history if "eval_probe_knn_accuracy" in entry}
    assert sorted(probes) == [2, 4, 6]
    for entry in probes.values():
        assert 0 <= entry["eval_probe_knn_accuracy"] <= 1 and 0 <= entry["eval_probe_linear_accuracy"] <= 1
    assert sorted(e["step"] for e in history if "loss" in e) == [2, 4, 6]  # beside the training loss


@pytest.mark.slow
def test_best_checkpoint_is_kept_by_probe_accuracy(probed_run):
    state = _checkpoint_state(probed_run)
    logged = {e["step"]: e["eval_probe_knn_accuracy"] for e in state["log_history"] if "eval_probe_knn_accuracy" in e}
    best_step = min(step for step, value in logged.items() if value == max(logged.values()))  # the first best
    assert state["best_metric"] == max(logged.values())
    assert state["best_global_step"] == best_step
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best_step}"
    assert (probed_run / f"checkpoint-{best_step}").is_dir()  # kept whatever save_total_limit deletes
    # load_best_model_at_end: the saved model is the best checkpoint's
    final = load_file(probed_run / "model.safetensors")
    best = load_file(probed_run / f"checkpoint-{best_step}" / "model.safetensors")
    assert all(torch.equal(final[name], best[name]) for name in best)


@pytest.mark.slow
def test_probe_equals_hf_ssl_evaluate_on_the_same_checkpoint(probed_run, tmp_path):
    logged = {e["step"]: e for e in _log(probed_run) if "eval_probe_knn_accuracy" in e}
    checkpoints = sorted(probed_run.glob("checkpoint-*"))
    assert checkpoints
    for checkpoint in checkpoints:
        out = tmp_path / f"{checkpoint.name}.json"
        main(["evaluate", "--model_name_or_path", str(checkpoint), "--dataset_name", "digit-scenes",
              "--train_split", "train[:200]", "--split", "test[:100]", "--baselines", "false",
              "--output_file", str(out)])  # fmt: skip
        results = json.loads(out.read_text())
        step = int(checkpoint.name.split("-")[1])
        assert logged[step]["eval_probe_knn_accuracy"] == pytest.approx(results["knn"]["accuracy"], abs=1e-6)
        assert logged[step]["eval_probe_linear_accuracy"] == pytest.approx(
            results["linear_probe"]["accuracy"], abs=1e-6
        )


@pytest.mark.slow
def test_probe_does_not_change_training(probed_run, tmp_path):
    plain = tmp_path / "plain"
    main(["pretrain", "simclr", *TINY_SIMCLR, "--save_strategy", "no", "--output_dir", str(plain)])
    probed = load_file(probed_run / "checkpoint-6" / "model.safetensors")  # the last step (the final is the best)
    unprobed = load_file(plain / "model.safetensors")
    assert probed.keys() == unprobed.keys()
    for name, value in unprobed.items():
        torch.testing.assert_close(probed[name], value, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_text_objective_probes_a_labelled_text_set(tmp_path):
    out = tmp_path / "mlm"
    encoder = '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, ' \
        '"max_position_embeddings": 64}'  # fmt: skip
    main(["pretrain", "mlm", "--encoder", encoder, "--max_seq_length", "32", "--vocab_size", "200",
          "--per_device_train_batch_size", "8", "--max_steps", "2", "--logging_steps", "1", "--report_to", "none",
          "--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(out),
          "--probe_dataset_name", "pydoc-topics-classification", "--probe_max_train_examples", "120",
          "--probe_max_eval_examples", "40", "--probe_steps", "1"])  # fmt: skip
    history = json.loads((out / "hf_ssl_run.json").read_text())["log_history"]
    probes = [e for e in history if "eval_probe_knn_accuracy" in e]
    assert [e["step"] for e in probes] == [1, 2]
    assert all(0 <= e["eval_probe_knn_accuracy"] <= 1 for e in probes)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--probe_dataset_name", "pydoc-topics-classification"],
         "--probe_dataset_name pydoc-topics-classification: split 'train' has no image column"),
        ([*PROBE[:2], "--probe_split", "nope"], "--probe_split nope: "),
        ([*PROBE[:2], "--probe_label_column", "digit"], "--probe_label_column"),
        (["--probe_dataset_name", "/no/such/folder"], "--probe_dataset_name /no/such/folder: no such file"),
    ],
)  # fmt: skip
def test_bad_probe_sets_are_one_line_errors_before_training(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as raised:
        main(["pretrain", "simclr", *TINY_SIMCLR, "--output_dir", str(out), *flags])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hf-ssl: error: ") and message in error
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_probe_flags_set_the_evaluation_schedule_and_are_checked(tmp_path):
    args = parse_pretrain_args(SIMCLR, [*PROBE, "--probe_steps", "3", "--output_dir", "x"])
    assert args.training.eval_strategy == "steps" and args.training.eval_steps == 3
    # from a --config file too, before TrainingArguments check --load_best_model_at_end against the eval strategy
    config = tmp_path / "run.yaml"
    config.write_text(
        "probe_dataset_name: digit-scenes\nprobe_steps: 4\nsave_steps: 8\nload_best_model_at_end: true\n"
        "metric_for_best_model: probe_knn_accuracy\n"
    )
    args = parse_pretrain_args(SIMCLR, ["--config", str(config), "--output_dir", "x"])
    assert (args.training.eval_strategy, args.training.eval_steps, args.training.greater_is_better) == (
        "steps",
        4,
        True,
    )
    assert args.probe.probe_dataset_name == "digit-scenes" and args.probe.enabled
    args = parse_pretrain_args(SIMCLR, [*PROBE, "--eval_steps", "5", "--output_dir", "x"])
    assert args.training.eval_strategy == "steps" and args.training.eval_steps == 5
    assert parse_pretrain_args(SIMCLR, ["--output_dir", "x"]).training.eval_strategy == "no"  # no probe, no eval
    for argv, message in (
        ([*PROBE, "--probe_steps", "3", "--eval_steps", "5"], "--probe_steps 3 and --eval_steps 5 disagree"),
        (["--probe_steps", "3"], "--probe_steps needs --probe_dataset_name"),
        ([*PROBE, "--probe_knn_k", "0"], "--probe_knn_k must be >= 1"),
        (["--metric_for_best_model", "probe_knn_accuracy"], "without --probe_dataset_name"),
        ([*PROBE, "--metric_for_best_model", "probe_linear_accuracy"], "without --probe_linear"),
    ):
        with pytest.raises(UsageError, match=message.replace("-", r"\-")):
            parse_pretrain_args(SIMCLR, [*argv, "--output_dir", "x"])


def test_probe_set_is_capped_to_a_fixed_subset_and_leaves_the_model_as_it_was():
    config = SimCLRConfig(
        backbone="convnext_atto", small_image_stem=True, image_size=32, projection_hidden_dim=32, projection_dim=16
    )
    torch.manual_seed(0)
    model = SimCLRForPreTraining(config).train()
    model.simclr.eval()  # a submodule's own mode is restored too, not overwritten by the model's
    args = ProbeArguments(probe_dataset_name="digit-scenes", probe_max_train_examples=50, probe_max_eval_examples=30)
    probe = OnlineProbe.prepare(args, model, SIMCLR.features, None)
    again = OnlineProbe.prepare(args, model, SIMCLR.features, None)
    assert (len(probe.train), len(probe.test)) == (50, 30)
    assert probe.train["label"] == again.train["label"] and len(set(probe.train["label"])) > 2
    before = torch.random.get_rng_state()
    metrics = probe(model)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.training and not model.simclr.training
    assert set(metrics) == {"probe_knn_accuracy", "probe_runtime"} and 0 <= metrics["probe_knn_accuracy"] <= 1


class _Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)}


def test_probe_metrics_join_the_objectives_own_evaluation(tmp_path):
    """With an eval set of the objective's (SimCSE's STS pairs), the probe's metrics are logged in the same entry and
    run once per evaluation."""
    from datasets import Dataset

    from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

    rows = Dataset.from_dict({"x": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], "labels": [1.0, 0.0, 1.0]})
    args = SSLTrainingArguments(
        output_dir=str(tmp_path), eval_strategy="steps", eval_steps=1, report_to="none", per_device_eval_batch_size=2
    )
    calls = []
    trainer = SSLTrainer(
        model=_Regression(),
        args=args,
        eval_dataset=rows,
        data_collator=lambda batch: {k: torch.tensor([row[k] for row in batch]) for k in ("x", "labels")},
        probe=lambda model: calls.append(model) or {"probe_knn_accuracy": 0.25},
    )
    metrics = trainer.evaluate()
    assert metrics["eval_probe_knn_accuracy"] == 0.25 and "eval_loss" in metrics and len(calls) == 1
    logged = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(logged) == 1 and logged[0]["eval_probe_knn_accuracy"] == 0.25
    assert [e for e in trainer.state.log_history if "eval_probe_knn_accuracy" in e] == logged
