"""Representation health (hf_ssl.health): RankMe against numpy, the "stops learning" rule, forced collapses that warn
once (also across a resume), the generic checks of a model without a ``health`` hook, and the flags' validation.

Every objective's tiny CLI run logging health, staying quiet and matching the weights of a run without health is in
``tests/models/common.py`` (``test_health_is_logged_quietly_and_changes_no_weight``).
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import TrainerControl, TrainerState

from hf_ssl import UsageError
from hf_ssl.cli import main
from hf_ssl.health import HealthCallback, HealthOutput, HealthRules, check_health, rankme, stopped_learning
from hf_ssl.models.simclr.modeling_simclr import SimCLRModel
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecGumbelQuantizer, Wav2VecPreTrainedModel
from hf_ssl.trainer import SSLTrainingArguments

RUN = ["--logging_steps", "1", "--health_steps", "1", "--health_batch_size", "16", "--report_to", "none",
       "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--seed", "1"]  # fmt: skip
SIMCLR = ["simclr", "--backbone", "convnext_atto", "--small_image_stem", "--image_size", "32",
          "--projection_hidden_dim", "32", "--projection_dim", "16", "--per_device_train_batch_size", "8"]  # fmt: skip
WAV2VEC_BACKBONE = {
    "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16, 16, 16, 16], "conv_kernel": [10, 3, 3, 3], "conv_stride": [5, 2, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "layer",
}  # fmt: skip
WAV2VEC = ["wav2vec", "--backbone", json.dumps(WAV2VEC_BACKBONE), "--num_codevectors_per_group", "16",
           "--codevector_dim", "16", "--proj_codevector_dim", "16", "--num_negatives", "10", "--mask_time_prob",
           "0.5", "--mask_time_length", "4", "--sampling_rate", "8000", "--max_duration_seconds", "1.0",
           "--per_device_train_batch_size", "4"]  # fmt: skip


def numpy_rankme(matrix: np.ndarray) -> float:
    """RankMe written from the paper's definition (Garrido et al., 2023, eq. 1), with numpy's SVD."""
    singular = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    p = singular / np.abs(singular).sum() + 1e-7
    return float(np.exp(-np.sum(p * np.log(p))))


class _Warnings(logging.Handler):
    """Collects the health warnings (the CLI's ``hf_ssl`` logger does not propagate to pytest's handler)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def health_warnings():
    handler = _Warnings()
    health_logger = logging.getLogger("hf_ssl.health")
    health_logger.addHandler(handler)
    yield handler.messages
    health_logger.removeHandler(handler)


def _kinds(messages: list[str], metric: str) -> int:
    return sum(metric in message for message in messages)


# ------------------------------------------------------------------------------------------------------- metrics


def test_rankme_matches_numpy_on_random_and_rank_deficient_matrices():
    generator = np.random.default_rng(0)
    full = generator.normal(size=(64, 16))
    low = generator.normal(size=(64, 3)) @ generator.normal(size=(3, 16))  # rank 3
    for matrix in (full, low, generator.normal(size=(8, 32))):
        assert rankme(torch.from_numpy(matrix).float()) == pytest.approx(numpy_rankme(matrix), rel=1e-4)
    assert rankme(torch.from_numpy(low).float()) < 3.0 + 1e-3  # never above the true rank
    assert 10 < rankme(torch.from_numpy(full).float()) <= 16
    assert rankme(torch.eye(5)) == pytest.approx(5.0, rel=1e-5)  # equal singular values: the rank itself
    assert rankme(torch.ones(10, 4)) == pytest.approx(1.0, rel=1e-5)  # one point
    assert rankme(torch.zeros(10, 4)) == 0.0


