"""The checks every objective passes, run per objective as transformers' ``ModelTesterMixin`` does.

A test module subclasses :class:`ObjectiveChecks` as ``class TestXxxObjective(ObjectiveChecks)`` and says how to make
a tiny config and a batch of inputs (with every random input injected); pytest then runs each ``test_*`` here for it.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.errors import UsageError
from hf_ssl.objectives import OBJECTIVES, Objective

# a fresh interpreter that never imports hf_ssl: an export must load in its own ecosystem alone
_LOAD_EXPORT = textwrap.dedent(
    """
    import sys

    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(sys.argv[1]).eval()
    leaked = sorted(name for name in sys.modules if name == "hf_ssl" or name.startswith("hf_ssl."))
    assert not leaked, leaked
    print(type(model).__name__, sum(p.numel() for p in model.parameters()))
    """
)


# a pretraining run that SIGKILLs itself at a chosen point: "step N" in the forward pass of optimisation step N,
# "save N" while checkpoint-N is being written (its weights and optimizer are on disk, its trainer state is not)
_KILLED_RUN = textwrap.dedent(
    """
    import os
    import signal
    import sys

    from transformers import Trainer

    import hf_ssl.cli
    from hf_ssl.trainer import SSLTrainer

    mode, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if mode == "save":
        save = Trainer._save_optimizer_and_scheduler

        def save_then_die(self, output_dir):
            save(self, output_dir)
            if self.state.global_step == at:
                die()

        Trainer._save_optimizer_and_scheduler = save_then_die
    else:
        compute_loss = SSLTrainer.compute_loss

        def compute_loss_then_die(self, *args, **kwargs):
            result = compute_loss(self, *args, **kwargs)
            if self.state.global_step + 1 == at:
                die()
            return result

        SSLTrainer.compute_loss = compute_loss_then_die
    hf_ssl.cli.main(argv)
    """
)


class ObjectiveChecks:
    """Shared checks; subclasses set :attr:`objective` and implement :meth:`tiny_config`, :meth:`batch` and
    :meth:`pretrain_flags`."""

    objective: Objective
    steps_to_learn: int = 8  # optimiser steps of the learning check
    learning_rate: float = 2e-3

    def tiny_config(self) -> Any:
        raise NotImplementedError

    def batch(self, config: Any) -> dict[str, torch.Tensor]:
        """Model inputs, with every random input (noise, masks, negatives) given explicitly."""
        raise NotImplementedError

    def pretrain_flags(self) -> list[str]:
        """``hf-ssl pretrain <objective>`` flags for a tiny, quick run on the embedded default data (a few seconds
        for 8 steps on one thread)."""
        raise NotImplementedError

    def _model(self, config: Any) -> torch.nn.Module:
        torch.manual_seed(0)
        return self.objective.model_class(config)

    def test_is_registered(self):
        assert OBJECTIVES[self.objective.name] is self.objective
        config = self.tiny_config()
        assert isinstance(config, self.objective.config_class)
        assert config.model_type.startswith("hf_ssl_")  # never collides with transformers' own keys

    @pytest.mark.slow
    def test_pretrain_help_lists_every_config_flag(self, capsys):
        """``hf-ssl pretrain <objective> --help`` exits 0 and shows a flag for each config argument (argparse formats
        help texts with ``%``, so a docstring's ``%`` must not break it)."""
        from hf_ssl.cli import main

        with pytest.raises(SystemExit) as exit_info:
            main(["pretrain", self.objective.name, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        arguments = inspect.signature(self.objective.config_class.__init__).parameters
        missing = [name for name in arguments if name not in ("self", "kwargs") and f"--{name} " not in text]
        assert not missing, missing

    def test_config_round_trip(self, tmp_path):
        config = self.tiny_config()
        config.save_pretrained(tmp_path)
        again = AutoConfig.from_pretrained(tmp_path)
        assert type(again) is type(config)
        assert again.to_diff_dict() == config.to_diff_dict()

    def test_auto_classes_and_save_load_equality(self, tmp_path):
        config = self.tiny_config()
        model = self._model(config).eval()
        with torch.no_grad():  # away from the seeded init, so equality proves loading
            for parameter in model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
        batch = self.batch(config)
        loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
        assert type(loaded) is self.objective.model_class
        backbone = AutoModel.from_pretrained(tmp_path).eval()
        assert backbone.config.model_type == config.model_type and not isinstance(backbone, type(model))
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).loss, model(**batch).loss)

    def test_randomness_is_injectable(self):
        """Given the batch's explicit random inputs, a forward pass (dropout off) is a function of its inputs."""
        config = self.tiny_config()
        model = self._model(config).eval()
        batch = self.batch(config)
        with torch.no_grad():
            torch.manual_seed(1)
            first = model(**batch).loss
            torch.manual_seed(2)
            second = model(**batch).loss
        torch.testing.assert_close(first, second)

    def test_every_scalar_output_is_on_the_loss_device(self):
        """The Trainer stacks the 0-dim tensors of the output for its log, so each lives on the loss's device. The
        forward runs on the CPU with ``meta`` as the default device: a tensor made without a device (``torch.tensor(x)``
        where ``loss.new_tensor(x)`` is meant) lands on ``meta`` here, as it would land on the CPU beside a GPU."""
        config = self.tiny_config()
        model = self._model(config).train()
        batch = self.batch(config)
        with torch.device("meta"):
            outputs = model(**batch)
        device = outputs.loss.device
        assert device.type == "cpu"
        elsewhere = {
            name: str(value.device)
            for name, value in outputs.items()
            if isinstance(value, torch.Tensor) and value.ndim == 0 and value.device != device
        }
        assert not elsewhere, f"scalars not on the loss's device: {elsewhere}"

    def test_loss_is_finite_and_decreases(self):
        config = self.tiny_config()
        model = self._model(config).train()
        batch = self.batch(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.learning_rate)
        losses = []
        for _ in range(self.steps_to_learn):
            loss = model(**batch).loss
            assert torch.isfinite(loss)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert min(losses[-2:]) < losses[0], losses

    @pytest.mark.slow
    def test_export_loads_without_hf_ssl(self, tmp_path):
        if self.objective.exporter is None:
            return
        from hf_ssl.export import export_backbone

        config = self.tiny_config()
        self._model(config).save_pretrained(tmp_path / "ckpt")
        out = export_backbone(tmp_path / "ckpt", tmp_path / "export")
        assert {p.name for p in out.iterdir()} <= set(self.objective.exporter.files)
        run = subprocess.run(
            [sys.executable, "-c", _LOAD_EXPORT, str(out)], capture_output=True, text=True, timeout=300
        )
        assert run.returncode == 0, run.stderr[-3000:]

    @pytest.mark.slow
    def test_sigkill_and_resume_gives_the_weights_of_the_uninterrupted_run(self, tmp_path):
        """A run SIGKILLed while writing checkpoint-4, resumed with ``--resume_from_checkpoint true`` (which skips
        the half-written checkpoint-4, naming it, and resumes from checkpoint-2), SIGKILLed again in the forward
        pass of step 7 and resumed from checkpoint-6, ends with the weights of the run that was never interrupted:
        data order, collator and on-device draws, dropout, schedules and optimizer state are all restored."""
        schedule = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "10",
                    "--seed", "3", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
                    "--dataloader_num_workers", "0"]  # fmt: skip

        def argv(out: str, *extra: str) -> list[str]:
            return ["pretrain", self.objective.name, *self.pretrain_flags(), *schedule, "--output_dir", out, *extra]

        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

        def run(mode: str, at: int, *args: str) -> subprocess.CompletedProcess:
            command = [sys.executable, "-c", _KILLED_RUN, mode, str(at), *args]
            return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

        whole, killed = str(tmp_path / "whole"), tmp_path / "killed"
        done = run("step", 0, *argv(whole))  # step 0 never comes: the uninterrupted run, in the same setting
        assert done.returncode == 0, done.stderr[-3000:]

        first = run("save", 4, *argv(str(killed)))
        assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
        assert (killed / "checkpoint-4" / "model.safetensors").is_file()
        assert not (killed / "checkpoint-4" / "trainer_state.json").exists()  # half-written

        second = run("step", 7, *argv(str(killed), "--resume_from_checkpoint", "true"))
        assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
        skipped = [line for line in second.stderr.splitlines() if "skipping" in line and "checkpoint-4" in line]
        assert len(skipped) == 1, second.stderr[-3000:]
        assert (killed / "checkpoint-6" / "trainer_state.json").is_file()
        assert not (killed / "model.safetensors").exists()

        third = run("step", 0, *argv(str(killed), "--resume_from_checkpoint", "true"))
        assert third.returncode == 0, third.stderr[-3000:]
        expected = load_file(os.path.join(whole, "model.safetensors"))
        resumed = load_file(killed / "model.safetensors")
        assert resumed.keys() == expected.keys()
        for name, tensor in expected.items():
            torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=0, msg=name)
        record = json.loads((killed / "hf_ssl_run.json").read_text())
        assert record["global_step"] == 8

    @pytest.mark.slow
    def test_health_is_logged_quietly_and_changes_no_weight(self, tmp_path):
        """Health on (every step) logs at each step every ``health/*`` value the model's own ``health`` gives, warns
        nothing on a healthy tiny run, and ends with exactly the weights and buffers of the same run with health off
        (``--health_steps 0``, which logs none)."""
        from hf_ssl.cli import main
        from hf_ssl.health import measure

        config = self.tiny_config()
        expected = set(measure(self._model(config).health(self.batch(config)))) | {"health/rankme", "health/loss"}
        flags = ["--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                 "--disable_tqdm", "true", "--seed", "3", "--dataloader_num_workers", "0"]  # fmt: skip
        records = {}
        for name, every in (("on", "1"), ("off", "0")):
            out = tmp_path / name
            main(["pretrain", self.objective.name, *self.pretrain_flags(), *flags, "--health_steps", every,
                  "--output_dir", str(out)])  # fmt: skip
            records[name] = json.loads((out / "hf_ssl_run.json").read_text())
        logged = {entry["step"]: entry for entry in records["on"]["log_history"] if "health/loss" in entry}
        assert sorted(logged) == [1, 2]
        for record in records.values():  # the step's own training log still comes
            assert [entry["step"] for entry in record["log_history"] if "loss" in entry] == [1, 2]
        for entry in logged.values():
            health = {key for key in entry if key.startswith("health/")}
            assert health == expected, health ^ expected
            assert all(math.isfinite(entry[key]) for key in health)
        assert records["on"]["warnings"] == []
        assert not any(key.startswith("health/") for entry in records["off"]["log_history"] for key in entry)
        on, off = load_file(tmp_path / "on" / "model.safetensors"), load_file(tmp_path / "off" / "model.safetensors")
        assert on.keys() == off.keys()
        for name, tensor in off.items():
            torch.testing.assert_close(on[name], tensor, atol=0, rtol=0, msg=name)

    def test_half_written_checkpoint_is_skipped_and_a_truncated_one_refused(self, tmp_path):
        """``--resume_from_checkpoint true`` takes the newest complete checkpoint (a newer one without its trainer
        state, or with truncated weights, is skipped); the truncated one given by name is a one-line error naming
        its file, and a checkpoint of another objective (or other sizes) is refused before anything is loaded."""
        from hf_ssl.checkpoints import check_checkpoint_fits, last_complete_checkpoint
        from hf_ssl.cli import _resolve_resume

        config = self.tiny_config()
        model = self._model(config)
        for step in (2, 4, 6):
            folder = tmp_path / f"checkpoint-{step}"
            model.save_pretrained(folder)
            for name in ("trainer_state.json", "optimizer.pt", "scheduler.pt"):
                (folder / name).write_text("{}")
        (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()
        weights = tmp_path / "checkpoint-4" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")

        args = SimpleNamespace(resume_from_checkpoint=str(tmp_path / "checkpoint-4"), output_dir=str(tmp_path))
        with pytest.raises(UsageError, match=r"checkpoint-4.*truncated"):
            _resolve_resume(args, self.objective)
        args.resume_from_checkpoint = True
        _resolve_resume(args, self.objective)
        assert args.resume_from_checkpoint == str(tmp_path / "checkpoint-2")
        check_checkpoint_fits(tmp_path / "checkpoint-2", model, "--resume_from_checkpoint")

        other = next(o for o in OBJECTIVES.values() if o is not self.objective)
        other_type = {"model_type": other.config_class.model_type}
        (tmp_path / "checkpoint-2" / "config.json").write_text(json.dumps(other_type))
        with pytest.raises(UsageError, match=f"{other.config_class.model_type}.*not one of {self.objective.name}"):
            _resolve_resume(SimpleNamespace(resume_from_checkpoint=True, output_dir=str(tmp_path)), self.objective)
        with pytest.raises(UsageError, match=other.config_class.model_type):
            check_checkpoint_fits(tmp_path / "checkpoint-2", model, "--resume_from_checkpoint")

        config.save_pretrained(tmp_path / "checkpoint-2")
        state = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
        name = max(state, key=lambda key: state[key].numel())  # one weight of other sizes
        state[name] = torch.zeros(*[size + 1 for size in state[name].shape])
        save_file(state, tmp_path / "checkpoint-2" / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(UsageError, match=f"{re.escape(name)} of shape .*other model sizes"):
            check_checkpoint_fits(tmp_path / "checkpoint-2", model, "--resume_from_checkpoint")

    bf16_loss_rtol: float = 1e-2  # of the bf16 check: bf16 keeps 8 significant bits; the tiny models differ by < 2e-3

    def test_bf16_autocast_step_matches_fp32(self):
        """One step under CPU bf16 autocast, as ``--bf16`` runs it: no dtype error; a finite fp32 loss within
        ``bf16_loss_rtol`` of the fp32 loss (dropout off, same inputs); most layers computing in bf16 (autocast is not
        switched off for the whole model); finite gradients on every parameter that gets one in fp32; parameters
        still fp32 after the optimiser step."""
        config = self.tiny_config()
        model = self._model(config).eval()
        batch = self.batch(config)
        reference = model(**batch).loss
        reference.backward()
        with_grad = [name for name, parameter in model.named_parameters() if parameter.grad is not None]
        model.zero_grad(set_to_none=True)

        in_bf16: list[bool] = []
        hooks = [
            module.register_forward_hook(lambda _module, _args, out: in_bf16.append(out.dtype == torch.bfloat16))
            for module in model.modules()
            if isinstance(module, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d)
        ]
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss
        finally:
            for hook in hooks:
                hook.remove()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        torch.testing.assert_close(loss, reference.detach(), rtol=self.bf16_loss_rtol, atol=0.0)
        assert sum(in_bf16) > len(in_bf16) / 2, f"only {sum(in_bf16)} of {len(in_bf16)} layers ran in bf16"

        loss.backward()
        parameters = dict(model.named_parameters())
        grads = {name: parameters[name].grad for name in with_grad}
        bad = [name for name, grad in grads.items() if grad is None or not grad.isfinite().all()]
        assert not bad, f"no gradient, or a non-finite one, under bf16 autocast: {bad[:5]}"
        torch.optim.SGD(model.parameters(), lr=self.learning_rate).step()
        assert all(p.dtype == torch.float32 and p.isfinite().all() for p in model.parameters())
