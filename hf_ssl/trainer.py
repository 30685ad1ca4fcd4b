"""SSLTrainer: the transformers Trainer, plus logging of every loss component and a collapse signal."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from hf_ssl.errors import UsageError


class TrainingDiverged(UsageError):
    """The loss became non-finite; the message names the step."""


@dataclass
class SSLTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults that suit self-supervised pretraining.

    Contrastive losses want large batches and no ragged last batch; the collators need every column, so
    ``remove_unused_columns`` is off.
    """

    _argument_group_name = "training (transformers TrainingArguments)"

    per_device_train_batch_size: int = field(default=256, metadata={"help": "Batch size per device."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (a float < 1 is a ratio)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints to keep."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop the last incomplete batch."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all columns for the collator."})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Continue an interrupted run from this checkpoint folder, or 'true' for the newest checkpoint-* "
            "in output_dir; the result equals the uninterrupted run."
        },
    )
    debug: str = field(
        default="",
        metadata={"help": "A bare --debug shows the traceback of errors (also HF_SSL_DEBUG=1)."},
    )

    def __post_init__(self) -> None:
        # Launched on several processes (torchrun / accelerate launch) on a machine with no accelerator: without
        # use_cpu, transformers would not set up the (gloo) process group and each process would train alone.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            self.use_cpu = True
        if not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every DataLoader
        super().__post_init__()


class SSLTrainer(Trainer):
    """A thin ``Trainer``: the model computes its own loss; every scalar the model outputs besides ``loss`` (loss
    components, monitors such as ``embedding_std``, ``accuracy``) is summed on the device between logging steps
    and logged, averaged, with the loss and learning rate: one device sync per logging step, none per step.

    A non-finite loss stops training at once (:class:`TrainingDiverged`), naming the step, before its gradient
    reaches the weights, so no checkpoint is ever written with NaN weights.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            if not torch.isfinite(loss.detach()).all():
                raise TrainingDiverged(
                    f"training stopped at step {self.state.global_step + 1}: the loss is {loss.detach().float().item()}"
                    " (a learning rate or temperature too extreme for this data?); nothing was saved from this step"
                )
            for name, value in outputs.items():
                if name != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0:
                    value = value.detach().float()
                    self._sums[name] = self._sums[name] + value if name in self._sums else value
                    self._counts[name] += 1
        return (loss, outputs) if return_outputs else loss

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation reads every row: ``dataloader_drop_last`` (on for training batches) does not apply to it."""
        drop_last = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = drop_last

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums:  # a training log: attach the averages gathered since the last one
            names = list(self._sums)
            means = torch.stack([self._sums[name] / self._counts[name] for name in names]).tolist()  # one sync
            logs.update(zip(names, means, strict=True))
            self._sums.clear()
            self._counts.clear()
        super().log(logs, start_time)
