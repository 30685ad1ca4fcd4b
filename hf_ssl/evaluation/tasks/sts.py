"""The STS task: Spearman and Pearson correlation of the cosine similarity of a checkpoint's sentence embeddings with
the human scores of sentence pairs, next to its baselines (TF-IDF cosine, the encoder the run started from,
mean-pooled, and the same architecture at random initialisation).

Unlike the classification tasks, STS fits nothing: it encodes the pairs of one split and correlates. Results have
the shape of the other protocols (``sts`` and ``baselines.<name>.sts``), so reports and model cards read them alike.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer, PretrainedConfig

from hf_ssl.backbones import random_init_backbone
from hf_ssl.backbones.transformers import max_sequence_length
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import FeatureSpec, default_device, load_features, mean_of_tokens, model_encoder
from hf_ssl.evaluation.sts import correlations, encode_sentences, load_sts, sts_metrics, tfidf_cosine

logger = logging.getLogger(__name__)

TASK = "sts"
EVAL_MAX_LENGTH = 128
"""Tokens per sentence at most in STS evaluation (STS Benchmark sentences are shorter), capped by the encoder's
``max_position_embeddings``; the same for every encoder compared."""

Encode = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _encoder_config(config: PretrainedConfig) -> PretrainedConfig:
    inner = getattr(config, "encoder", None)
    return inner if isinstance(inner, PretrainedConfig) else config


def max_length_for(config: PretrainedConfig) -> int:
    """:data:`EVAL_MAX_LENGTH`, or fewer if the encoder reads fewer tokens
    (:func:`~hf_ssl.backbones.transformers.max_sequence_length`: its positions less RoBERTa-style offsets)."""
    return min(EVAL_MAX_LENGTH, max_sequence_length(config) or EVAL_MAX_LENGTH)


def load_sentence_encoder(model_name_or_path: str) -> tuple[torch.nn.Module, FeatureSpec]:
    """A checkpoint's sentence encoder and how to pool it (:func:`~hf_ssl.evaluation.features.load_features`): a
    registered text objective as its feature spec says (SimCSE: its sentence embedding; MLM: the mean of token
    states), any other text encoder as its sentence-transformers ``Pooling`` says, else by the mean of its tokens.

    Raises:
        UsageError: no loadable checkpoint there, or one of another data kind.
    """
    model, spec = load_features(model_name_or_path)
    if spec.modality != "text":
        raise UsageError(f"{model_name_or_path} is a {spec.modality} model; STS needs a text encoder")
    return model, spec


def starting_encoder(path: str) -> torch.nn.Module:
    """The encoder a run started from (``config.starting_encoder``): an hf_ssl composite checkpoint's ``encoder``,
    or the family model of a transformers checkpoint."""
    model = AutoModel.from_pretrained(path)
    if _encoder_config(model.config) is not model.config:
        model = model.encoder
    return model.eval()


def evaluate_sts(args: EvaluationArguments) -> dict[str, Any]:
    """STS evaluation of a checkpoint on one split of a (sentence1, sentence2, score) dataset.

    ``args.dataset_name`` is required (e.g. ``../shared/data/text/stsb`` with ``--split dev``);
    ``args.input_column`` may name the two sentence columns as ``"first,second"`` and ``args.label_column`` the
    score column. With ``args.baselines``: TF-IDF cosine (document frequencies counted on the split's own sentences,
    no scores), the encoder the run started from (``config.starting_encoder``) mean-pooled, and the architecture at
    random initialisation (seeded by ``args.seed``) with the checkpoint's own pooling.

    Returns:
        A JSON-able dict: ``model``, ``modality``, ``task`` ("sts"), ``features``, ``dataset``, ``split``,
        ``num_test`` (pairs), ``max_length``, ``sts`` (``spearman``, ``pearson``, ``num_pairs``, ``alignment`` over
        the pairs scored >= 4, ``uniformity``) and ``baselines.<name>.sts`` likewise; also written to
        ``args.output_file`` when given.

    Raises:
        UsageError: no dataset, columns or checkpoint as described.
    """
    started = time.perf_counter()
    if not args.dataset_name:
        raise UsageError("STS evaluation needs --dataset_name: a dataset of (sentence1, sentence2, score) pairs")
    sentence_columns = args.input_column.split(",") if args.input_column else None
    if sentence_columns is not None and len(sentence_columns) != 2:
        raise UsageError(
            f"--input_column for STS names two sentence columns as 'first,second', got {args.input_column}"
        )
    pairs = load_sts(args.dataset_name, args.split, sentence_columns, args.label_column, cache_dir=args.cache_dir)
    model, spec = load_sentence_encoder(args.model_name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    except (OSError, ValueError) as error:
        raise UsageError(f"{args.model_name_or_path}: no tokenizer saved with the checkpoint: {error}") from error
    device = default_device()
    model.to(device)
    max_length = max_length_for(model.config)
    first, second, scores = pairs["sentence1"], pairs["sentence2"], pairs["score"]

    def measure(function: Encode) -> dict[str, Any]:
        a, b = (encode_sentences(function, tokenizer, s, max_length, args.batch_size, device) for s in (first, second))
        return sts_metrics(a, b, scores)

    results: dict[str, Any] = {
        "model": args.model_name_or_path,
        "modality": "text",
        "task": TASK,
        "features": spec.description,
        "dataset": args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "split": args.split,
        "num_test": len(pairs),
        "max_length": max_length,
        "sts": measure(model_encoder(model, spec.pool)),
    }
    if args.baselines:
        baselines: dict[str, Any] = {"tfidf": {"sts": {**correlations(tfidf_cosine(first, second), scores)}}}
        start_path = getattr(model.config, "starting_encoder", None)
        if start_path:
            try:
                start = starting_encoder(start_path).to(device)
            except (OSError, ValueError) as error:
                logger.warning("cannot load the starting encoder %s for the baseline: %s", start_path, error)
            else:
                start_sts = measure(model_encoder(start, mean_of_tokens))
                baselines["starting_encoder"] = {"sts": start_sts, "model": start_path}
        random_init = random_init_backbone(model.config, args.seed).to(device)
        baselines["random_init"] = {"sts": measure(model_encoder(random_init, spec.pool))}
        results["baselines"] = baselines
        results["seed"] = args.seed
    logger.info("STS evaluation in %.1f s", time.perf_counter() - started)
    if args.output_file:
        directory = os.path.dirname(os.path.abspath(args.output_file))
        os.makedirs(directory, exist_ok=True)
        with open(args.output_file, "w") as handle:
            json.dump(results, handle, indent=2)
            handle.write("\n")
        logger.info("wrote %s", args.output_file)
    return results
