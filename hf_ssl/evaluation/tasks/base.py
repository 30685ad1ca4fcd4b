"""The evaluation task protocol and its registry: what ``hf-ssl evaluate --task <name>`` runs on a checkpoint of one
data kind, and the parts every task uses (the checkpoint loaded once, the evaluated split, the rows' collator)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from datasets import Dataset
from transformers import PretrainedConfig, PreTrainedModel

from hf_ssl.errors import UsageError
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import FeatureSpec

CLASSIFICATION = "classification"
"""The task of every data kind, and the one ``--task auto`` falls back to."""

Preprocessor = Callable[[list[Any]], dict[str, torch.Tensor]]
"""Raw values of the input column (images, texts, clips) -> model inputs."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as evaluation loaded it, once: its backbone (eval mode) and how its features are read.

    Args:
        path: the ``--model_name_or_path`` it was loaded from.
        model: the backbone.
        spec: its feature spec (data kind, pooler, description).
    """

    path: str
    model: PreTrainedModel
    spec: FeatureSpec

    @property
    def config(self) -> PretrainedConfig:
        """The backbone's config, read from the checkpoint with it (never read again)."""
        return self.model.config


class Task(Protocol):
    """An evaluation task of one data kind.

    Attributes:
        name: what ``--task`` names (``classification``, ``sts``).
        modality: the data kind of the checkpoints it evaluates.
    """

    name: str
    modality: str

    def check(self, args: EvaluationArguments) -> None:
        """Raise :class:`~hf_ssl.errors.UsageError` for arguments this task cannot run with (before anything is
        loaded)."""

    def load(self, args: EvaluationArguments) -> Dataset:
        """The evaluated split (``args.split``) as this task reads it."""

    def claims(self, evaluated: Dataset) -> bool:
        """Whether the evaluated split holds this task's data (how ``--task auto`` chooses)."""

    def run(self, args: EvaluationArguments, checkpoint: Checkpoint, evaluated: Dataset) -> dict[str, Any]:
        """The task's JSON-able results of ``checkpoint`` on the evaluated split."""


TASKS: dict[tuple[str, str], Task] = {}
"""The registered tasks by ``(name, modality)``."""


def register_task(task: Task) -> Task:
    """Make ``task`` what ``--task <task.name>`` runs on checkpoints of ``task.modality``; returns it."""
    TASKS[task.name, task.modality] = task
    return task


def get_task(modality: str, name: str = CLASSIFICATION) -> Task:
    """The task ``name`` of data kind ``modality``.

    Raises:
        UsageError: none registered.
    """
    if (name, modality) not in TASKS:
        available = sorted(f"{task} ({kind})" for task, kind in TASKS)
        raise UsageError(f"--task {name}: no evaluation task for {modality} data; available: {', '.join(available)}")
    return TASKS[name, modality]


def choose_task(args: EvaluationArguments) -> tuple[str, Dataset | None]:
    """The name of the task to run, from the arguments and the data alone (before any checkpoint is loaded), and the
    evaluated split when it was loaded to decide (``None``: the task loads it).

    ``--task <name>`` names it. With ``--task auto`` and a dataset, each task other than classification loads the
    split and the first that claims it is chosen (e.g. STS: two sentence columns and a score); else classification,
    handed that same split (a task reads a source as :func:`~hf_ssl.data.load_data` does, or as its own file format
    when the source is one). The chosen task then checks the arguments (:meth:`Task.check`).

    Raises:
        UsageError: no task of that name, or arguments it cannot run with.
    """
    by_name = {name: task for (name, _), task in TASKS.items()}  # what a task checks does not depend on the data kind
    if args.task != "auto":
        if args.task not in by_name:
            raise UsageError(f"--task {args.task}: no such evaluation task; available: {', '.join(sorted(by_name))}")
        by_name[args.task].check(args)
        return args.task, None
    evaluated = None
    if args.dataset_name:
        for name, task in by_name.items():
            if name == CLASSIFICATION:
                continue
            evaluated = task.load(args)
            if task.claims(evaluated):
                task.check(args)
                return name, evaluated
    return CLASSIFICATION, evaluated


class FeatureCollator:
    """Rows -> model inputs (by a :data:`Preprocessor`) plus ``labels (B,)``: the batches of feature extraction."""

    def __init__(self, preprocess: Preprocessor, column: str, label_column: str):
        self.preprocess, self.column, self.label_column = preprocess, column, label_column

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = self.preprocess([row[self.column] for row in rows])
        inputs["labels"] = torch.tensor([int(row[self.label_column]) for row in rows])
        return inputs
