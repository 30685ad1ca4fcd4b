"""Representation health while a run trains: the metrics, the collapse rules and :class:`HealthCallback`.

Every ``--health_steps`` optimisation steps the callback runs the model once, without gradients, on a small batch
drawn once at the start of training (``--health_batch_size`` rows of the training set, chosen and collated with a
fixed seed), and logs through ``trainer.log`` (so every ``report_to`` backend, ``state.log_history`` and the run record
see them):

* ``health/rankme``: effective rank of the embeddings (Garrido et al., 2023, "RankMe", arXiv:2210.02885);
* ``health/embedding_std``: std over the batch of the L2-normalised embeddings, averaged over dimensions (about
  ``1 / sqrt(D)`` when spread out, 0 on collapse; SimSiam, Chen & He 2021, sec. 4.1);
* ``health/uniformity`` of the embeddings, and ``health/alignment`` when the model gives two views of each example
  (Wang & Isola, 2020, arXiv:2005.10242);
* ``health/loss``, the objective's loss on the fixed batch, and the model's own scalars (``health/<name>``).

What each objective is judged on comes from its model: a ``...ForPreTraining`` may define ``health(batch) ->``
:class:`HealthOutput` (called in eval mode, under ``torch.no_grad`` and a seeded RNG, with the fixed batch on the
model's device). A model without it is judged on the loss of its own ``forward`` only.

Each kind of warning is written once per run (a resumed run recomputes what was warned from the restored log
history), to the log and to the run record (``RunInfo.warnings``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_ssl.data.collators import position_seed, seeded_rng
from hf_ssl.distributed import unwrap_model

logger = logging.getLogger(__name__)

PREFIX = "health/"
DEFAULT_BATCH_SIZE = 64
DEFAULT_EVERY_LOGS = 5  # without --health_steps: every 5th logging step (a check costs about two training steps)
RANKME_EPSILON = 1e-7  # the epsilon of RankMe's p_k (Garrido et al., 2023)


@dataclass
class HealthOutput:
    """What a model's ``health(batch)`` returns: the embeddings to judge and its own measures.

    Args:
        embeddings: ``(N, D)`` what a user keeps from the model for the ``N`` examples of the batch (pooled backbone
            features), on which the rank and spread are measured.
        positives: ``(N, D)`` another view of the same ``N`` examples (augmentations, dropout), or ``None``: gives
            the alignment of the pairs.
        loss: the objective's task loss on the batch (scalar), or ``None``: checked for zero and for no progress.
        scalars: the objective's own measures (``{"masked_accuracy": 0.3}``), logged as ``health/<name>``.
        floors: ``{name: value}``: the value of a scalar that means collapse (e.g. a codebook perplexity equal to
            the number of codebook groups); the run is warned when the scalar falls below ``floor_factor`` times it.
        advice: ``{check: what to try}`` for this objective, for the checks ``rank``, ``std``, ``collapse``,
            ``loss_zero``, ``stalled`` and the names in ``floors``; a generic hint is used otherwise.
        isotropic: the loss spreads these embeddings over the sphere (contrastive objectives), so their std is
            judged against ``1 / sqrt(D)``. ``False`` where features are anisotropic by nature (masked prediction:
            a transformer's mean-pooled states share one dominant direction, Ethayarajh 2019): the std is then
            judged against its own first value.
    """

    embeddings: torch.Tensor | None = None
    positives: torch.Tensor | None = None
    loss: torch.Tensor | float | None = None
    scalars: dict[str, torch.Tensor | float] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)
    advice: dict[str, str] = field(default_factory=dict)
    isotropic: bool = True


# ------------------------------------------------------------------------------------------------------- metrics


@torch.no_grad()
def rankme(embeddings: torch.Tensor, epsilon: float = RANKME_EPSILON) -> float:
    """RankMe, the effective rank of ``embeddings (N, D)`` (Garrido et al., 2023, eq. 1).

    ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + epsilon``, ``sigma`` the singular values; between
    about 1 (every row on one line) and ``min(N, D)``. An all-zero matrix has no rank: 0.
    """
    singular = torch.linalg.svdvals(embeddings.detach().double().cpu())
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total + epsilon
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def representation_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of L2-normalised embeddings ``(..., D)`` (a monitor, no gradient).

    About ``1 / sqrt(D)`` for spread-out embeddings, near 0 when they collapse to one point
    (the collapse monitor of SimSiam, Chen & He 2021, sec. 4.1).
    """
    return torch.nn.functional.normalize(embeddings.float().flatten(0, -2), dim=-1).std(dim=0).mean()


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Alignment of positive pairs (Wang & Isola, 2020, "Understanding Contrastive Representation Learning through
    Alignment and Uniformity on the Hypersphere", arXiv:2005.10242): ``E ||f(x) - f(y)||_2^alpha`` over L2-normalised
    pairs; lower is better (0: positives coincide).

    Args:
        x: ``(N, D)`` embeddings; ``y``: ``(N, D)`` their positives.
        alpha: the exponent (2 in the paper).
    """
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Uniformity (Wang & Isola, 2020): ``log E exp(-t ||f(x) - f(y)||_2^2)`` over all pairs of distinct rows of
    L2-normalised ``x (N, D)``, N >= 2; lower is more uniform on the hypersphere (collapse gives 0)."""
    x = F.normalize(x.float(), dim=-1)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def stopped_learning(losses: Sequence[float], window: int, min_improvement: float = 0.0) -> bool:
    """Whether a loss series has stopped improving.

    True when there are at least ``2 * window`` values and the median of the last ``window`` is not below the median
    of the ``window`` before them by more than ``min_improvement`` (relative to that median's size): a plateau or a
    rise. Medians make one noisy value (a spike or a lucky dip) change nothing.

    Args:
        losses: the loss at each health check, oldest first.
        window: checks per window.
        min_improvement: the relative drop that counts as progress (0: any drop).
    """
    if window < 1 or len(losses) < 2 * window:
        return False
    recent = statistics.median(losses[-window:])
    before = statistics.median(losses[-2 * window : -window])
    return not recent < before - min_improvement * abs(before)


def _scalar(value: Any) -> float:
    return float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)


def measure(output: HealthOutput) -> dict[str, float]:
    """The logged values (``health/...``) of one :class:`HealthOutput`."""
    metrics: dict[str, float] = {}
    if output.embeddings is not None:
        embeddings = output.embeddings.detach().float().flatten(1)
        metrics["rankme"] = rankme(embeddings)
        metrics["embedding_std"] = _scalar(representation_std(embeddings))
        if output.positives is not None:
            metrics["alignment"] = _scalar(alignment(embeddings, output.positives.detach().float().flatten(1)))
        if embeddings.shape[0] >= 2:
            metrics["uniformity"] = _scalar(uniformity(embeddings))
    if output.loss is not None:
        metrics["loss"] = _scalar(output.loss)
    metrics.update({name: _scalar(value) for name, value in output.scalars.items()})
    return {PREFIX + name: value for name, value in metrics.items()}


# ------------------------------------------------------------------------------------------------------- rules


@dataclass
class HealthRules:
    """When a run is warned (each kind once).

    Args:
        min_rank: RankMe below this (about 1: every embedding on one line) is collapse.
        rank_fraction: so is RankMe below this fraction of its first value.
        std_fraction: ``embedding_std`` below this fraction of ``1 / sqrt(D)`` is collapse (of its first value,
            for embeddings that are not :attr:`HealthOutput.isotropic`).
        floor_factor: a scalar with a floor (:attr:`HealthOutput.floors`) below this multiple of it is collapse.
        loss_epsilon: a loss below this is "at zero" (a trivial task).
        collapse_epsilon: alignment below it together with uniformity above ``-collapse_epsilon`` (both 0: every
            embedding the same point) is collapse.
        patience: checks per window of the "stops learning" rule (:func:`stopped_learning`; 0 turns it off).
        min_improvement: relative drop of the median loss between two windows that counts as learning.
    """

    min_rank: float = 1.5
    rank_fraction: float = 0.05
    std_fraction: float = 0.1
    floor_factor: float = 2.0
    loss_epsilon: float = 1e-3
    collapse_epsilon: float = 1e-2
    patience: int = 10
    min_improvement: float = 1e-3

    def __post_init__(self) -> None:
        thresholds = ("min_rank", "rank_fraction", "std_fraction", "floor_factor", "loss_epsilon", "collapse_epsilon")
        for name in (*thresholds, "min_improvement"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"HealthRules.{name} must be >= 0, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"HealthRules.patience must be >= 0, got {self.patience}")


_GENERIC_ADVICE = {  # each follows "try: "
    "rank": "a lower learning rate, a longer warm-up, or stronger augmentations/masking",
    "std": "a lower learning rate, a longer warm-up, or stronger augmentations/masking",
    "collapse": "a lower learning rate, a higher loss temperature, or checking that the two views differ",
    "loss_zero": "harder masking/augmentations, and checking that the inputs are not duplicates (the task is trivial)",
    "stalled": "another learning rate or a longer warm-up, or stopping the run here",
}


def check_health(
    latest: dict[str, float],
    rules: HealthRules,
    first_rank: float | None = None,
    losses: Sequence[float] = (),
    dim: int | None = None,
    floors: dict[str, float] | None = None,
    advice: dict[str, str] | None = None,
    first_std: float | None = None,
) -> dict[str, str]:
    """The warnings that one health entry calls for, by kind: ``{kind: one-line message}``.

    Args:
        latest: a log entry with ``health/...`` values and its ``step``.
        rules: the thresholds.
        first_rank: the run's first ``health/rankme`` (``None``: this entry's).
        losses: the run's ``health/loss`` values so far, this entry's last (the "stops learning" rule reads them).
        dim: the embedding size ``D`` of isotropic embeddings (the std rule compares with ``1 / sqrt(D)``).
        floors: collapse floors of the model's scalars (:attr:`HealthOutput.floors`).
        advice: the model's hints, by check (:attr:`HealthOutput.advice`).
        first_std: the run's first ``health/embedding_std``, the reference of embeddings that are not isotropic
            (used when ``dim`` is ``None``).
    """
    step = latest.get("step", 0)
    hint = {**_GENERIC_ADVICE, **(advice or {})}
    found: dict[str, str] = {}

    def warn(kind: str, what: str) -> None:
        found[kind] = f"health: step {step}: {what}; try: {hint.get(kind, 'checking the run settings')}"

    rank = latest.get(PREFIX + "rankme")
    if rank is not None:
        first = rank if first_rank is None else first_rank
        if rank < rules.min_rank or rank < rules.rank_fraction * first:
            warn("rank", f"health/rankme is {rank:.3g} (first {first:.3g}): the embeddings are collapsing")
    std = latest.get(PREFIX + "embedding_std")
    if std is not None and dim and std < rules.std_fraction / math.sqrt(dim):
        warn(
            "std", f"health/embedding_std is {std:.3g} (1/sqrt(D) = {1 / math.sqrt(dim):.3g}): the embeddings collapse"
        )
    elif std is not None and not dim and first_std and std < rules.std_fraction * first_std:
        warn("std", f"health/embedding_std is {std:.3g} (first {first_std:.3g}): the embeddings collapse")
    align, uniform = latest.get(PREFIX + "alignment"), latest.get(PREFIX + "uniformity")
    if align is not None and uniform is not None:
        if align < rules.collapse_epsilon and uniform > -rules.collapse_epsilon:
            warn("collapse", f"health/alignment is {align:.3g} and health/uniformity {uniform:.3g}: all one point")
    for name, floor in (floors or {}).items():
        value = latest.get(PREFIX + name)
        if value is not None and value < rules.floor_factor * floor:
            warn(name, f"health/{name} is {value:.3g}, near its floor {floor:g}: collapse")
    loss = latest.get(PREFIX + "loss")
    if loss is not None and math.isfinite(loss) and abs(loss) < rules.loss_epsilon:
        warn("loss_zero", f"health/loss is {loss:.3g}, about 0")
    window = rules.patience
    if window and stopped_learning(losses, window, rules.min_improvement):
        recent, before = statistics.median(losses[-window:]), statistics.median(losses[-2 * window : -window])
        warn(
            "stalled",
            f"health/loss has stopped improving (median {recent:.4g} over the last {window} checks, "
            f"{before:.4g} over the {window} before)",
        )
    return found


# ------------------------------------------------------------------------------------------------------- callback


class HealthCallback(TrainerCallback):
    """Logs the health of the representation every ``args.health_steps`` steps and warns once per kind on collapse.

    Runs identically on every process (same batch, same seed, no collective call), so each process's log history
    holds the same values; only the main process writes the warnings to the log. Training is untouched: the check
    runs under ``torch.no_grad``, in eval mode (restored after), with the CPU and device generators forked and seeded.
    Nothing needs saving for a resume: the fixed batch is drawn again from the same seed, and the first RankMe, the
    loss series and what was already warned are read back from the restored log history.

    Args:
        trainer: the ``Trainer`` (its ``log``, training dataset and collator are used).
        run_info: the run record whose ``warnings`` the callback keeps up to date (``None``: none).
        rules: the warning thresholds.
    """

    def __init__(self, trainer: Any, run_info: Any = None, rules: HealthRules | None = None):
        self.trainer = trainer
        self.run_info = run_info
        self.rules = rules or HealthRules()
        self.batch: dict[str, Any] | None = None
        self.every = 0
        self.warnings: dict[str, str] = {}
        self._reset()

    def _reset(self) -> None:
        self.warnings = {}
        self.first_rank: float | None = None
        self.first_std: float | None = None
        self.losses: list[float] = []
        self.dim: int | None = None
        self.floors: dict[str, float] = {}
        self.advice: dict[str, str] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kw: Any
    ) -> None:
        every = getattr(args, "health_steps", None)
        self.every = DEFAULT_EVERY_LOGS * int(state.logging_steps or 0) if every is None else int(every)
        self.batch = None
        self._reset()
        if self.every <= 0:
            return
        self.batch = self.fixed_batch(args)
        history = [entry for entry in state.log_history if any(key.startswith(PREFIX) for key in entry)]
        if self.batch is None or not history:
            return
        self.measure(unwrap_model(model), args)  # a resumed run: the model's floors and advice, then what was warned
        for entry in history:
            self._check(entry, quiet=True)

    def fixed_batch(self, args: TrainingArguments) -> dict[str, Any] | None:
        """``health_batch_size`` rows of the training set (chosen with a fixed seed; the first ones of a streamed
        set), collated by a copy of the run's collator under a fixed seed: the same batch on every process and after
        every resume, and the run's own collator and generators untouched. ``None`` with fewer than 2 rows."""
        dataset, collator = self.trainer.train_dataset, self.trainer.data_collator
        size = getattr(args, "health_batch_size", None)
        if size is None:  # 64, or a step's batch per process when smaller
            steps = getattr(args, "gradient_accumulation_steps", 1)
            size = min(DEFAULT_BATCH_SIZE, getattr(args, "per_device_train_batch_size", DEFAULT_BATCH_SIZE) * steps)
        seed = position_seed(args.seed, "health")
        if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
            indices = sorted(random.Random(seed).sample(range(len(dataset)), min(size, len(dataset))))
            rows = [dataset[i] for i in indices]
        else:  # streamed: the first rows, no pass over the data
            rows = [row for _, row in zip(range(size), iter(dataset), strict=False)]
        if len(rows) < 2:
            return None
        collator = copy.copy(collator)
        if hasattr(collator, "set_position"):  # a SeededCollator: its own position, never the run's
            collator.set_position(seed=seed, rank=0, batches_done=0)
        with seeded_rng(seed, torch.device("cpu")):
            return collator(rows)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kw: Any
    ) -> None:
        if self.batch is None or state.global_step % self.every:
            return
        metrics = self.measure(unwrap_model(model), args)
        if not metrics:
            return
        should_log = control.should_log  # the Trainer's on_log clears it: the step's own loss log must still come
        self.trainer.log(dict(metrics))
        control.should_log = should_log
        self._check({**metrics, "step": state.global_step}, quiet=not state.is_world_process_zero)

    def _check(self, entry: dict[str, float], quiet: bool) -> None:
        if PREFIX + "rankme" in entry and self.first_rank is None:
            self.first_rank = entry[PREFIX + "rankme"]
        if PREFIX + "embedding_std" in entry and self.first_std is None:
            self.first_std = entry[PREFIX + "embedding_std"]
        if PREFIX + "loss" in entry:
            self.losses = [*self.losses, entry[PREFIX + "loss"]][-2 * max(self.rules.patience, 1) :]
        found = check_health(
            entry, self.rules, self.first_rank, self.losses, self.dim, self.floors, self.advice, self.first_std
        )
        for kind, message in found.items():
            if kind not in self.warnings:
                self.warnings[kind] = message
                if not quiet:
                    logger.warning(message)
        if self.run_info is not None:
            self.run_info.warnings = self.messages

    def measure(self, model: Any, args: TrainingArguments) -> dict[str, float]:
        """The health values of ``model`` on the fixed batch (``{}`` when it gives nothing to judge)."""
        device = next(model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}
        training = model.training
        model.eval()
        try:
            with torch.no_grad(), seeded_rng(position_seed(args.seed, "health", "forward"), device):
                if hasattr(model, "health"):
                    output = model.health(batch)
                else:  # a model without the hook: its loss only
                    output = HealthOutput(loss=getattr(model(**batch), "loss", None))
        finally:
            model.train(training)
        self.floors, self.advice = dict(output.floors), dict(output.advice)
        if output.embeddings is not None:  # isotropic embeddings: the std is judged against 1 / sqrt(D)
            self.dim = int(output.embeddings.flatten(1).shape[1]) if output.isotropic else None
        return measure(output)

    @property
    def messages(self) -> list[str]:
        """The warnings of the run so far, oldest first."""
        return list(self.warnings.values())
