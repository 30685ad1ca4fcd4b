"""Trainer callbacks shared by every objective: the run record beside the weights, reproducible data randomness.

:class:`RunInfo` is what a pretraining run leaves in ``hf_ssl_run.json`` (data source, arguments, steps run, log
history); the exporter reads it back for the model card. One dataclass writes and reads it, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

RUN_INFO_FILE = "hf_ssl_run.json"

# the TrainingArguments a run record keeps (what the model card and a reader need to repeat the run)
_RECORDED_ARGS = (
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
)


@dataclass
class RunInfo:
    """The record of one pretraining run, saved as ``hf_ssl_run.json`` beside its weights.

    Args:
        objective: the objective's CLI name (``"simclr"``).
        hf_ssl_version: the package version that trained it.
        dataset_name: what the user passed (``None``: the objective's embedded default).
        dataset_source: where the data actually came from (a resolved local path, a Hub id, a cache, or the
            embedded default), as logged at the start of the run.
        dataset_config_name: the Hub dataset's configuration.
        train_split: the split (and slice) trained on.
        columns: the columns the objective read, by role (``{"image": "img"}``).
        num_examples: rows trained on (``None`` when streaming).
        num_skipped: rows dropped as unusable (``--on_bad_* skip``).
        modality: ``"image"``, ``"text"`` or ``"audio"``.
        global_step: optimisation steps actually run.
        world_size: number of processes.
        training_args: the main training arguments (see ``_RECORDED_ARGS``), with ``optim`` as its value.
        train_metrics: the final training metrics (runtime, samples per second, mean loss).
        log_history: every log entry of the run.
        warnings: the run's collapse / no-progress warnings, one line each (:mod:`hf_ssl.health`).
    """

    objective: str
    hf_ssl_version: str
    dataset_name: str | None = None
    dataset_source: str | None = None
    dataset_config_name: str | None = None
    train_split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    num_examples: int | None = None
    num_skipped: int = 0
    modality: str | None = None
    global_step: int = 0
    world_size: int = 1
    training_args: dict[str, Any] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def record_training(self, args: TrainingArguments, state: TrainerState) -> None:
        """Fill in the arguments, steps run, metrics and log history from a Trainer's ``args`` and ``state``."""
        self.training_args = {key: getattr(args, key) for key in _RECORDED_ARGS}
        self.training_args["optim"] = getattr(args.optim, "value", str(args.optim))
        self.world_size = args.world_size
        self.global_step = state.global_step
        self.log_history = list(state.log_history)
        final = [entry for entry in state.log_history if "train_runtime" in entry]
        self.train_metrics = dict(final[-1]) if final else {}

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / RUN_INFO_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> RunInfo | None:
        """The record in ``directory``, or ``None`` when it has none. Unknown keys (a newer version's) are ignored."""
        path = Path(directory) / RUN_INFO_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


class RunInfoCallback(TrainerCallback):
    """Writes the run record into every checkpoint and, at the end of training, into ``output_dir`` (main process)."""

    def __init__(self, run_info: RunInfo):
        self.run_info = run_info

    def _write(self, args: TrainingArguments, state: TrainerState, directory: str) -> None:
        if state.is_world_process_zero:
            self.run_info.record_training(args, state)
            os.makedirs(directory, exist_ok=True)
            self.run_info.save(directory)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._write(args, state, os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._write(args, state, args.output_dir)


class BatchRandomnessCallback(TrainerCallback):
    """Tells a collator with per-batch seeds (:class:`~hf_ssl.data.collators.SeededCollator`) how many batches
    the run has already consumed, so a resumed run draws the same augmentations and masks as an uninterrupted one.

    The Trainer restores its RNG state only after fetching the first batch of a resumed epoch (and DataLoaders
    prefetch), so randomness drawn from the global generator inside a collator cannot be restored; seeding each
    batch from ``(seed, rank, batch index)`` makes it a function of the position in the run instead.
    """

    def __init__(self, collator: Any):
        self.collator = collator

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.collator.set_position(
            seed=args.seed,
            rank=args.process_index,
            batches_done=state.global_step * args.gradient_accumulation_steps,
        )
