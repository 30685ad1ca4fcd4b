"""Text classification of frozen features: the checkpoint's own tokenizer makes the inputs; TF-IDF (reduced by a
truncated SVD, i.e. LSA) fitted on the training texts is the task's baseline.

Any text objective gets this task by declaring ``FeatureSpec("text", ...)``: its checkpoint folder must hold the
tokenizer it was trained with (the CLI saves the objective's ``processing_class`` there), and its backbone
(``AutoModel``) must accept the tokenizer's outputs (``input_ids``, ``attention_mask``, maybe ``token_type_ids``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PretrainedConfig

from hf_ssl.backbones.sentence_transformers import read_max_seq_length
from hf_ssl.backbones.transformers import max_sequence_length
from hf_ssl.data.text import (
    DEFAULT_TEXT_CLASSIFICATION_DATASET,
    load_default_text_classification,
    load_tokenizer,
)
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.tasks.base import Preprocessor, register_task
from hf_ssl.evaluation.tasks.classification import ClassificationTask, FittedBaseline

MAX_LENGTH_CAP = 512
"""Texts are truncated to what the encoder reads, at most this (see :func:`text_max_length`)."""
TFIDF_MAX_FEATURES = 50_000
TFIDF_COMPONENTS = 256


def text_max_length(config: PretrainedConfig, model_name_or_path: str | None = None) -> int:
    """Tokens per text at evaluation: what the encoder reads (:func:`~hf_ssl.backbones.transformers.
    max_sequence_length`: its positions, less RoBERTa-style offsets), at most 512, and at most the
    ``max_seq_length`` of a sentence-transformers folder (what ``SentenceTransformer(path).encode`` reads).

    The tokenizer's ``model_max_length`` is not read: a tokenizer hf_ssl trained records the pretraining crop there,
    and evaluation reads what a user of the export gets (the whole input), so a run and its export evaluate alike.
    """
    length = min(max_sequence_length(config) or MAX_LENGTH_CAP, MAX_LENGTH_CAP)
    declared = read_max_seq_length(model_name_or_path) if model_name_or_path else None
    return min(length, declared) if declared else length


def text_preprocessor(model_name_or_path: str, config: PretrainedConfig) -> Preprocessor:
    """Texts -> the tokenizer's tensors (``input_ids``, ``attention_mask``, ...), padded to the longest text of the
    batch and truncated to :func:`text_max_length`, with the tokenizer saved in the checkpoint folder.

    Raises:
        UsageError: the checkpoint holds no tokenizer.
    """
    try:
        tokenizer = load_tokenizer(model_name_or_path)
    except UsageError as error:
        raise UsageError(
            f"{model_name_or_path}: no tokenizer saved with the checkpoint, so its texts cannot be tokenised ({error})"
        ) from error
    max_length = text_max_length(config, model_name_or_path)

    def preprocess(values: list[Any]) -> dict[str, torch.Tensor]:
        texts = [value if isinstance(value, str) else "" for value in values]  # a missing text: an empty one
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    preprocess.tokenizer = tokenizer  # type: ignore[attr-defined]  (for objectives' extra metrics)
    preprocess.max_length = max_length  # type: ignore[attr-defined]
    return preprocess


def tfidf_baseline(
    train_texts: list[Any], test_texts: list[Any], components: int = TFIDF_COMPONENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """TF-IDF of word unigrams and bigrams (sublinear term frequency, at most 50,000 terms seen in two training
    texts or more), reduced to ``components`` dimensions by a truncated SVD (latent semantic analysis) and
    L2-normalised; both fitted on the training texts only.

    Returns:
        ``(train (N, F), test (M, F))`` float32, ``F <= components``.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    train_texts = [t if isinstance(t, str) else "" for t in train_texts]
    test_texts = [t if isinstance(t, str) else "" for t in test_texts]
    vectorizer = TfidfVectorizer(
        sublinear_tf=True,
        ngram_range=(1, 2),
        min_df=2 if len(train_texts) >= 50 else 1,
        max_features=TFIDF_MAX_FEATURES,
    )
    try:
        train_tfidf = vectorizer.fit_transform(train_texts)
    except ValueError as error:  # an empty vocabulary
        raise UsageError(f"TF-IDF baseline: the training texts have no usable words ({error})") from error
    test_tfidf = vectorizer.transform(test_texts)
    n_components = min(components, train_tfidf.shape[1] - 1, train_tfidf.shape[0] - 1)
    if n_components >= 2:
        svd = TruncatedSVD(n_components=n_components, random_state=0)
        train_features, test_features = svd.fit_transform(train_tfidf), svd.transform(test_tfidf)
    else:
        train_features, test_features = train_tfidf.toarray(), test_tfidf.toarray()
    train_features, test_features = (
        normalize(np.asarray(f, dtype=np.float32)) for f in (train_features, test_features)
    )
    return torch.from_numpy(train_features), torch.from_numpy(test_features)


def _fitted_baselines(config: PretrainedConfig) -> dict[str, FittedBaseline]:
    return {"tfidf": tfidf_baseline}


def sort_by_length(ds: Dataset, column: str) -> Dataset:
    """The rows ordered by the length of their text (characters), so that each batch of feature extraction pads to
    a similar length: several times less padding than the given order on data such as definitions (3 to 100+ words).
    Labels travel with their rows, and kNN, the probe and the baselines do not depend on the order."""
    lengths = ds.map(
        lambda batch: {"_length": [len(t) if isinstance(t, str) else 0 for t in batch[column]]},
        batched=True,
        desc="Measuring the texts",
    )
    return lengths.sort("_length").remove_columns("_length")


TEXT_CLASSIFICATION = register_task(
    ClassificationTask(
        modality="text",
        preprocessor=text_preprocessor,
        prepare=sort_by_length,
        fitted_baselines=_fitted_baselines,
        default_dataset=(DEFAULT_TEXT_CLASSIFICATION_DATASET, load_default_text_classification),
    )
)
