"""The checks every objective passes, run per objective as transformers' ``ModelTesterMixin`` does.

A test module subclasses :class:`ObjectiveChecks` as ``class TestXxxObjective(ObjectiveChecks)`` and says how to make
a tiny config and a batch of inputs (with every random input injected); pytest then runs each ``test_*`` here for it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

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


class ObjectiveChecks:
    """Shared checks; subclasses set :attr:`objective` and implement :meth:`tiny_config` and :meth:`batch`."""

    objective: Objective
    steps_to_learn: int = 8  # optimiser steps of the learning check
    learning_rate: float = 2e-3

    def tiny_config(self) -> Any:
        raise NotImplementedError

    def batch(self, config: Any) -> dict[str, torch.Tensor]:
        """Model inputs, with every random input (noise, masks, negatives) given explicitly."""
        raise NotImplementedError

    def _model(self, config: Any) -> torch.nn.Module:
        torch.manual_seed(0)
        return self.objective.model_class(config)

    def test_is_registered(self):
        assert OBJECTIVES[self.objective.name] is self.objective
        config = self.tiny_config()
        assert isinstance(config, self.objective.config_class)
        assert config.model_type.startswith("hf_ssl_")  # never collides with transformers' own keys

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