def test_stopped_learning_rule_on_synthetic_loss_series():
    noise = np.random.default_rng(0).normal(scale=0.05, size=60)
    falling = list(np.linspace(3.0, 1.0, 60) + noise)
    flat = list(2.0 + noise)
    # a noisy but falling loss is never flagged, at any check; a noisy plateau is, within a few checks
    assert not any(stopped_learning(falling[:end], window=10) for end in range(1, 61))
    assert any(stopped_learning(flat[:end], window=10) for end in range(20, 30))
    assert stopped_learning(list(np.linspace(1.0, 2.0, 20)), window=10)  # rising: no progress either
    assert not stopped_learning(flat[:19], window=10)  # two full windows are needed
    spiky = list(np.linspace(3.0, 2.0, 20))
    spiky[-1] = 10.0  # one spike changes no median
    assert not stopped_learning(spiky, window=10)
    assert stopped_learning(list(np.linspace(3.0, 2.99, 20)), window=10, min_improvement=0.01)
    # the rule as the callback applies it: warned once, naming the step and both medians
    found = check_health({"health/loss": 2.0, "step": 40}, HealthRules(patience=10), losses=[2.0] * 20)
    assert list(found) == ["stalled"] and "step 40" in found["stalled"] and "median 2" in found["stalled"]


def test_checks_name_step_metric_value_and_advice():
    rules = HealthRules()
    found = check_health(
        {"step": 7, "health/rankme": 1.1, "health/embedding_std": 0.0, "health/codebook_perplexity": 2.0},
        rules,
        first_rank=20.0,
        dim=16,
        floors={"codebook_perplexity": 2.0},
        advice={"codebook_perplexity": "a higher diversity_loss_weight"},
    )
    assert set(found) == {"rank", "std", "codebook_perplexity"}
    assert all(message.startswith("health: step 7: health/") and "\n" not in message for message in found.values())
    assert "try: a higher diversity_loss_weight" in found["codebook_perplexity"]
    healthy = {"step": 7, "health/rankme": 15.0, "health/embedding_std": 0.2, "health/alignment": 0.8}
    assert check_health({**healthy, "health/uniformity": -3.0, "health/loss": 2.0}, rules, 20.0, [2.0], 16) == {}
    # embeddings that are not isotropic (masked prediction) are judged against their own first std, not 1/sqrt(D)
    assert check_health({"health/embedding_std": 0.004}, rules, dim=None, first_std=0.017) == {}
    assert set(check_health({"health/embedding_std": 0.001}, rules, dim=None, first_std=0.017)) == {"std"}
    assert set(check_health({"health/embedding_std": 0.004}, rules, dim=64)) == {"std"}
    with pytest.raises(ValueError, match="patience"):
        HealthRules(patience=-1)


@pytest.mark.slow
def test_health_flags_are_validated(capsys):
    with pytest.raises(UsageError, match="--health_steps"):
        SSLTrainingArguments(output_dir="unused", health_steps=-1)
    with pytest.raises(UsageError, match="--health_batch_size"):
        SSLTrainingArguments(output_dir="unused", health_batch_size=1)
    with pytest.raises(SystemExit):
        main(["pretrain", *SIMCLR, "--max_steps", "1", "--health_steps", "-2", "--output_dir", "unused"])
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == ["hf-ssl: error: --health_steps must be >= 0 (0 turns health checks off), got -2"]


# ------------------------------------------------------------------------------------------------------- callback


class _LossOnly(nn.Module):
    """A model without a ``health`` hook (as a plugin's may be): dropout and a random draw in its forward."""

    def __init__(self):
        super().__init__()
        self.layer, self.dropout = nn.Linear(4, 4), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        out = self.dropout(self.layer(x)) + torch.randn_like(x)
        return SimpleNamespace(loss=out.pow(2).mean())


def test_a_model_without_the_hook_gets_the_generic_checks_and_training_is_untouched():
    logged = []
    trainer = SimpleNamespace(
        train_dataset=[{"x": torch.full((4,), float(i))} for i in range(10)],
        data_collator=lambda rows: {"x": torch.stack([row["x"] for row in rows])},
        log=logged.append,
    )
    args = SimpleNamespace(seed=0, health_steps=2, health_batch_size=4)
    state, control, model = TrainerState(), TrainerControl(), _LossOnly().train()
    callback = HealthCallback(trainer)
    callback.on_train_begin(args, state, control, model=model)
    assert callback.batch["x"].shape == (4, 4)
    rng = torch.get_rng_state()
    for step in (1, 2, 3, 4):
        state.global_step = step
        callback.on_step_end(args, state, control, model=model)
    assert torch.equal(torch.get_rng_state(), rng)  # no draw leaks into the training's generator
    assert model.training  # the mode is restored
    assert [set(entry) for entry in logged] == [{"health/loss"}] * 2  # steps 2 and 4
    assert logged[0] == logged[1]  # same batch, same seed, same weights: the same value
    args.health_steps = 0
    callback.on_train_begin(args, state, control, model=model)
    callback.on_step_end(args, state, control, model=model)
    assert len(logged) == 2  # off


