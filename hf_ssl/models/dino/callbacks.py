"""DINO's per-step schedules: the teacher temperature's warm-up and the prototypes frozen during the first epoch."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_ssl.distributed import unwrap_model


class DINOScheduleCallback(TrainerCallback):
    """Sets the model's teacher temperature before every optimizer step (from the run's epoch and step, so a resumed
    run continues the warm-up: :meth:`~hf_ssl.models.dino.modeling_dino.DINOForPreTraining.teacher_temperature_at`;
    the model returns it with its loss, so it is logged), and drops the prototypes' gradients before the optimizer
    step while fewer than ``freeze_last_layer_epochs`` epochs are done (Caron et al., 2021, appendix; lightly's
    ``cancel_last_layer_gradients``).
    """

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        model = unwrap_model(model)
        if model is not None and hasattr(model, "set_teacher_temperature"):
            model.set_teacher_temperature(model.teacher_temperature_at(state.epoch or 0.0, state.global_step))

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        model = unwrap_model(model)
        if model is not None and (state.epoch or 0.0) < model.config.freeze_last_layer_epochs:
            model.head.cancel_last_layer_gradients()
