"""``hf-ssl evaluate``: kNN and linear-probe accuracy of a checkpoint's frozen backbone, with baselines.

Modality-neutral: the checkpoint's :class:`~hf_ssl.evaluation.features.FeatureSpec` names its data kind, whose
task (:mod:`hf_ssl.evaluation.tasks`) preprocesses the rows and brings its baselines.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import datasets
import torch
from datasets import ClassLabel, Dataset

from hf_ssl.backbones import random_init_backbone
from hf_ssl.data import find_column, find_label_column, load_data
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import default_device, extract_feature_sets, load_features, model_encoder
from hf_ssl.evaluation.finetune import finetune_results
from hf_ssl.evaluation.knn import knn_accuracy
from hf_ssl.evaluation.linear_probe import linear_probe_accuracy
from hf_ssl.evaluation.sts import looks_like_sts
from hf_ssl.evaluation.tasks import FeatureCollator, get_task
from hf_ssl.evaluation.tasks.sts import evaluate_sts

logger = logging.getLogger(__name__)

LINEAR_PROBE_WEIGHT_DECAY = 1e-4


def _split_columns(
    ds: Dataset, split: str, modality: str, input_column: str | None, label_column: str | None
) -> tuple[str, str]:
    try:
        return find_column(ds, modality, input_column), find_label_column(ds, label_column)
    except UsageError as err:
        raise UsageError(f"split {split!r}: {err}") from err


def _encode_labels(train: Dataset, test: Dataset, column: str, splits: tuple[str, str]) -> tuple[Dataset, Dataset, int]:
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


def evaluate(args: EvaluationArguments) -> dict[str, Any]:
    """kNN and linear-probe accuracy of a checkpoint's frozen backbone on a labelled dataset of its data kind, or
    (``args.task`` ``sts``, or ``auto`` on (sentence1, sentence2, score) data) STS correlations
    (:func:`~hf_ssl.evaluation.tasks.sts.evaluate_sts`).

    The backbone is loaded with ``AutoModel.from_pretrained``; the checkpoint's feature spec gives its data kind and
    pooler, and that kind's task the preprocessing (from the checkpoint's own config) and baselines. The kNN bank
    and the probe use ``args.train_split``; accuracy is measured on ``args.split``. With ``args.baselines``, the
    same two protocols also run on the same architecture at random initialisation (seeded by ``args.seed``) and
    on the task's baselines (raw pixels for images). Each split's rows are decoded once and fed to every feature
    extractor in the same pass.

    Args:
        args: :class:`~hf_ssl.evaluation.arguments.EvaluationArguments`.

    Returns:
        A JSON-able dict: ``model``, ``modality``, ``features`` (what the features are), ``dataset``, ``split``,
        ``train_split``, ``num_train``, ``num_test``, ``num_classes``, ``num_features``, ``knn`` (``accuracy``,
        ``k``, ``temperature``), ``linear_probe`` (``accuracy``, ``weight_decay``), and with baselines
        ``baselines.random_init`` and the task's (``baselines.raw_pixels``) holding the same keys. With
        ``args.protocol`` ``finetune`` (instead of kNN and the probe) or ``all`` (as well), ``finetune``
        (``accuracy``, ``steps``, ``learning_rate``, ...: :func:`~hf_ssl.evaluation.finetune.finetune`) on the model
        and on ``baselines.random_init``. Also written to ``args.output_file`` when given.

    Raises:
        UsageError: a missing checkpoint, split, input or label column (the message lists what exists), unusable
            labels, or a checkpoint whose weights do not fit its backbone.
    """
    if args.task == "sts" or (
        args.task == "auto" and looks_like_sts(args.dataset_name, args.split, cache_dir=args.cache_dir)
    ):
        if args.protocol != "frozen":
            raise UsageError(f"--protocol {args.protocol}: split {args.split!r} holds STS sentence pairs, no classes")
        return evaluate_sts(args)
    started = time.perf_counter()
    model, spec = load_features(args.model_name_or_path, timm_checkpoint=args.timm_checkpoint)
    task = get_task(spec.modality)
    preprocess = task.preprocessor(args.model_name_or_path, model.config)

    splits = (args.train_split, args.split)
    train, test = (
        load_data(
            args.dataset_name,
            split,
            config_name=args.dataset_config_name,
            cache_dir=args.cache_dir,
            default=task.default_dataset,
        )
        for split in splits
    )
    column, label_column = _split_columns(train, args.train_split, spec.modality, args.input_column, args.label_column)
    _split_columns(test, args.split, spec.modality, column, label_column)
    train, test = (task.prepare(ds.select_columns([column, label_column]), column) for ds in (train, test))
    train, test, num_classes = _encode_labels(train, test, label_column, splits)
    collator = FeatureCollator(preprocess, column, label_column)

    device = default_device()
    encoders: dict[str, Any] = {}
    extracted = {}
    if args.protocol != "finetune":  # the frozen-feature protocols
        encoders["pretrained"] = model_encoder(model.to(device), spec.pool)
        if args.baselines:
            random_init = random_init_backbone(model.config, args.seed).to(device)
            encoders["random_init"] = model_encoder(random_init, spec.pool)
            encoders.update(task.baselines(model.config))
        for split, ds in zip(splits, (train, test), strict=True):
            logger.info("%s features of %d %r rows on %s", ", ".join(encoders), len(ds), split, device)
            extracted[split] = extract_feature_sets(encoders, ds, collator, batch_size=args.batch_size, device=device)
        if args.baselines:  # baselines fitted on the raw training values (e.g. TF-IDF), applied to both splits
            for name, fit in task.fitted_baselines(model.config).items():
                features = fit(train[column], test[column])
                for split, split_features in zip(splits, features, strict=True):
                    extracted[split][0][name] = split_features
                    encoders[name] = fit

    def protocols(name: str) -> dict[str, Any]:
        (train_features, train_labels), (test_features, test_labels) = (extracted[s] for s in splits)
        layers = [key.split("/", 1)[1] for key in train_features if key.startswith(f"{name}/")]
        if not layers:
            pair = ((train_features[name], train_labels), (test_features[name], test_labels))
            return _protocols(*pair, num_classes=num_classes, args=args, device=device)
        per_layer = {layer: protocols(f"{name}/{layer}") for layer in layers}
        held_out = {
            layer: held_out_probe_accuracy(train_features[f"{name}/{layer}"], train_labels, num_classes, args, device)
            for layer in layers
        }
        best = max(layers, key=held_out.__getitem__)  # chosen without looking at the scored split
        return {
            **per_layer[layers[-1]],
            "layer": layers[-1],
            "best_layer": best,
            "best_layer_held_out_accuracy": held_out,
            "layers": per_layer,
        }

    results: dict[str, Any] = {
        "model": args.model_name_or_path,
        "modality": spec.modality,
        "features": spec.description,
        "dataset": args.dataset_name or task.default_dataset[0],
        "dataset_config_name": args.dataset_config_name,
        "split": args.split,
        "train_split": args.train_split,
        "input_column": column,
        "label_column": label_column,
        "num_train": len(train),
        "num_test": len(test),
        "num_classes": num_classes,
        **(protocols("pretrained") if encoders else {}),
    }
    if spec.extra_metrics is not None:  # the objective's own measures on the evaluated split
        extra = spec.extra_metrics(model, test, column, preprocess)
        results.update(extra)
        results["extra_metrics"] = list(extra)
    if args.baselines:
        results["baselines"] = {name: protocols(name) for name in encoders if name != "pretrained"}
        results["seed"] = args.seed
    if args.protocol != "frozen":  # the backbone fine-tuned end to end, and the random init the same way
        tuned = finetune_results(args, model, spec, train, test, collator, num_classes)
        results["finetune"] = tuned["pretrained"]
        if args.baselines:
            results["baselines"].setdefault("random_init", {})["finetune"] = tuned["random_init"]
    logger.info("evaluated in %.1f s", time.perf_counter() - started)

    if args.output_file:
        directory = os.path.dirname(os.path.abspath(args.output_file))
        os.makedirs(directory, exist_ok=True)
        with open(args.output_file, "w") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
        logger.info("wrote %s", args.output_file)
    return results