def test_health_output_documents_the_hook():
    output = HealthOutput(embeddings=torch.randn(8, 4), positives=torch.randn(8, 4), loss=torch.tensor(1.0))
    assert output.scalars == {} and output.floors == {} and output.advice == {}


# ------------------------------------------------------------------------------------------------------- collapses


@pytest.mark.slow
def test_constant_simclr_embeddings_warn_once_in_log_and_record_also_after_resume(
    tmp_path, monkeypatch, health_warnings
):
    def constant(self, pixel_values, return_dict=None):  # every image gives the same features
        pooled = torch.ones(pixel_values.shape[0], self.num_features, device=pixel_values.device)
        return SimpleNamespace(last_hidden_state=pooled[:, :, None, None], pooler_output=pooled)

    monkeypatch.setattr(SimCLRModel, "forward", constant)
    out = tmp_path / "run"
    save = ["--save_strategy", "steps", "--save_steps", "3", "--output_dir", str(out)]
    main(["pretrain", *SIMCLR, *RUN, *save, "--max_steps", "3"])
    record = json.loads((out / "hf_ssl_run.json").read_text())
    checks = [entry for entry in record["log_history"] if "health/rankme" in entry]
    assert len(checks) == 3 and all(entry["health/rankme"] < 1.5 for entry in checks)
    for metric in ("health/rankme", "health/embedding_std", "health/alignment"):
        assert _kinds(health_warnings, metric) == 1, health_warnings  # once across three checks
        assert _kinds(record["warnings"], metric) == 1, record["warnings"]
    assert all("step 1" in message and "try:" in message for message in health_warnings)
    assert record["warnings"] == health_warnings

    health_warnings.clear()  # resumed for three more checks: nothing is warned again, the record keeps all
    main(["pretrain", *SIMCLR, *RUN, *save, "--max_steps", "6", "--resume_from_checkpoint", str(out / "checkpoint-3")])
    resumed = json.loads((out / "hf_ssl_run.json").read_text())
    assert len([entry for entry in resumed["log_history"] if "health/rankme" in entry]) == 6
    assert health_warnings == []
    assert resumed["warnings"] == record["warnings"]


@pytest.mark.slow
def test_a_codebook_stuck_on_one_entry_warns_once(tmp_path, monkeypatch, health_warnings):
    initialise = Wav2VecPreTrainedModel._init_weights

    def stuck(self, module):  # every frame picks entry 0 of each group, whatever its features
        initialise(self, module)
        if isinstance(module, Wav2VecGumbelQuantizer):
            with torch.no_grad():
                module.weight_proj.weight.zero_()
                module.weight_proj.bias.copy_(
                    torch.nn.functional.one_hot(torch.zeros(module.num_groups, dtype=torch.long), module.num_vars)
                    .flatten()
                    .float()
                    * 1e4
                )

    monkeypatch.setattr(Wav2VecPreTrainedModel, "_init_weights", stuck)
    out = tmp_path / "run"
    main(["pretrain", *WAV2VEC, *RUN, "--max_steps", "3", "--save_strategy", "no", "--output_dir", str(out)])
    record = json.loads((out / "hf_ssl_run.json").read_text())
    checks = [entry for entry in record["log_history"] if "health/codebook_perplexity" in entry]
    assert len(checks) == 3
    assert all(entry["health/codebook_perplexity"] == pytest.approx(2.0, abs=1e-3) for entry in checks)  # G groups
    assert all(entry["health/codebook_use"] == pytest.approx(2 / 32) for entry in checks)  # 1 of 16 per group
    assert _kinds(health_warnings, "health/codebook_perplexity") == 1, health_warnings
    assert _kinds(record["warnings"], "health/codebook_perplexity") == 1
    assert any("diversity_loss_weight" in message for message in record["warnings"])
    # every distractor has the positive's codes: the contrastive task is trivial, its loss 0, warned once too
    assert _kinds(record["warnings"], "health/loss is") == 1
    assert record["warnings"] == health_warnings
