"""Training callbacks for wav2vec 2.0 pretraining: Gumbel temperature annealing and a codebook collapse monitor."""

from __future__ import annotations

import logging
import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)


def _unwrap(model: Any) -> Any:
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


def gumbel_temperature(step: int, max_temperature: float, min_temperature: float, decay: float) -> float:
    """``max(max_temperature * decay ** step, min_temperature)`` (Baevski et al., 2020, sec. 4.2: 2 -> 0.5 by a
    factor 0.999995 per update; transformers' ``run_wav2vec2_pretraining_no_trainer.py`` uses the same schedule)."""
    return max(max_temperature * decay**step, min_temperature)


class GumbelTemperatureCallback(TrainerCallback):
    """Sets the quantizer's Gumbel-softmax temperature before every optimiser step and logs it.

    Args:
        max_temperature: temperature at step 0; default the model config's ``max_gumbel_temperature``.
        min_temperature: floor; default ``min_gumbel_temperature``.
        decay: factor per step; default ``gumbel_temperature_decay``.
    """

    def __init__(
        self,
        max_temperature: float | None = None,
        min_temperature: float | None = None,
        decay: float | None = None,
    ):
        self.max_temperature = max_temperature
        self.min_temperature = min_temperature
        self.decay = decay
        self.current: float | None = None

    def value(self, step: int, config: Any = None) -> float:
        """The temperature at ``step`` (arguments given to the callback win over ``config``'s)."""
        pick = lambda own, name: own if own is not None else getattr(config, name)  # noqa: E731
        return gumbel_temperature(
            step,
            pick(self.max_temperature, "max_gumbel_temperature"),
            pick(self.min_temperature, "min_gumbel_temperature"),
            pick(self.decay, "gumbel_temperature_decay"),
        )

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        model = _unwrap(model)
        if model is None or not hasattr(model, "set_gumbel_temperature"):
            return
        self.current = self.value(state.global_step, model.config)
        model.set_gumbel_temperature(self.current)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict | None = None, **kw: Any
    ) -> None:
        if logs is not None and self.current is not None and "loss" in logs:
            logs["gumbel_temperature"] = self.current


class Wav2VecCollapseMonitor(TrainerCallback):
    """Warns when wav2vec pretraining collapses.

    Two signs, read from the logged averages (``SSLTrainer`` logs every scalar the model returns):

    * codebook collapse: ``codevector_perplexity`` near its floor ``G`` (each group using one entry), i.e. below
      ``perplexity_floor_factor * G``, while its ceiling is ``G * V``;
    * a trivial task: ``contrastive_loss`` (or ``loss``) near 0, e.g. distractors identical to the positives.

    Args:
        num_codevector_groups: ``G``; default from the model's config at train start.
        perplexity_floor_factor: warn below this multiple of the floor.
        loss_epsilon: warn when the contrastive loss is below this.
    """

    def __init__(
        self,
        num_codevector_groups: int | None = None,
        perplexity_floor_factor: float = 2.0,
        loss_epsilon: float = 1e-3,
    ):
        self.num_groups = num_codevector_groups
        self.perplexity_floor_factor = perplexity_floor_factor
        self.loss_epsilon = loss_epsilon
        self.warnings: list[str] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kw: Any
    ) -> None:
        model = _unwrap(model)
        if self.num_groups is None and model is not None:
            self.num_groups = getattr(model.config, "num_codevector_groups", None)

    def check(self, logs: dict[str, float], step: int = 0) -> list[str]:
        """The warnings that ``logs`` call for (also logged and kept in ``self.warnings``)."""
        found = []
        perplexity = logs.get("codevector_perplexity")
        if perplexity is not None and self.num_groups:
            floor = float(self.num_groups)
            if perplexity < self.perplexity_floor_factor * floor:
                found.append(
                    f"step {step}: codebook collapse: codevector_perplexity {perplexity:.3g} is near its floor "
                    f"{floor:g} (one entry per group). Raise diversity_loss_weight or max_gumbel_temperature."
                )
        loss = logs.get("contrastive_loss", logs.get("loss"))
        if loss is not None and math.isfinite(loss) and loss < self.loss_epsilon:
            found.append(
                f"step {step}: the contrastive loss is {loss:.3g}, about 0: the task became trivial (collapsed "
                "targets or too few distinct distractors). Check mask_time_prob and num_negatives."
            )
        for message in found:
            logger.warning(message)
        self.warnings.extend(found)
        return found

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict | None = None, **kw: Any
    ) -> None:
        if logs:
            self.check(logs, state.global_step)
