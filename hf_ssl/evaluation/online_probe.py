"""The online probe: kNN (and optionally linear-probe) accuracy of the frozen features of the model being trained, on
a small labelled set of its data kind, every ``--probe_steps`` steps.

The probe is an evaluation of the ``Trainer``: ``hf-ssl pretrain ... --probe_dataset_name D`` turns on step-wise
evaluation and :meth:`hf_ssl.trainer.SSLTrainer.evaluate` adds the probe's metrics (``eval_probe_knn_accuracy``,
``eval_probe_linear_accuracy``) to whatever the objective evaluates, so they are logged beside the loss and
``--metric_for_best_model probe_knn_accuracy`` keeps the best checkpoint with the Trainer's own bookkeeping.

The features are those ``hf-ssl evaluate`` reads from a saved checkpoint: the objective's
:class:`~hf_ssl.evaluation.features.FeatureSpec` pooling applied to the backbone (``base_model``, what ``AutoModel``
loads) inside the ``...ForPreTraining`` model, with the evaluation task's preprocessing made from the run's own
processing class. The labelled rows are loaded, checked and capped once, before training starts.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel

from hf_ssl.data import find_column, find_label_column, load_data
from hf_ssl.data.collators import preserved_rng
from hf_ssl.errors import UsageError, check_range
from hf_ssl.evaluation.features import FeatureSpec, extract_feature_sets, last_layer, model_encoder
from hf_ssl.evaluation.knn import knn_accuracy
from hf_ssl.evaluation.linear_probe import linear_probe_accuracy
from hf_ssl.evaluation.tasks import ClassificationTask, FeatureCollator, get_task
from hf_ssl.evaluation.tasks.classification import LINEAR_PROBE_WEIGHT_DECAY, encode_labels

logger = logging.getLogger(__name__)

KNN_METRIC = "probe_knn_accuracy"
LINEAR_METRIC = "probe_linear_accuracy"
SUBSET_SEED = 0
"""Seed of the fixed random subset of a split longer than its cap (its own generator: no global RNG is drawn)."""


@dataclass
class ProbeArguments:
    """The flags of the online probe (``hf-ssl pretrain``)."""

    _argument_group_name = "online probe (kNN / linear probe of the frozen features while training)"

    probe_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A labelled dataset of the objective's data kind (as --dataset_name: embedded name such as "
            "digit-scenes or pydoc-topics-classification, folder, file or Hub id): probe the features on it every "
            "--probe_steps steps, logged as eval_probe_knn_accuracy (usable as --metric_for_best_model "
            "probe_knn_accuracy). Empty: no probe."
        },
    )
    probe_dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    probe_train_split: str = field(
        default="train", metadata={"help": "Split of the kNN bank and the linear probe fit."}
    )
    probe_split: str = field(default="test", metadata={"help": "Split the probe accuracy is measured on."})
    probe_input_column: str | None = field(
        default=None, metadata={"help": "Column of the images / texts / clips (detected if not given)."}
    )
    probe_label_column: str | None = field(default=None, metadata={"help": "Label column (detected if not given)."})
    probe_steps: int | None = field(
        default=None,
        metadata={
            "help": "Probe every N optimisation steps (sets --eval_steps); default: --eval_steps if given, else "
            "--logging_steps."
        },
    )
    probe_max_train_examples: int = field(
        default=2000,
        metadata={"help": "Rows of --probe_train_split used at most (a fixed random subset of a longer split)."},
    )
    probe_max_eval_examples: int = field(
        default=1000,
        metadata={"help": "Rows of --probe_split used at most (a fixed random subset of a longer split)."},
    )
    probe_knn_k: int = field(default=20, metadata={"help": "Neighbours in the kNN vote."})
    probe_knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the kNN vote weights."})
    probe_linear: bool = field(
        default=False, metadata={"help": "Also fit a linear probe each time (eval_probe_linear_accuracy)."}
    )
    probe_linear_max_iter: int = field(default=100, metadata={"help": "L-BFGS iterations of the linear probe."})
    probe_batch_size: int = field(default=256, metadata={"help": "Feature-extraction batch size of the probe."})

    def __post_init__(self) -> None:
        if isinstance(self.probe_dataset_name, list | tuple):  # several sources, as --dataset_name takes them
            self.probe_dataset_name = ",".join(self.probe_dataset_name)
        if not self.probe_dataset_name:
            self.probe_dataset_name = None
            if self.probe_steps is not None or self.probe_linear:
                flag = "--probe_steps" if self.probe_steps is not None else "--probe_linear"
                raise UsageError(f"{flag} needs --probe_dataset_name (the labelled set to probe on)")
        if self.probe_steps is not None:
            check_range("--probe_steps", self.probe_steps, 1)
        check_range("--probe_max_train_examples", self.probe_max_train_examples, 2)
        check_range("--probe_max_eval_examples", self.probe_max_eval_examples, 1)
        check_range("--probe_knn_k", self.probe_knn_k, 1)
        check_range("--probe_knn_temperature", self.probe_knn_temperature, 0, low_inclusive=False)
        check_range("--probe_linear_max_iter", self.probe_linear_max_iter, 1)
        check_range("--probe_batch_size", self.probe_batch_size, 1)

    @property
    def enabled(self) -> bool:
        return self.probe_dataset_name is not None


def evaluation_schedule(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``TrainingArguments`` values the probe implies, from the parsed flag values (before the arguments are
    built, so that the Trainer's own checks of ``--load_best_model_at_end`` see them): step-wise evaluation every
    ``probe_steps`` unless the user chose an evaluation strategy or steps.

    Args:
        values: the flags as parsed (``probe_dataset_name``, ``probe_steps``, ``probe_linear``, ``eval_strategy``,
            ``eval_steps``, ``metric_for_best_model``).

    Returns:
        ``{flag name: value}`` to set (empty without a probe).

    Raises:
        UsageError: ``--probe_steps`` and a different ``--eval_steps``, or a probe metric as
            ``--metric_for_best_model`` that the probe will not log.
    """
    metric = str(values.get("metric_for_best_model") or "").removeprefix("eval_")
    logged = {KNN_METRIC, LINEAR_METRIC} if values.get("probe_linear") else {KNN_METRIC}
    if metric.startswith("probe_") and (not values.get("probe_dataset_name") or metric not in logged):
        needs = "--probe_linear" if metric == LINEAR_METRIC else "--probe_dataset_name"
        raise UsageError(
            f"--metric_for_best_model {metric}: no such metric is logged without {needs} (the probe logs "
            f"{', '.join(sorted(logged))})"
        )
    if not values.get("probe_dataset_name"):
        return {}
    implied: dict[str, Any] = {}
    strategy = values.get("eval_strategy")
    if str(getattr(strategy, "value", strategy) or "no") == "no":  # the probe is the evaluation
        implied["eval_strategy"] = "steps"
    probe_steps, eval_steps = values.get("probe_steps"), values.get("eval_steps")
    if probe_steps is not None:
        if eval_steps is not None and float(eval_steps) != probe_steps:
            raise UsageError(
                f"--probe_steps {probe_steps} and --eval_steps {float(eval_steps):g} disagree: the probe runs at each "
                "evaluation; give one of them"
            )
        implied["eval_steps"] = probe_steps
    return implied


