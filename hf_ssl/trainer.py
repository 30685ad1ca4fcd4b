"""SSLTrainer: the transformers Trainer, plus logging of every loss component and a collapse signal."""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from transformers import Trainer, TrainingArguments

from hf_ssl.data.collators import position_seed, seeded_rng
from hf_ssl.errors import UsageError

logger = logging.getLogger(__name__)


class TrainingDiverged(UsageError):
    """The loss became non-finite; the message names the step."""


def cpu_has_native_bf16() -> bool:
    """Whether torch's oneDNN computes bf16 fast on this CPU (its check: AVX-512 BW/VL/DQ, or Arm's bf16 extension);
    without it, bf16 autocast on the CPU is emulated and several times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


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
    health_steps: int | None = field(
        default=None,
        metadata={
            "help": "Log the representation's health (health/rankme, health/embedding_std, ...) and warn on collapse "
            "every N steps, on a small fixed batch; default every 5th logging step; 0 turns it off (hf_ssl.health)."
        },
    )
    health_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Examples of the fixed training batch the health checks measure (>= 2); default 64, or fewer "
            "when a step's batch per process is smaller (the check then costs no more than a training forward)."
        },
    )

    def __post_init__(self) -> None:
        if self.health_steps is not None and self.health_steps < 0:
            raise UsageError(f"--health_steps must be >= 0 (0 turns health checks off), got {self.health_steps}")
        if self.health_batch_size is not None and self.health_batch_size < 2:
            raise UsageError(
                f"--health_batch_size must be >= 2 (rank and spread need rows), got {self.health_batch_size}"
            )
        # Launched on several processes (torchrun / accelerate launch) on a machine with no accelerator: without
        # use_cpu, transformers would not set up the (gloo) process group and each process would train alone.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
            self.use_cpu = True
        if not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; torch warns on every DataLoader
        on_cpu = self.use_cpu or not torch.accelerator.is_available()
        if on_cpu and (self.fp16 or self.fp16_full_eval):
            flag = "--fp16" if self.fp16 else "--fp16_full_eval"
            raise UsageError(
                f"{flag} is for GPUs and this run is on the CPU: for mixed precision on a CPU use "
                f"{flag.replace('fp16', 'bf16')} (fp32's range, no loss scaling)"
            )
        if on_cpu and (self.bf16 or self.bf16_full_eval):
            # bf16 autocast on the CPU: transformers refuses bf16 without a bf16 GPU unless use_cpu is set
            self.use_cpu = True
            if not cpu_has_native_bf16():
                _warn_once(
                    "bf16 on this CPU, which has no native bf16 (AVX-512 or Arm bf16), is emulated and several times "
                    "slower than fp32: use it to check a bf16 run, and train on an accelerator or in fp32"
                )
        super().__post_init__()


class SSLTrainer(Trainer):
    """A thin ``Trainer``: the model computes its own loss; every scalar the model outputs besides ``loss`` (loss
    components, monitors such as ``accuracy``, ``codevector_perplexity``) is summed on the device between logging steps
    and logged, averaged, with the loss and learning rate: one device sync per logging step, none per step.

    A non-finite loss stops training at once (:class:`TrainingDiverged`), naming the step, before its gradient
    reaches the weights, so no checkpoint is ever written with NaN weights.

    Randomness is a function of the position in the run: micro-batch ``k`` on process ``r`` runs its forward pass
    (dropout, masks and noise drawn on the device, Gumbel noise) with the generators seeded by ``(seed, r, k)``, so a
    run resumed from a checkpoint draws exactly what the uninterrupted run drew, whatever the Trainer's own RNG
    checkpointing restores and wherever the DataLoader had prefetched to.

    One update, however the batch is split: a model whose loss is a mean over predicted items (masked tokens,
    patches, frames) sets ``accepts_loss_kwargs = True``, takes ``num_items_in_batch`` in ``forward`` and divides
    its summed loss by it; it may define ``num_items(batch)`` (the micro-batch's count, default: labels that are not
    -100) and ``draw_random_inputs(batch)`` (the draws that decide that count, e.g. span masks, made here before
    the step's first forward pass). The count is summed over the step's micro-batches and over processes
    (``average_tokens_across_devices``), so N processes x A accumulation steps x B examples give the update of one
    process with N*A*B examples.
    """

    def __init__(self, *args: Any, probe: Callable[[Any], dict[str, float]] | None = None, **kwargs: Any):
        """Args as for ``Trainer``, and ``probe``: ``model -> {name: value}`` metrics added to every evaluation
        (the online probe, :class:`~hf_ssl.evaluation.online_probe.OnlineProbe`); with it, step-wise evaluation
        needs no ``eval_dataset`` (pass ``args`` and ``eval_dataset`` by keyword)."""
        self.probe = probe
        self._probe_metrics: dict[str, float] | None = None  # set while an evaluation with the probe runs
        training_args = kwargs.get("args")
        strategy = None
        if probe is not None and training_args is not None and kwargs.get("eval_dataset") is None:
            strategy = training_args.eval_strategy  # the Trainer refuses to evaluate without an eval_dataset
            training_args.eval_strategy = "no"
        try:
            super().__init__(*args, **kwargs)
        finally:
            if strategy is not None:
                training_args.eval_strategy = strategy
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._micro_batch_seeds: list[int] = []

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        """The micro-batches of one optimisation step, with their seeds, their drawn random inputs, and the number
        of predicted items in all of them over all processes."""
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        first = self.state.global_step * self.args.gradient_accumulation_steps
        rank = self.args.process_index
        self._micro_batch_seeds = [
            position_seed(self.args.seed, rank, first + i, "forward") for i in range(len(batch_samples))
        ]
        draw = getattr(self.model, "draw_random_inputs", None)
        if draw is not None:
            for i, batch in enumerate(batch_samples):
                with seeded_rng(position_seed(self.args.seed, rank, first + i, "inputs"), self.args.device):
                    batch.update(draw(batch))
        return batch_samples, self._get_num_items_in_batch(batch_samples, device)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Any:
        count = getattr(self.model, "num_items", None)
        if count is None or not self.model_accepts_loss_kwargs or not batch_samples:
            return super()._get_num_items_in_batch(batch_samples, device)
        counts = [count(batch) for batch in batch_samples]
        if any(c is None for c in counts):
            return None
        total = torch.stack([torch.as_tensor(c, device=device) for c in counts]).sum()
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        seed = self._micro_batch_seeds.pop(0) if self._micro_batch_seeds else None
        with seeded_rng(seed, self.args.device):
            return super().training_step(model, inputs, num_items_in_batch)

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

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """The Trainer's evaluation of ``eval_dataset`` (if the run has one), with the probe's metrics added
        (``eval_probe_knn_accuracy``, ...): logged together, passed to ``on_evaluate`` and to the best-model
        bookkeeping (``--metric_for_best_model probe_knn_accuracy``).

        The probe runs on every process and the main process's values are broadcast, so that every process keeps
        the same best checkpoint.
        """
        if self.probe is None or self._probe_metrics is not None:  # no probe, or inside an evaluation that has it
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        shared = [self.probe(self.model)]
        if self.args.world_size > 1:
            broadcast_object_list(shared, from_process=0)
        self._probe_metrics = {f"{metric_key_prefix}_{name}": value for name, value in shared[0].items()}
        try:
            if eval_dataset is not None or self.eval_dataset is not None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)  # evaluation_loop adds them
            metrics = dict(self._probe_metrics)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics
        finally:
            self._probe_metrics = None

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        output = super().evaluation_loop(*args, **kwargs)
        if self._probe_metrics:  # once per evaluation, in the first dataset's metrics
            output.metrics.update(self._probe_metrics)
            self._probe_metrics = {}
        return output

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation reads every row: ``dataloader_drop_last`` (on for training batches) does not apply to it."""
        drop_last = self.args.dataloader_drop_last
        self.args.dataloader_drop_last = False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = drop_last

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs gain the model's scalars averaged since the last log and the values of callbacks that have
        a ``logged_values() -> {name: value}`` method (schedules such as a teacher's momentum), before the Trainer
        records them and hands them to the reporting integrations (TensorBoard, W&B: they log before other
        callbacks' ``on_log`` runs)."""
        if "loss" in logs:
            if self._sums:  # attach the averages gathered since the last training log
                names = list(self._sums)
                means = torch.stack([self._sums[name] / self._counts[name] for name in names]).tolist()  # one sync
                logs.update(zip(names, means, strict=True))
                self._sums.clear()
                self._counts.clear()
            for callback in self.callback_handler.callbacks:
                values = getattr(callback, "logged_values", None)
                if callable(values):
                    logs.update(values())
        super().log(logs, start_time)
