"""DINO's per-step schedules: the teacher temperature's warm-up, the prototypes frozen during the first epoch, and
the center's one update per optimizer step."""

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

    It also makes the center take one EMA step per optimizer step: from the start of training the model's forwards
    accumulate the teacher outputs (every micro-batch of a step reads the center as at the step's start), and
    ``on_step_end`` applies them in one update, on every process (see
    :class:`~hf_ssl.models.dino.loss.DINOLoss`); at the end of training the model goes back to updating the center
    after each training forward.
    """

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        model = unwrap_model(model)
        if model is not None and hasattr(model, "defer_center_updates"):
            model.defer_center_updates(True)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        model = unwrap_model(model)
        if model is not None and hasattr(model, "apply_center_update"):
            model.apply_center_update()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        model = unwrap_model(model)
        if model is not None and hasattr(model, "defer_center_updates"):
            model.defer_center_updates(False)

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