def backbone_of(model: PreTrainedModel) -> torch.nn.Module:
    """The backbone inside a ``...ForPreTraining`` model: its ``base_model`` (the module under
    ``base_model_prefix``), the model ``AutoModel`` loads from its checkpoint and ``hf-ssl evaluate`` reads.

    Raises:
        UsageError: the model has no distinct base model.
    """
    backbone = getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        raise UsageError(
            f"--probe_dataset_name: {type(model).__name__} has no backbone under base_model_prefix "
            f"({getattr(model, 'base_model_prefix', '')!r}) whose features the probe could read"
        )
    return backbone


def _flagged(error: UsageError, flag: str) -> UsageError:
    """``error`` with the probe's flag names, prefixed by ``flag`` unless it names a probe flag already."""
    message = str(error)
    for name in ("dataset_name", "label_column", "input_column"):
        message = message.replace(f"--{name}", f"--probe_{name}")
    if "--probe_" not in message:
        message = f"{flag}: {message}"
    return UsageError(message)


def _subset(ds: Dataset, limit: int) -> Dataset:
    """At most ``limit`` rows: a fixed random subset (seeded by :data:`SUBSET_SEED`) in the split's order."""
    if len(ds) <= limit:
        return ds
    rows = np.random.default_rng(SUBSET_SEED).choice(len(ds), size=limit, replace=False)
    return ds.select(np.sort(rows).tolist())


