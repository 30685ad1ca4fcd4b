"""SSLTrainer: the transformers Trainer, plus logging of every loss component and a collapse signal."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

RUN_INFO_FILE = "hf_ssl_run.json"  # what a pretraining run leaves beside its weights: data, arguments, log history


@dataclass
class SSLTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults that suit self-supervised pretraining.

    Contrastive losses want large batches and no ragged last batch; the collators need every column, so
    ``remove_unused_columns`` is off.
    """

    per_device_train_batch_size: int = field(default=256, metadata={"help": "Batch size per device."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "Weight decay."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps (a float < 1 is a ratio)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints to keep."})
    dataloader_drop_last: bool = field(default=True, metadata={"help": "Drop the last incomplete batch."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all columns for the collator."})

    def __post_init__(self) -> None:
        # Launched on several processes (torchrun / accelerate launch) on a machine with no accelerator: without
        # use_cpu, transformers would not set up the (gloo) process group and each process would train alone.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            self.use_cpu = True
        super().__post_init__()


def representation_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of L2-normalised embeddings ``(N, D)``.

    About ``1 / sqrt(D)`` for spread-out embeddings, near 0 when they collapse to one point
    (the collapse monitor of SimSiam, Chen & He 2021, sec. 4.1).
    """
    return F.normalize(embeddings.detach().float().flatten(0, -2), dim=-1).std(dim=0).mean()


class SSLTrainer(Trainer):
    """A thin ``Trainer``: the model computes its own loss; every scalar the model outputs besides ``loss``
    (loss components) and the std of its normalised ``projections`` (``embedding_std``) are averaged between
    logging steps and logged with the loss and learning rate."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._extra: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if model.training:
            for name, value in outputs.items():
                if name != "loss" and isinstance(value, torch.Tensor) and value.ndim == 0:
                    self._extra[name].append(value.detach().float().item())
            if outputs.get("projections") is not None:
                self._extra["embedding_std"].append(representation_std(outputs["projections"]).item())
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: attach the averages gathered since the last one
            logs.update({name: sum(v) / len(v) for name, v in self._extra.items() if v})
            self._extra.clear()
        super().log(logs, start_time)
