"""The STS task: Spearman and Pearson correlation of the cosine similarity of a checkpoint's sentence embeddings with
the human scores of sentence pairs, next to its baselines (TF-IDF cosine, the encoder the run started from,
mean-pooled, and the same architecture at random initialisation).

Unlike the classification tasks, STS fits nothing: it encodes the pairs of one split and correlates. Results have
the shape of the other protocols (``sts`` and ``baselines.<name>.sts``), so reports and model cards read them alike.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, PretrainedConfig

from hf_ssl.backbones import random_init_backbone
from hf_ssl.backbones.transformers import max_sequence_length
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import Encoder, default_device, mean_of_tokens, model_encoder
from hf_ssl.evaluation.sts import (
    correlations,
    encode_sentences,
    read_sts_split,
    sts_columns,
    sts_metrics,
    sts_pairs,
    tfidf_cosine,
)
from hf_ssl.evaluation.tasks.base import Checkpoint, register_task

logger = logging.getLogger(__name__)

TASK = "sts"
EVAL_MAX_LENGTH = 128
"""Tokens per sentence at most in STS evaluation (STS Benchmark sentences are shorter), capped by the encoder's
``max_position_embeddings``; the same for every encoder compared."""


def _encoder_config(config: PretrainedConfig) -> PretrainedConfig:
    inner = getattr(config, "encoder", None)
    return inner if isinstance(inner, PretrainedConfig) else config


def max_length_for(config: PretrainedConfig) -> int:
    """:data:`EVAL_MAX_LENGTH`, or fewer if the encoder reads fewer tokens
    (:func:`~hf_ssl.backbones.transformers.max_sequence_length`: its positions less RoBERTa-style offsets)."""
    return min(EVAL_MAX_LENGTH, max_sequence_length(config) or EVAL_MAX_LENGTH)


def starting_encoder(path: str) -> torch.nn.Module:
    """The encoder a run started from (``config.starting_encoder``): an hf_ssl composite checkpoint's ``encoder``,
    or the family model of a transformers checkpoint."""
    model = AutoModel.from_pretrained(path)
    if _encoder_config(model.config) is not model.config:
        model = model.encoder
    return model.eval()


class STSTask:
    """STS evaluation of a text checkpoint on one split of a (sentence1, sentence2, score) dataset.

    ``args.dataset_name`` is required (e.g. ``../shared/data/text/stsb`` with ``--split dev``);
    ``args.input_column`` may name the two sentence columns as ``"first,second"`` and ``args.label_column`` the
    score column. With ``args.baselines``: TF-IDF cosine (document frequencies counted on the split's own sentences,
    no scores), the encoder the run started from (``config.starting_encoder``) mean-pooled, and the architecture at
    random initialisation (seeded by ``args.seed``) with the checkpoint's own pooling.
    """

    name = TASK
    modality = "text"

    def check(self, args: EvaluationArguments) -> None:
        """STS needs ``--dataset_name``, two sentence columns in ``--input_column`` if any, and frozen features.

        Raises:
            UsageError: otherwise.
        """
        if not args.dataset_name:
            raise UsageError("STS evaluation needs --dataset_name: a dataset of (sentence1, sentence2, score) pairs")
        if args.input_column and len(args.input_column.split(",")) != 2:
            raise UsageError(
                f"--input_column for STS names two sentence columns as 'first,second', got {args.input_column}"
            )
        if args.protocol != "frozen":
            raise UsageError(f"--protocol {args.protocol}: split {args.split!r} holds STS sentence pairs, no classes")

    def load(self, args: EvaluationArguments) -> Dataset:
        """The evaluated split as it is (:func:`~hf_ssl.evaluation.sts.read_sts_split`).

        Raises:
            UsageError: no such split.
        """
        return read_sts_split(args.dataset_name, args.split, args.dataset_config_name, args.cache_dir)

    def claims(self, evaluated: Dataset) -> bool:
        """Whether the split has two sentence columns and a score column
        (:func:`~hf_ssl.evaluation.sts.sts_columns`)."""
        try:
            sts_columns(evaluated.column_names)
        except UsageError:
            return False
        return True

    def run(self, args: EvaluationArguments, checkpoint: Checkpoint, evaluated: Dataset) -> dict[str, Any]:
        """Spearman and Pearson correlation of the checkpoint's sentence embeddings' cosine similarity with the
        pairs' scores.

        Returns:
            A JSON-able dict: ``model``, ``modality``, ``task`` ("sts"), ``features``, ``dataset``, ``split``,
            ``num_test`` (pairs), ``max_length``, ``sts`` (``spearman``, ``pearson``, ``num_pairs``, ``alignment``
            over the pairs scored >= 4, ``uniformity``) and ``baselines.<name>.sts`` likewise.

        Raises:
            UsageError: columns that cannot be found, or no tokenizer.
        """
        sentence_columns = args.input_column.split(",") if args.input_column else None
        pairs = sts_pairs(evaluated, args.dataset_name, sentence_columns, args.label_column)
        model, config = checkpoint.model, checkpoint.config
        try:
            tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, config=config)
        except (OSError, ValueError) as error:
            raise UsageError(f"{checkpoint.path}: no tokenizer saved with the checkpoint: {error}") from error
        device = default_device()
        model.to(device)
        max_length = max_length_for(config)
        first, second, scores = pairs["sentence1"], pairs["sentence2"], pairs["score"]

        def measure(function: Encoder) -> dict[str, Any]:
            a, b = (
                encode_sentences(function, tokenizer, s, max_length, args.batch_size, device) for s in (first, second)
            )
            return sts_metrics(a, b, scores)

        results: dict[str, Any] = {
            "model": args.model_name_or_path,
            "modality": "text",
            "task": TASK,
            "features": checkpoint.spec.description,
            "dataset": args.dataset_name,
            "dataset_config_name": args.dataset_config_name,
            "split": args.split,
            "num_test": len(pairs),
            "max_length": max_length,
            "sts": measure(model_encoder(model, checkpoint.spec.pool)),
        }
        if args.baselines:
            baselines: dict[str, Any] = {"tfidf": {"sts": {**correlations(tfidf_cosine(first, second), scores)}}}
            start_path = getattr(config, "starting_encoder", None)
            if start_path:
                try:
                    start = starting_encoder(start_path).to(device)
                except (OSError, ValueError) as error:
                    logger.warning("cannot load the starting encoder %s for the baseline: %s", start_path, error)
                else:
                    start_sts = measure(model_encoder(start, mean_of_tokens))
                    baselines["starting_encoder"] = {"sts": start_sts, "model": start_path}
            random_init = random_init_backbone(config, args.seed).to(device)
            baselines["random_init"] = {"sts": measure(model_encoder(random_init, checkpoint.spec.pool))}
            results["baselines"] = baselines
            results["seed"] = args.seed
        return results


STS = register_task(STSTask())