def _load_split(
    args: ProbeArguments,
    task: ClassificationTask,
    split: str,
    flag: str,
    limit: int,
    columns: tuple[str | None, str | None],
) -> tuple[Dataset, str, str]:
    """One split of the probe's dataset, checked, capped at ``limit`` rows and prepared by ``task``, with its input
    and label columns (``columns``: the given or already detected ones, else detected)."""
    input_column, label_column = columns
    try:
        ds = load_data(
            args.probe_dataset_name,
            split,
            config_name=args.probe_dataset_config_name,
            default=task.default_dataset,
        )
    except UsageError as error:
        raise _flagged(error, f"{flag} {split}") from error
    if not isinstance(ds, Dataset):
        raise UsageError(f"--probe_dataset_name {args.probe_dataset_name}: the probe needs a map-style dataset")
    try:
        column = find_column(ds, task.modality, input_column)
    except UsageError as error:
        if args.probe_input_column is not None:
            raise _flagged(error, f"--probe_input_column {args.probe_input_column}") from error
        if input_column is not None:  # the column found in the other split
            raise _flagged(error, f"{flag} {split}") from error
        described = ", ".join(f"{name} ({getattr(f, 'dtype', type(f).__name__)})" for name, f in ds.features.items())
        raise UsageError(
            f"--probe_dataset_name {args.probe_dataset_name}: split {split!r} has no {task.modality} column "
            f"(columns: {described}); this objective reads {task.modality} data (or name the column with "
            "--probe_input_column)"
        ) from error
    try:
        label_column = find_label_column(ds, label_column)
    except UsageError as error:
        where = f"--probe_dataset_name {args.probe_dataset_name}: split {split!r}"
        if args.probe_label_column is not None:
            where = f"--probe_label_column {args.probe_label_column}: split {split!r}"
        elif label_column is not None:  # the column found in the other split
            where = f"{flag} {split}"
        raise UsageError(f"{where}: {error}".replace("--label_column", "--probe_label_column")) from error
    ds = _subset(ds.select_columns([column, label_column]), limit)
    return task.prepare(ds, column), column, label_column


