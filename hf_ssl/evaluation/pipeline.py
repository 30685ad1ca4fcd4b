"""``hf-ssl evaluate``: kNN and linear-probe accuracy of a checkpoint's frozen backbone, with baselines."""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import datasets
import torch
from datasets import ClassLabel, Dataset
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from hf_ssl.data import (
    DEFAULT_DATASET,
    ImageClassificationCollator,
    eval_transform,
    find_column,
    find_label_column,
    load_data,
    undecoded,
)
from hf_ssl.evaluation.features import default_device, extract_feature_sets, raw_pixels
from hf_ssl.evaluation.knn import knn_accuracy
from hf_ssl.evaluation.linear_probe import linear_probe_accuracy

if TYPE_CHECKING:
    from hf_ssl.cli import EvaluationArguments

logger = logging.getLogger(__name__)

LINEAR_PROBE_WEIGHT_DECAY = 1e-4


def _no_pretrained_download(config: PretrainedConfig) -> PretrainedConfig:
    """A copy of ``config`` whose backbone is built without fetching timm's pretrained weights, which would make
    the random-init baseline not random."""
    config = copy.deepcopy(config)
    if getattr(config, "pretrained_backbone", False):
        config.pretrained_backbone = False
    return config


def load_backbone(model_name_or_path: str) -> PreTrainedModel:
    """The backbone of a pretraining checkpoint (``AutoModel``: e.g. :class:`~hf_ssl.SimCLRModel`), in eval mode.

    Raises:
        ValueError: the checkpoint lacks weights the backbone needs (they would silently stay random).
    """
    # from_pretrained never fetches timm's weights: the checkpoint's own replace them
    model, info = AutoModel.from_pretrained(model_name_or_path, output_loading_info=True)
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(item) for item in info.get("mismatched_keys") or ())
    if missing or mismatched:
        problems = missing + mismatched
        shown = ", ".join(problems[:5]) + (", ..." if len(problems) > 5 else "")
        raise ValueError(
            f"{model_name_or_path}: {len(missing)} backbone weights are missing and {len(mismatched)} have the "
            f"wrong shape for {type(model).__name__} ({shown}); is this a pretraining output_dir of this model?"
        )
    return model.eval()


