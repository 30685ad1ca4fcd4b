"""The Objective record and its registry: everything the CLI, evaluation and export ask of one objective.

An objective is built in its own folder (``models/<method>/objective.py``) and registered in one line of that
folder's ``__init__.py``; registering it also registers its exporter and its evaluation features, so no shared
module ever names an objective.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, IterableDataset
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, TrainerCallback

from hf_ssl.data.loading import DEFAULT_DATASET, Modality, load_digits_dataset
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.features import FeatureSpec, register_features
from hf_ssl.export import Exporter, register_exporter

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """What an objective makes of a loaded dataset: the rows to train on and how to batch them.

    Args:
        dataset: the training rows (checked, filtered, tokenised, ... as the objective needs).
        collator: rows -> model inputs.
        columns: the columns read, by role (``{"image": "img"}``), for the run record.
        num_skipped: rows dropped as unusable (counted, logged).
        processing_class: the image processor / tokenizer / feature extractor saved with the model (``None``: none).
        eval_dataset: rows the Trainer evaluates every ``--eval_steps`` (e.g. SimCSE's STS pairs), or ``None``.
        compute_metrics: the Trainer's ``compute_metrics`` for ``eval_dataset`` (``metric_for_best_model`` reads it).
    """

    dataset: Dataset | IterableDataset
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    columns: dict[str, str] = field(default_factory=dict)
    num_skipped: int = 0
    processing_class: Any = None
    eval_dataset: Dataset | None = None
    compute_metrics: Callable[[Any], dict[str, float]] | None = None


@dataclass(frozen=True)
class Objective:
    """What the generic pretrain / evaluate / export commands need to know about one objective.

    Args:
        name: CLI name (``hf-ssl pretrain <name>``).
        config_class: its ``PretrainedConfig``; one CLI flag per ``__init__`` argument.
        model_class: its ``...ForPreTraining`` model.
        modality: the kind of data it reads.
        data_arguments: a dataclass of its data flags (columns, bad-input policy, tokenizer, ...).
        prepare_data: ``(dataset, config, data_args) -> PreparedData``: checks, tokenisation, collator.
        features: how evaluation gets features from its backbone (``AutoModel``) checkpoints.
        exporter: how its checkpoints export their backbone.
        default_dataset: ``(name, loader(split))`` of the embedded dataset used when none is given.
        min_batch_size: the fewest examples per process a batch may have (2 for contrastive objectives).
        callbacks: ``config -> [TrainerCallback]`` the objective trains with (schedules, monitors).
        commands: extra ``hf-ssl <command>`` entry points of the objective (``{"reconstruct": fn(argv)}``).
        summary: one line for ``hf-ssl --help``.
    """

    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    modality: Modality
    data_arguments: type
    prepare_data: Callable[[Dataset | IterableDataset, PretrainedConfig, Any], PreparedData]
    features: FeatureSpec
    exporter: Exporter | None = None
    default_dataset: tuple[str, Callable[[str], Dataset]] = (DEFAULT_DATASET, load_digits_dataset)
    min_batch_size: int = 1
    callbacks: Callable[[PretrainedConfig], list[TrainerCallback]] = lambda config: []
    commands: dict[str, Callable[[list[str]], Any]] = field(default_factory=dict)
    summary: str = ""

    def make_config(self, overrides: dict[str, Any], model_name_or_path: str | None = None) -> PretrainedConfig:
        """The run's config: the objective's defaults, or a checkpoint's config, updated by ``overrides``.

        Raises:
            UsageError: a checkpoint of another objective, or values the config refuses.
        """
        if not model_name_or_path:
            return self.config_class(**overrides)
        try:
            config = AutoConfig.from_pretrained(model_name_or_path)
        except (OSError, ValueError) as err:
            raise UsageError(f"--model_name_or_path {model_name_or_path}: cannot read its config: {err}") from err
        if not isinstance(config, self.config_class):
            raise UsageError(
                f"--model_name_or_path {model_name_or_path} is a {config.model_type!r} checkpoint, not one of "
                f"{self.name} ({self.config_class.model_type!r})"
            )
        return self.config_class(**{**config.to_dict(), **overrides})

    def make_model(self, config: PretrainedConfig, model_name_or_path: str | None = None) -> PreTrainedModel:
        """A new model of ``config`` (starting from pretrained backbone weights where the config asks for them), or
        the checkpoint at ``model_name_or_path`` with ``config``."""
        if model_name_or_path:
            return self.model_class.from_pretrained(model_name_or_path, config=config)
        model = self.model_class(config)
        if getattr(config, "pretrained_backbone", False) and hasattr(model, "load_pretrained_backbone"):
            model.load_pretrained_backbone()
        return model


OBJECTIVES: dict[str, Objective] = {}
COMMANDS: dict[str, Callable[[list[str]], Any]] = {}
"""Extra ``hf-ssl`` commands that objectives bring, by name."""


def register_objective(objective: Objective) -> None:
    """Make ``objective`` available to ``hf-ssl pretrain``, and its exporter and features to export and evaluate."""
    if not dataclasses.is_dataclass(objective.data_arguments):
        raise TypeError(f"{objective.name}: data_arguments must be a dataclass")
    OBJECTIVES[objective.name] = objective
    COMMANDS.update(objective.commands)
    model_type = objective.config_class.model_type
    register_features(model_type, objective.features)
    if objective.exporter is not None:
        register_exporter(model_type, objective.exporter)


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UsageError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