class OnlineProbe:
    """kNN (and optionally linear-probe) accuracy of a model's frozen features on a labelled set prepared once.

    Calling it with the ``...ForPreTraining`` model being trained returns ``{"probe_knn_accuracy": ...}`` (and
    ``"probe_linear_accuracy"``), computed exactly as ``hf-ssl evaluate`` computes them on a saved checkpoint
    (same pooling, preprocessing, kNN vote and probe), without changing the training: no gradients, every module's
    train/eval mode restored, the global random generators untouched.

    Build it with :meth:`prepare`.
    """

    def __init__(
        self,
        args: ProbeArguments,
        spec: FeatureSpec,
        train: Dataset,
        test: Dataset,
        collator: FeatureCollator,
        num_classes: int,
        config_settings: dict[str, Any],
    ):
        self.args, self.spec, self.train, self.test = args, spec, train, test
        self.collator, self.num_classes, self.config_settings = collator, num_classes, config_settings

    @classmethod
    def prepare(
        cls, args: ProbeArguments, model: PreTrainedModel, spec: FeatureSpec, processing_class: Any
    ) -> OnlineProbe:
        """Load, check, cap and preprocess-ready the probe's two splits for ``model``.

        Args:
            args: the probe flags (``args.enabled``).
            model: the ``...ForPreTraining`` model that will be trained (its config gives the preprocessing).
            spec: the objective's feature spec (its data kind and pooling).
            processing_class: the run's tokenizer / image processor / feature extractor (what the run saves with
                its checkpoints, so what ``hf-ssl evaluate`` would read).

        Raises:
            UsageError: naming the flag: a dataset or split that does not exist, one with no column of the
                objective's data kind or no label column, unusable labels, or a model without a backbone.
        """
        backbone = backbone_of(model)
        task = get_task(spec.modality)
        train, column, label_column = _load_split(
            args,
            task,
            args.probe_train_split,
            "--probe_train_split",
            args.probe_max_train_examples,
            (args.probe_input_column, args.probe_label_column),
        )
        test, _, _ = _load_split(
            args, task, args.probe_split, "--probe_split", args.probe_max_eval_examples, (column, label_column)
        )
        try:
            train, test, num_classes = encode_labels(
                train, test, label_column, (args.probe_train_split, args.probe_split)
            )
        except UsageError as error:
            raise _flagged(error, f"--probe_dataset_name {args.probe_dataset_name}") from error
        # the task makes its preprocessing from a checkpoint folder: the run's processing class, saved as a
        # checkpoint holds it, and a copy of the config (tasks may set options on it, e.g. output_hidden_states)
        config = copy.deepcopy(backbone.config)
        with tempfile.TemporaryDirectory(prefix="hf_ssl_probe_") as folder:
            if processing_class is not None:
                processing_class.save_pretrained(folder)
            preprocess = task.preprocessor(folder, config)
        settings = {
            key: value
            for key, value in vars(config).items()
            if not key.startswith("_") and (key not in vars(backbone.config) or vars(backbone.config)[key] != value)
        }
        logger.info(
            "online probe on %s: %d %r rows (kNN bank%s), scored on %d %r rows, %d classes",
            args.probe_dataset_name,
            len(train),
            args.probe_train_split,
            ", linear probe" if args.probe_linear else "",
            len(test),
            args.probe_split,
            num_classes,
        )
        return cls(args, spec, train, test, FeatureCollator(preprocess, column, label_column), num_classes, settings)

    def features(self, model: PreTrainedModel) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """``((train features (N, F), labels (N,)), (test features (M, F), labels (M,)))`` of ``model``'s backbone,
        on its device, the last feature set where the pooling gives several (as ``hf-ssl evaluate`` reports at its
        top level)."""
        backbone = backbone_of(model)
        parameter = next(backbone.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        modes = [(module, module.training) for module in model.modules()]
        saved = {key: getattr(backbone.config, key, None) for key in self.config_settings}
        encode = model_encoder(backbone, self.spec.pool)
        try:
            model.eval()
            for key, value in self.config_settings.items():
                setattr(backbone.config, key, value)
            with torch.no_grad(), preserved_rng():
                out = []
                for ds in (self.train, self.test):
                    sets, labels = extract_feature_sets(
                        {"probe": encode}, ds, self.collator, batch_size=self.args.probe_batch_size, device=device
                    )
                    out.append((last_layer(sets["probe"]).to(device), labels.to(device)))
        finally:
            for key, value in saved.items():
                setattr(backbone.config, key, value)
            for module, training in modes:
                module.training = training
        return tuple(out)

    def __call__(self, model: PreTrainedModel) -> dict[str, float]:
        """The probe's metrics for ``model`` now: ``probe_knn_accuracy`` (and ``probe_linear_accuracy``)."""
        started = time.perf_counter()
        (train_x, train_y), (test_x, test_y) = self.features(model)
        args = self.args
        metrics = {
            KNN_METRIC: knn_accuracy(
                train_x,
                train_y,
                test_x,
                test_y,
                args.probe_knn_k,
                args.probe_knn_temperature,
                num_classes=self.num_classes,
            )
        }
        if args.probe_linear:
            metrics[LINEAR_METRIC] = linear_probe_accuracy(
                train_x,
                train_y,
                test_x,
                test_y,
                num_classes=self.num_classes,
                weight_decay=LINEAR_PROBE_WEIGHT_DECAY,
                max_iter=args.probe_linear_max_iter,
            )
        metrics["probe_runtime"] = round(time.perf_counter() - started, 4)
        return metrics
