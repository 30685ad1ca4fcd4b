"""Training callbacks for wav2vec 2.0 pretraining: Gumbel temperature annealing.

Codebook collapse and a trivial contrastive task are warned by the shared health monitor (:mod:`hf_ssl.health`, from
:meth:`~hf_ssl.models.wav2vec.modeling_wav2vec.Wav2VecForPreTraining.health`).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_ssl.distributed import unwrap_model


def gumbel_temperature(step: int, max_temperature: float, min_temperature: float, decay: float) -> float:
    """``max(max_temperature * decay ** step, min_temperature)`` (Baevski et al., 2020, sec. 4.2: 2 -> 0.5 by a
    factor 0.999995 per update; transformers' ``run_wav2vec2_pretraining_no_trainer.py`` uses the same schedule)."""
    return max(max_temperature * decay**step, min_temperature)


class GumbelTemperatureCallback(TrainerCallback):
    """Sets the quantizer's Gumbel-softmax temperature before every optimiser step (the model returns it with its
    loss, so it is logged with the other scalars).

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
        model = unwrap_model(model)
        if model is None or not hasattr(model, "set_gumbel_temperature"):
            return
        self.current = self.value(state.global_step, model.config)
        model.set_gumbel_temperature(self.current)
