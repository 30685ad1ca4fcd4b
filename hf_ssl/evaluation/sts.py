"""Semantic textual similarity (STS): how well the cosine similarity of sentence embeddings ranks sentence pairs as
people scored them (Spearman's rank correlation, the measure of SimCSE, Gao et al., 2021, and SentEval), plus the
TF-IDF cosine baseline and alignment / uniformity (Wang & Isola, 2020).

Data: any dataset of (sentence1, sentence2, score) rows, read by :func:`load_sts`, including the STS Benchmark's own
tab-separated files (no header; score in column 5, sentences in columns 6 and 7, some lines with extra columns).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from hf_ssl.data.loading import load_data
from hf_ssl.errors import UsageError
from hf_ssl.health import alignment, uniformity

STS_COLUMNS = ("sentence1", "sentence2", "score")
_SENTENCE_NAMES = (("sentence1", "sentence2"), ("sentence_a", "sentence_b"), ("text1", "text2"), ("s1", "s2"))
_SCORE_NAMES = ("score", "similarity_score", "label", "relatedness_score", "similarity")
STSB_LAYOUT = (4, 5, 6)
"""Column indices (0-based) of score, sentence1, sentence2 in the STS Benchmark's headerless TSV files."""


def read_sts_tsv(path: str | os.PathLike, layout: tuple[int, int, int] = STSB_LAYOUT) -> Dataset:
    """The pairs of a headerless tab-separated STS file (the STS Benchmark's layout by default).

    Lines with more columns than ``layout`` needs are kept (their extra trailing columns ignored); quotes are not
    special (sentences contain them).

    Args:
        path: the ``.tsv`` file.
        layout: 0-based indices of the score, first sentence and second sentence columns.

    Returns:
        A dataset with ``sentence1``, ``sentence2``, ``score`` (float).

    Raises:
        UsageError: a missing file, or a line with too few columns or a score that is not a number (file and line
            named).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"STS file not found: {path}")
    score_at, first_at, second_at = layout
    rows: dict[str, list[Any]] = {name: [] for name in STS_COLUMNS}
    with path.open(encoding="utf-8", newline="") as handle:
        for number, fields in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not fields:
                continue
            if len(fields) <= max(layout):
                raise UsageError(f"{path}: line {number} has {len(fields)} columns; STS lines need {max(layout) + 1}")
            try:
                score = float(fields[score_at])
            except ValueError:
                raise UsageError(
                    f"{path}: line {number}: column {score_at + 1} is {fields[score_at]!r}, not a similarity score"
                ) from None
            rows["sentence1"].append(fields[first_at])
            rows["sentence2"].append(fields[second_at])
            rows["score"].append(score)
    if not rows["score"]:
        raise UsageError(f"{path}: no sentence pairs")
    return Dataset.from_dict(rows)


def _looks_like_stsb_tsv(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        fields = handle.readline().rstrip("\n").split("\t")
    if len(fields) <= max(STSB_LAYOUT):
        return False
    try:
        float(fields[STSB_LAYOUT[0]])
    except ValueError:
        return False
    return True


def read_sts_split(
    dataset_name: str, split: str = "test", config_name: str | None = None, cache_dir: str | None = None
) -> Dataset:
    """One split of ``dataset_name`` as it is: a folder holding ``<split>.tsv`` in the STS Benchmark's headerless
    layout (as ``../shared/data/text/stsb``), or such a ``.tsv`` file itself, as ``sentence1``, ``sentence2``,
    ``score``; anything else as :func:`hf_ssl.data.load_data` reads it (Hub id, folder, data file with a header).

    Raises:
        UsageError: no such split or file.
    """
    path = Path(dataset_name)
    tsv = path / f"{split}.tsv" if path.is_dir() else path
    if tsv.is_file() and tsv.suffix == ".tsv" and _looks_like_stsb_tsv(tsv):
        return read_sts_tsv(tsv)
    stsb_files = [p for p in path.glob("*.tsv") if _looks_like_stsb_tsv(p)] if path.is_dir() else []
    if stsb_files and not any(path.glob(f"{split}*")):
        available = sorted(p.stem for p in stsb_files)
        raise UsageError(f"{dataset_name}: no split {split!r}; it has {available}")
    return load_data(dataset_name, split, config_name=config_name, cache_dir=cache_dir, default=None)


def sts_columns(
    columns: Sequence[str],
    sentence_columns: Sequence[str] | None = None,
    score_column: str | None = None,
    name: str = "the split",
) -> tuple[tuple[str, str], str]:
    """``((first sentence, second sentence), score)`` columns among ``columns``: those named, else detected
    (``sentence1``/``sentence2`` and similar names; ``score``, ``similarity_score``, ``label``, ...).

    Raises:
        UsageError: they are not all there (the message lists the columns there are).
    """
    if sentence_columns is None:
        sentence_columns = next((pair for pair in _SENTENCE_NAMES if set(pair) <= set(columns)), None)
    if sentence_columns is None or len(sentence_columns) != 2 or not set(sentence_columns) <= set(columns):
        raise UsageError(
            f"STS data needs two sentence columns (given as --input_column sentence1,sentence2); {name!r} has {columns}"
        )
    if score_column is None:
        score_column = next((name for name in _SCORE_NAMES if name in columns), None)
    if score_column is None or score_column not in columns:
        raise UsageError(f"STS data needs a score column (given as --label_column); {name!r} has {columns}")
    return (sentence_columns[0], sentence_columns[1]), score_column


def sts_pairs(
    ds: Dataset, name: str, sentence_columns: Sequence[str] | None = None, score_column: str | None = None
) -> Dataset:
    """The rows of ``ds`` (of dataset ``name``) as ``sentence1``, ``sentence2`` (strings) and ``score`` (float)
    columns (:func:`sts_columns`).

    Raises:
        UsageError: columns that cannot be found (the message names the dataset and lists the columns it has).
    """
    (first, second), score = sts_columns(ds.column_names, sentence_columns, score_column, name)
    return Dataset.from_dict(
        {
            "sentence1": [str(s) for s in ds[first]],
            "sentence2": [str(s) for s in ds[second]],
            "score": [float(s) for s in ds[score]],
        }
    )


def load_sts(
    dataset_name: str,
    split: str = "test",
    sentence_columns: Sequence[str] | None = None,
    score_column: str | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """One split of an STS dataset (:func:`read_sts_split`) as ``sentence1``, ``sentence2``, ``score`` columns
    (:func:`sts_pairs`).

    Args:
        dataset_name: a folder of STS Benchmark ``.tsv`` files, such a file, or anything
            :func:`hf_ssl.data.load_data` reads with two sentence columns and a score column.
        split: the split (for a folder of ``.tsv`` files: the file name without ``.tsv``).
        sentence_columns: the two sentence columns (detected: ``sentence1``/``sentence2`` and similar names).
        score_column: the score column (detected: ``score``, ``similarity_score``, ``label``, ...).
        cache_dir: where ``datasets`` caches downloads.

    Raises:
        UsageError: no such split or file, or columns that cannot be found (the message lists those there are).
    """
    ds = read_sts_split(dataset_name, split, cache_dir=cache_dir)
    return sts_pairs(ds, dataset_name, sentence_columns, score_column)


def cosine_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of ``(N, D)`` tensors, in float64 -> ``(N,)``."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def correlations(predicted: Sequence[float] | torch.Tensor, gold: Sequence[float] | torch.Tensor) -> dict[str, float]:
    """Spearman's and Pearson's correlation of predicted similarities with gold scores.

    Returns:
        ``{"spearman": rho, "pearson": r}`` (``nan`` when either side is constant).
    """
    from scipy.stats import pearsonr, spearmanr

    predicted = torch.as_tensor(predicted, dtype=torch.float64).numpy()
    gold = torch.as_tensor(gold, dtype=torch.float64).numpy()
    if len(predicted) != len(gold) or len(gold) < 2:
        raise ValueError(f"need two equal-length sequences of >= 2 values, got {len(predicted)} and {len(gold)}")
    return {"spearman": float(spearmanr(predicted, gold).statistic), "pearson": float(pearsonr(predicted, gold)[0])}


def sts_metrics(
    embeddings1: torch.Tensor,
    embeddings2: torch.Tensor,
    scores: Sequence[float] | torch.Tensor,
    positive_threshold: float | None = 4.0,
) -> dict[str, float]:
    """Spearman and Pearson correlation of the pairs' cosine similarity with ``scores``, and (as in SimCSE's
    analysis, section 5) alignment over the pairs scored ``>= positive_threshold`` and uniformity over all the
    sentences (Wang & Isola, 2020).

    Args:
        embeddings1: ``(N, D)`` embeddings of the first sentences.
        embeddings2: ``(N, D)`` embeddings of the second sentences.
        scores: ``(N,)`` gold similarity scores.
        positive_threshold: score from which a pair counts as a positive for alignment (4 on STS-B's 0-5 scale);
            ``None`` skips alignment and uniformity.

    Returns:
        ``spearman``, ``pearson``, ``num_pairs`` and, where defined, ``alignment`` and ``uniformity``.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    result: dict[str, Any] = {**correlations(cosine_scores(embeddings1, embeddings2), scores), "num_pairs": len(scores)}
    if positive_threshold is not None:
        positive = scores >= positive_threshold
        if positive.any():
            result["alignment"] = float(alignment(embeddings1[positive], embeddings2[positive]))
        result["uniformity"] = float(uniformity(torch.cat([embeddings1, embeddings2])))
    return result


def tfidf_cosine(sentences1: Sequence[str], sentences2: Sequence[str], fit_texts: Sequence[str] | None = None):
    """The TF-IDF baseline: cosine similarity of the pairs' TF-IDF vectors (scikit-learn's ``TfidfVectorizer``,
    lower-cased words, smoothed idf, L2-normalised).

    Args:
        sentences1: the first sentences.
        sentences2: the second sentences.
        fit_texts: the texts the document frequencies are counted on (no scores are used); default: all the
            sentences of the pairs.

    Returns:
        ``(N,)`` float64 tensor of cosine similarities (0 for a pair with no known word in common).
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer().fit(list(fit_texts) if fit_texts is not None else [*sentences1, *sentences2])
    a, b = vectorizer.transform(sentences1), vectorizer.transform(sentences2)  # rows are L2-normalised
    return torch.as_tensor(a.multiply(b).sum(axis=1).A1, dtype=torch.float64)


@torch.no_grad()
def encode_sentences(
    encode: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    tokenizer: Any,
    sentences: Sequence[str],
    max_length: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Sentence embeddings ``(N, D)`` (float32, on the CPU) of ``sentences``, in order.

    Args:
        encode: tokenised inputs (``input_ids``, ``attention_mask``, ...) -> ``(B, D)`` embeddings.
        tokenizer: the encoder's tokenizer; sentences are truncated to ``max_length`` tokens and padded per batch.
        sentences: the sentences.
        max_length: tokens per sentence at most, special tokens included.
        batch_size: sentences per forward pass.
        device: where the inputs go.
    """
    parts = []
    for start in range(0, len(sentences), batch_size):
        inputs = tokenizer(
            list(sentences[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        parts.append(encode({key: value.to(device) for key, value in inputs.items()}).float().cpu())
    if not parts:
        raise UsageError("there are no sentences to encode")
    return torch.cat(parts)