def random_init_backbone(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """The architecture of ``config`` at random initialisation, seeded; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModel.from_config(_no_pretrained_download(config)).eval()


def image_preprocessing(config: PretrainedConfig) -> tuple[Any, str]:
    """The deterministic transform and PIL mode a backbone expects, from its config.

    Returns:
        ``(transform, mode)``: :func:`~hf_ssl.data.eval_transform` of the config (resize, centre crop to
        ``image_size``, normalise with ``image_mean`` / ``image_std``), and the PIL mode: ``"L"`` for one
        channel, else ``"RGB"``.

    Raises:
        ValueError: the config does not say how to preprocess images.
    """
    needed = ("image_size", "image_mean", "image_std")
    missing = [name for name in needed if getattr(config, name, None) is None]
    if missing:
        raise ValueError(
            f"the checkpoint's {type(config).__name__} has no {', '.join(missing)}: it does not say how to "
            "preprocess images, so it cannot be evaluated on them"
        )
    return eval_transform(config), "L" if getattr(config, "num_channels", 3) == 1 else "RGB"


def _split_columns(ds: Dataset, split: str, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    try:
        return find_column(ds, "image", image_column), find_label_column(ds, label_column)
    except ValueError as err:
        raise ValueError(f"split {split!r}: {err}") from err


def _encode_labels(train: Dataset, test: Dataset, column: str, splits: tuple[str, str]) -> tuple[Dataset, Dataset, int]:
    """Both splits with integer labels in ``[0, num_classes)`` (names mapped to ids), and ``num_classes``.

    Raises:
        ValueError: labels that are neither class ids nor names, or negative ids (unlabelled rows).
    """
    feature = train.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted({str(v) for v in train[column]} | {str(v) for v in test[column]})
        logger.info("label column %r holds names: ids 0..%d in sorted order", column, len(names) - 1)
        train, test = (ds.cast_column(column, ClassLabel(names=names)) for ds in (train, test))
        return train, test, len(names)
    num_classes = feature.num_classes if isinstance(feature, ClassLabel) else 0
    for ds, split in zip((train, test), splits, strict=True):
        dtype = getattr(ds.features[column], "dtype", "")
        if not (isinstance(ds.features[column], ClassLabel) or "int" in dtype):
            raise ValueError(
                f"split {split!r}: label column {column!r} holds {ds.features[column]}, not class ids or "
                "names; name another with --label_column"
            )
        labels = torch.tensor(ds[column], dtype=torch.long)
        if (labels < 0).any():
            raise ValueError(
                f"split {split!r}: {int((labels < 0).sum())} of {len(labels)} rows have a negative label in "
                f"{column!r} (unlabelled rows); evaluate on a labelled split"
            )
        num_classes = max(num_classes, int(labels.max()) + 1)
    return train, test, num_classes


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


def evaluate(args: EvaluationArguments) -> dict[str, Any]:
    """kNN and linear-probe accuracy of a checkpoint's frozen backbone on a labelled image dataset.

    The backbone is loaded with ``AutoModel.from_pretrained``; its config gives the preprocessing (image size,
    mean, std, channels). The kNN bank and the probe use ``args.train_split``; accuracy is measured on
    ``args.split``. With ``args.baselines``, the same two protocols also run on the raw preprocessed pixels
    (flattened) and on the same architecture at random initialisation (seeded by ``args.seed``). Each split's
    images are decoded once and fed to every feature extractor in the same pass.

    Args:
        args: :class:`~hf_ssl.cli.EvaluationArguments`.

    Returns:
        A JSON-able dict: ``model``, ``dataset``, ``split``, ``train_split``, ``num_train``, ``num_test``,
        ``num_classes``, ``num_features``, ``knn`` (``accuracy``, ``k``, ``temperature``), ``linear_probe``
        (``accuracy``, ``weight_decay``), and with baselines ``baselines.raw_pixels`` and
        ``baselines.random_init`` holding the same keys. Also written to ``args.output_file`` when given.

    Raises:
        ValueError: a missing split, image or label column (the message lists what exists), unusable labels,
            or a checkpoint whose weights do not fit its backbone.
    """
    started = time.perf_counter()
    model = load_backbone(args.model_name_or_path)
    transform, mode = image_preprocessing(model.config)

    splits = (args.train_split, args.split)
    train, test = (
        load_data(args.dataset_name, split, config_name=args.dataset_config_name, cache_dir=args.cache_dir)
        for split in splits
    )
    image_column, label_column = _split_columns(train, args.train_split, args.image_column, args.label_column)
    _split_columns(test, args.split, image_column, label_column)
    train, test = (undecoded(ds.select_columns([image_column, label_column]), image_column) for ds in (train, test))
    train, test, num_classes = _encode_labels(train, test, label_column, splits)
    collator = ImageClassificationCollator(transform, image_column, label_column, mode=mode)

    encoders: dict[str, Any] = {"pretrained": model}
    if args.baselines:
        encoders["random_init"] = random_init_backbone(model.config, args.seed)
        encoders["raw_pixels"] = raw_pixels
    device = default_device()
    extracted = {}
    for split, ds in zip(splits, (train, test), strict=True):
        logger.info("%s features of %d %r images on %s", ", ".join(encoders), len(ds), split, device)
        extracted[split] = extract_feature_sets(encoders, ds, collator, batch_size=args.batch_size, device=device)

    def protocols(name: str) -> dict[str, Any]:
        (train_features, train_labels), (test_features, test_labels) = (extracted[s] for s in splits)
        pair = ((train_features[name], train_labels), (test_features[name], test_labels))
        return _protocols(*pair, num_classes=num_classes, args=args, device=device)

    results: dict[str, Any] = {
        "model": args.model_name_or_path,
        "dataset": args.dataset_name or DEFAULT_DATASET,
        "dataset_config_name": args.dataset_config_name,
        "split": args.split,
        "train_split": args.train_split,
        "image_column": image_column,
        "label_column": label_column,
        "num_train": len(train),
        "num_test": len(test),
        "num_classes": num_classes,
        **protocols("pretrained"),
    }
    if args.baselines:
        results["baselines"] = {name: protocols(name) for name in ("raw_pixels", "random_init")}
        results["seed"] = args.seed
    logger.info("evaluated in %.1f s", time.perf_counter() - started)

    if args.output_file:
        directory = os.path.dirname(os.path.abspath(args.output_file))
        os.makedirs(directory, exist_ok=True)
        with open(args.output_file, "w") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
        logger.info("wrote %s", args.output_file)
    return results
