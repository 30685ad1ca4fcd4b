"""The classification task: kNN and linear-probe accuracy of a checkpoint's frozen features on labelled rows (and
with ``--protocol finetune|all`` the backbone fine-tuned), next to the data kind's baselines.

Each data kind registers one :class:`ClassificationTask` (:mod:`~hf_ssl.evaluation.tasks.image_classification`,
``text_classification``, ``audio_classification``): how a checkpoint's inputs are made from raw rows, and its
baselines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from datasets import ClassLabel, Dataset
from transformers import PretrainedConfig

from hf_ssl.backbones import random_init_backbone
from hf_ssl.data import find_column, find_label_column, load_data
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import Encoder, Features, default_device, extract_feature_sets, model_encoder
from hf_ssl.evaluation.finetune import finetune_results
from hf_ssl.evaluation.knn import knn_accuracy
from hf_ssl.evaluation.linear_probe import linear_probe_accuracy
from hf_ssl.evaluation.tasks.base import CLASSIFICATION, Checkpoint, FeatureCollator, Preprocessor

logger = logging.getLogger(__name__)

LINEAR_PROBE_WEIGHT_DECAY = 1e-4

FittedBaseline = Callable[[list[Any], list[Any]], tuple[torch.Tensor, torch.Tensor]]
"""``(train values, test values) -> (train features (N, F), test features (M, F))``."""


@dataclass(frozen=True)
class ClassificationTask:
    """Classification of frozen features of one data kind.

    Args:
        modality: the data kind.
        preprocessor: ``(model_name_or_path, config) -> Preprocessor`` (the checkpoint's own preprocessing).
        prepare: ``(dataset, column) -> dataset`` before batching (e.g. keep images undecoded).
        baselines: ``config -> {name: Encoder}`` baselines computed from the same inputs (e.g. raw pixels); the
            random-init backbone is always added.
        fitted_baselines: ``config -> {name: fit(train_values, test_values) -> (train (N, F), test (M, F))}``:
            baselines fitted on the raw training values of the input column (e.g. TF-IDF for text).
        default_dataset: ``(name, loader(split))`` of the embedded labelled dataset evaluated when none is given.
    """

    modality: str
    preprocessor: Callable[[str, PretrainedConfig], Preprocessor]
    prepare: Callable[[Dataset, str], Dataset] = lambda ds, column: ds
    baselines: Callable[[PretrainedConfig], dict[str, Encoder]] = field(default=lambda config: {})
    fitted_baselines: Callable[[PretrainedConfig], dict[str, FittedBaseline]] = field(default=lambda config: {})
    default_dataset: tuple[str, Callable[[str], Dataset]] | None = None
    name: str = CLASSIFICATION

    def check(self, args: EvaluationArguments) -> None:
        """Every argument :class:`~hf_ssl.evaluation.arguments.EvaluationArguments` accepts is runnable."""

    def load(self, args: EvaluationArguments, split: str | None = None) -> Dataset:
        """``split`` (default ``args.split``) of the dataset, or of the embedded default of the data kind."""
        return load_data(
            args.dataset_name,
            split or args.split,
            config_name=args.dataset_config_name,
            cache_dir=args.cache_dir,
            default=self.default_dataset,
        )

    def claims(self, evaluated: Dataset) -> bool:
        """Any split may be labelled rows: classification is what ``--task auto`` falls back to."""
        return True

    def run(self, args: EvaluationArguments, checkpoint: Checkpoint, evaluated: Dataset) -> dict[str, Any]:
        """kNN and linear-probe accuracy of the checkpoint's frozen features, or fine-tuning (``args.protocol``).

        The kNN bank and the probe use ``args.train_split``; accuracy is measured on ``args.split``. With
        ``args.baselines``, the same protocols also run on the same architecture at random initialisation (seeded by
        ``args.seed``) and on the task's baselines (raw pixels for images). Each split's rows are decoded once and
        fed to every feature extractor in the same pass.

        Returns:
            ``model``, ``modality``, ``features`` (what the features are), ``dataset``, ``split``, ``train_split``,
            ``input_column``, ``label_column``, ``num_train``, ``num_test``, ``num_classes``, ``num_features``,
            ``knn`` (``accuracy``, ``k``, ``temperature``), ``linear_probe`` (``accuracy``, ``weight_decay``,
            ``max_iter``); per-layer features add ``layer`` (the last, shown at the top level), ``best_layer``,
            ``best_layer_held_out_accuracy`` and ``layers`` (each layer's results, as ``layer_<index>``). With
            baselines, ``baselines.random_init`` and the task's (``baselines.raw_pixels``) hold the same keys, and
            ``seed``. With ``args.protocol`` ``finetune`` or ``all``, ``finetune`` on the model and on
            ``baselines.random_init`` (:func:`~hf_ssl.evaluation.finetune.finetune`).

        Raises:
            UsageError: a missing split, input or label column (the message lists what exists), or unusable labels.
        """
        data = self.labelled_splits(args, checkpoint, evaluated)
        results = self.describe(args, checkpoint, data)
        scored = {}
        if args.protocol != "finetune":  # the frozen-feature protocols
            scored = score_features(*self.extract(args, checkpoint, data), data.num_classes, args)
            results.update(scored.pop("pretrained"))
        if checkpoint.spec.extra_metrics is not None:  # the objective's own measures on the evaluated split
            extra = checkpoint.spec.extra_metrics(checkpoint.model, data.test, data.column, data.collator.preprocess)
            results.update(extra)
            results["extra_metrics"] = list(extra)
        if args.baselines:
            results["baselines"] = scored
            results["seed"] = args.seed
        if args.protocol != "frozen":  # the backbone fine-tuned end to end, and the random init the same way
            tuned = finetune_results(
                args, checkpoint.model, checkpoint.spec, data.train, data.test, data.collator, data.num_classes
            )
            results["finetune"] = tuned["pretrained"]
            if args.baselines:
                results["baselines"].setdefault("random_init", {})["finetune"] = tuned["random_init"]
        return results

    def labelled_splits(self, args: EvaluationArguments, checkpoint: Checkpoint, evaluated: Dataset) -> LabelledSplits:
        """The fit and evaluated splits, their input and label columns checked, labels as class ids, prepared for
        batching by the checkpoint's own preprocessing."""
        preprocess = self.preprocessor(checkpoint.path, checkpoint.config)
        train, test = self.load(args, args.train_split), evaluated
        splits = (args.train_split, args.split)
        column, label_column = _split_columns(
            train, args.train_split, self.modality, args.input_column, args.label_column
        )
        _split_columns(test, args.split, self.modality, column, label_column)
        train, test = (self.prepare(ds.select_columns([column, label_column]), column) for ds in (train, test))
        train, test, num_classes = encode_labels(train, test, label_column, splits)
        return LabelledSplits(
            train, test, column, label_column, num_classes, FeatureCollator(preprocess, column, label_column)
        )

    def describe(self, args: EvaluationArguments, checkpoint: Checkpoint, data: LabelledSplits) -> dict[str, Any]:
        """What was evaluated on what: the head of the results."""
        return {
            "model": args.model_name_or_path,
            "modality": checkpoint.spec.modality,
            "features": checkpoint.spec.description,
            "dataset": args.dataset_name or (self.default_dataset or ("",))[0],
            "dataset_config_name": args.dataset_config_name,
            "split": args.split,
            "train_split": args.train_split,
            "input_column": data.column,
            "label_column": data.label_column,
            "num_train": len(data.train),
            "num_test": len(data.test),
            "num_classes": data.num_classes,
        }

    def extract(
        self, args: EvaluationArguments, checkpoint: Checkpoint, data: LabelledSplits
    ) -> tuple[dict[str, tuple[Features, Features]], tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (fit split features, evaluated split features)}`` of the checkpoint (``pretrained``) and, with
        ``args.baselines``, of the random-init backbone and the task's baselines; and the labels of both splits, in
        feature order."""
        device = default_device()
        encoders: dict[str, Encoder] = {"pretrained": model_encoder(checkpoint.model.to(device), checkpoint.spec.pool)}
        if args.baselines:
            random_init = random_init_backbone(checkpoint.config, args.seed).to(device)
            encoders["random_init"] = model_encoder(random_init, checkpoint.spec.pool)
            encoders.update(self.baselines(checkpoint.config))
        per_split = []
        for split, ds in ((args.train_split, data.train), (args.split, data.test)):
            logger.info("%s features of %d %r rows on %s", ", ".join(encoders), len(ds), split, device)
            per_split.append(
                extract_feature_sets(encoders, ds, data.collator, batch_size=args.batch_size, device=device)
            )
        (train, train_labels), (test, test_labels) = per_split
        features = {name: (train[name], test[name]) for name in encoders}
        if args.baselines:  # baselines fitted on the raw training values (e.g. TF-IDF), applied to both splits
            for name, fit in self.fitted_baselines(checkpoint.config).items():
                features[name] = fit(data.train[data.column], data.test[data.column])
        return features, (train_labels, test_labels)


@dataclass
class LabelledSplits:
    """The fit and evaluated splits of a classification task, checked and prepared.

    Args:
        train: the fit split's rows (the kNN bank, the probe's training rows).
        test: the evaluated split's rows.
        column: the input column.
        label_column: the label column (class ids in ``[0, num_classes)``).
        num_classes: classes.
        collator: rows -> model inputs plus ``labels``.
    """

    train: Dataset
    test: Dataset
    column: str
    label_column: str
    num_classes: int
    collator: FeatureCollator


def layer_key(layer: int) -> str:
    """The key of a layer's results in the JSON results (``layer_0``: the first feature set, e.g. a transformer's
    input)."""
    return f"layer_{layer}"


def score_features(
    features: dict[str, tuple[Features, Features]],
    labels: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    args: EvaluationArguments,
) -> dict[str, dict[str, Any]]:
    """``{name: results}`` of the kNN and linear-probe protocols on each named pair of (fit, evaluated) feature sets
    with the splits' ``labels``; per-layer features are scored layer by layer, the best layer chosen by a probe on a
    held-out fifth of the fit split."""
    device = default_device()

    def score(train: torch.Tensor, test: torch.Tensor) -> dict[str, Any]:
        return _protocols((train, labels[0]), (test, labels[1]), num_classes, args, device)

    results = {}
    for name, (train, test) in features.items():
        if not isinstance(train, dict):
            results[name] = score(train, test)
            continue
        per_layer = {layer: score(train[layer], test[layer]) for layer in train}
        held_out = {
            layer: held_out_probe_accuracy(train[layer], labels[0], num_classes, args, device) for layer in train
        }
        best, last = max(held_out, key=held_out.__getitem__), list(per_layer)[-1]  # best: never the scored split
        results[name] = {
            **per_layer[last],
            "layer": layer_key(last),
            "best_layer": layer_key(best),
            "best_layer_held_out_accuracy": {layer_key(layer): value for layer, value in held_out.items()},
            "layers": {layer_key(layer): value for layer, value in per_layer.items()},
        }
    return results


def _split_columns(
    ds: Dataset, split: str, modality: str, input_column: str | None, label_column: str | None
) -> tuple[str, str]:
    try:
        return find_column(ds, modality, input_column), find_label_column(ds, label_column)
    except UsageError as err:
        raise UsageError(f"split {split!r}: {err}") from err


def encode_labels(train: Dataset, test: Dataset, column: str, splits: tuple[str, str]) -> tuple[Dataset, Dataset, int]:
    """Both splits with integer labels in ``[0, num_classes)`` (names mapped to ids), and ``num_classes``.

    Raises:
        UsageError: labels that are neither class ids nor names, negative ids (unlabelled rows), or a training split
            of a single class.
    """
    feature = train.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted({str(v) for v in train[column]} | {str(v) for v in test[column]})
        logger.info("label column %r holds names: ids 0..%d in sorted order", column, len(names) - 1)
        train, test = (ds.cast_column(column, ClassLabel(names=names)) for ds in (train, test))
        _check_classes(train, column, splits[0])
        return train, test, len(names)
    num_classes = feature.num_classes if isinstance(feature, ClassLabel) else 0
    for ds, split in zip((train, test), splits, strict=True):
        dtype = getattr(ds.features[column], "dtype", "")
        if not (isinstance(ds.features[column], ClassLabel) or "int" in dtype):
            raise UsageError(
                f"split {split!r}: label column {column!r} holds {ds.features[column]}, not class ids or "
                "names; name another with --label_column"
            )
        labels = torch.tensor(ds[column], dtype=torch.long)
        if (labels < 0).any():
            raise UsageError(
                f"split {split!r}: {int((labels < 0).sum())} of {len(labels)} rows have a negative label in "
                f"{column!r} (unlabelled rows); evaluate on a labelled split"
            )
        num_classes = max(num_classes, int(labels.max()) + 1)
    _check_classes(train, column, splits[0])
    return train, test, num_classes


def _check_classes(train: Dataset, column: str, split: str) -> None:
    """Raise :class:`UsageError` unless the training split holds at least two classes: with one, kNN and the probe
    can only answer that class, and would report 100% accuracy on any test split of it."""
    present = sorted(set(train[column]))
    if len(present) < 2:
        feature = train.features[column]
        if not present:
            raise UsageError(f"split {split!r} has no rows to fit kNN and the linear probe on")
        shown = feature.int2str(present[0]) if isinstance(feature, ClassLabel) else present[0]
        raise UsageError(
            f"split {split!r}: label column {column!r} holds a single class ({shown!r}) in all {len(train)} rows; "
            "kNN and linear-probe accuracy need at least two classes"
        )


def _protocols(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    args: EvaluationArguments,
    device: torch.device,
) -> dict[str, Any]:
    (train_x, train_y), (test_x, test_y) = (tuple(t.to(device) for t in pair) for pair in (train, test))
    knn = knn_accuracy(train_x, train_y, test_x, test_y, args.knn_k, args.knn_temperature, num_classes=num_classes)
    probe = linear_probe_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=num_classes,
        weight_decay=LINEAR_PROBE_WEIGHT_DECAY,
        max_iter=args.probe_max_iter,
    )
    return {
        "num_features": train_x.shape[1],
        "knn": {"accuracy": knn, "k": args.knn_k, "temperature": args.knn_temperature},
        "linear_probe": {
            "accuracy": probe,
            "weight_decay": LINEAR_PROBE_WEIGHT_DECAY,
            "max_iter": args.probe_max_iter,
        },
    }


def held_out_probe_accuracy(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, args: EvaluationArguments, device: torch.device
) -> float:
    """Linear-probe accuracy on a held-out fifth of the fit split's rows (seeded by ``args.seed``), the probe fitted
    on the other four fifths: how a best layer is chosen without looking at the scored split."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    cut = max(1, len(order) // 5)
    held, fit = order[:cut], order[cut:]
    return linear_probe_accuracy(
        features[fit].to(device),
        labels[fit].to(device),
        features[held].to(device),
        labels[held].to(device),
        num_classes=num_classes,
        weight_decay=LINEAR_PROBE_WEIGHT_DECAY,
        max_iter=args.probe_max_iter,
    )
