"""The task record and registry: how a checkpoint's inputs are made from raw rows, and the task's own baselines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from transformers import PretrainedConfig

from hf_ssl.errors import UsageError
from hf_ssl.evaluation.features import Encoder

Preprocessor = Callable[[list[Any]], dict[str, torch.Tensor]]
"""Raw values of the input column (images, texts, clips) -> model inputs."""

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
            random-init backbone is always added by the pipeline.
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


TASKS: dict[str, ClassificationTask] = {}


def register_task(task: ClassificationTask) -> None:
    TASKS[task.modality] = task


def get_task(modality: str) -> ClassificationTask:
    if modality not in TASKS:
        raise UsageError(f"no evaluation task for {modality} data yet; available: {', '.join(sorted(TASKS))}")
    return TASKS[modality]


class FeatureCollator:
    """Rows -> model inputs (by a :data:`Preprocessor`) plus ``labels (B,)``: the batches of feature extraction."""

    def __init__(self, preprocess: Preprocessor, column: str, label_column: str):
        self.preprocess, self.column, self.label_column = preprocess, column, label_column

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = self.preprocess([row[self.column] for row in rows])
        inputs["labels"] = torch.tensor([int(row[self.label_column]) for row in rows])
        return inputs
