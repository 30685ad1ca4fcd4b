"""The Objective record and its registry: everything the CLI, evaluation and export ask of one objective.

An objective is built in its own folder (``models/<method>/objective.py``) and registered in one line of that
folder's ``__init__.py``; registering it also registers its exporter and its evaluation features, so no shared
module ever names an objective.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from datasets import Dataset, IterableDataset
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    PretrainedConfig,
    PreTrainedModel,
    TrainerCallback,
)

from hf_ssl.checkpoints import check_weights
from hf_ssl.data.loading import DEFAULT_DATASET, Modality, load_digits_dataset
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.features import FeatureSpec, register_features
from hf_ssl.export import Exporter, register_exporter

logger = logging.getLogger(__name__)

SHARED_PROCESSOR_FOLDER = "shared_processor"
"""The folder of ``output_dir`` in which a run's main process leaves its processing class for the other processes."""


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
class RunContext:
    """What ``prepare_data`` may need to know about the run beyond the config and the data flags.

    Args:
        model_name_or_path: the checkpoint or Hub id the run starts from (``--model_name_or_path``; its processing
            class is the run's unless the data flags name another), or ``None`` for a model built from the config.
    """

    model_name_or_path: str | None = None


NEW_MODEL = RunContext()
"""The run context of a model built from its config alone (no ``--model_name_or_path``)."""


@dataclass(frozen=True)
class Objective:
    """What the generic pretrain / evaluate / export commands need to know about one objective.

    Args:
        name: CLI name (``hf-ssl pretrain <name>``).
        config_class: its ``PretrainedConfig``; one CLI flag per ``__init__`` argument.
        model_class: its ``...ForPreTraining`` model (what ``AutoModelForPreTraining`` loads from its checkpoints).
        base_model_class: its backbone model (``...Model``, what ``AutoModel`` loads from its checkpoints).
        modality: the kind of data it reads.
        data_arguments: a dataclass of its data flags (columns, bad-input policy, tokenizer, ...).
        prepare_data: ``(dataset, config, data_args, run) -> PreparedData``: checks, tokenisation, collator;
            ``run`` is the :class:`RunContext` (:data:`NEW_MODEL` where the caller gives none).
        features: how evaluation gets features from its backbone (``AutoModel``) checkpoints.
        exporter: how its checkpoints export their backbone.
        default_dataset: ``(name, loader(split))`` of the embedded dataset used when none is given.
        min_batch_size: the fewest examples per process a batch may have (2 for contrastive objectives).
        negatives_from_batch: the loss contrasts each example with the others of its batch (SimCLR, SimCSE), so
            gradient accumulation does not add negatives (``hf-ssl pretrain`` warns; the config's
            ``gradient_cache_chunk_size`` gives a large batch in bounded memory instead).
        callbacks: ``config -> [TrainerCallback]`` the objective trains with (schedules, monitors).
        commands: extra ``hf-ssl <command>`` entry points of the objective (``{"reconstruct": fn(argv)}``).
        summary: one line for ``hf-ssl --help``.
        use_saved_processor: ``(data_args, folder) -> data_args`` that make ``prepare_data`` load the processing
            class saved in ``folder`` instead of making one, for objectives whose processing class is learnt from
            the data (a trained tokenizer); ``None`` where it follows from the config alone. A resumed run then
            reads the checkpoint's, and the processes of a run share the one their main process made (see
            :meth:`prepare_for_run`).
        report_pictures: ``(model_dir, output_dir, report_args) -> [(title, png path)]``: the objective's own
            pictures on the ``hf-ssl report`` page (MAE reconstructions, wav2vec codebook usage), drawn from the run's
            model folder into ``output_dir``; ``report_args`` are the report's
            :class:`~hf_ssl.evaluation.run_report.ReportArguments` (labelled set, seed). ``None``: none.
    """

    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    base_model_class: type[PreTrainedModel]
    modality: Modality
    data_arguments: type
    prepare_data: Callable[[Dataset | IterableDataset, PretrainedConfig, Any, RunContext], PreparedData]
    features: FeatureSpec
    exporter: Exporter | None = None
    default_dataset: tuple[str, Callable[[str], Dataset]] = (DEFAULT_DATASET, load_digits_dataset)
    min_batch_size: int = 1
    negatives_from_batch: bool = False
    callbacks: Callable[[PretrainedConfig], list[TrainerCallback]] = lambda config: []
    commands: dict[str, Callable[[list[str]], Any]] = field(default_factory=dict)
    summary: str = ""
    use_saved_processor: Callable[[Any, str], Any] | None = None
    report_pictures: Callable[[str, Any, Any], list[tuple[str, Any]]] | None = None

    def prepare_for_run(
        self,
        dataset: Dataset | IterableDataset,
        config: PretrainedConfig,
        data_args: Any,
        training_args: Any,
        model_name_or_path: str | None = None,
    ) -> PreparedData:
        """``prepare_data`` as a training run calls it, so that every process, and a resumed run, uses the
        processing class the model was trained with.

        The main process of each node prepares first (``TrainingArguments.main_process_first``: datasets' caches are
        written once); with :attr:`use_saved_processor`, a resumed run (``resume_from_checkpoint`` a folder, as the
        CLI resolves it) loads the processing class saved in the checkpoint, and in a run of several processes the
        main one saves its processing class to ``output_dir/shared_processor``, which the others load.

        Args:
            dataset: the loaded training split.
            config: the run's config (the objective may fit it to the data, e.g. to the vocabulary).
            data_args: the objective's data flags.
            training_args: the run's ``TrainingArguments``.
            model_name_or_path: the checkpoint or Hub id the run starts from (``--model_name_or_path``), if any.
        """
        run = RunContext(model_name_or_path=model_name_or_path)
        resume = training_args.resume_from_checkpoint  # a folder: the CLI resolved ``true`` before
        reuse = self.use_saved_processor
        if reuse is not None and resume:
            logger.info("resuming: the processing class saved in %s is used, none is made anew", resume)
            data_args = reuse(data_args, str(resume))
        shared = None
        if reuse is not None and not resume and training_args.world_size > 1:
            shared = os.path.join(training_args.output_dir, SHARED_PROCESSOR_FOLDER)
        with training_args.main_process_first(desc=f"{self.name} data preparation"):
            first = training_args.local_process_index == 0
            if shared and not first:
                data_args = reuse(data_args, shared)
            prepared = self.prepare_data(dataset, config, data_args, run)
            if shared and first:
                # on several nodes each node's main process makes its own (identical: deterministic) copy
                prepared.processing_class.save_pretrained(shared)
        return prepared

    def make_config(self, overrides: dict[str, Any], model_name_or_path: str | None = None) -> PretrainedConfig:
        """The run's config: the objective's defaults, or a checkpoint's config, updated by ``overrides``.

        Raises:
            UsageError: a checkpoint of another objective, or values the config refuses.
        """
        if not model_name_or_path:
            return self.config_class(**overrides)
        config = read_config(model_name_or_path)
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
            check_weights(model_name_or_path, "--model_name_or_path")  # a truncated file: one line, not a traceback
            return self.model_class.from_pretrained(model_name_or_path, config=config)
        model = self.model_class(config)
        if getattr(config, "pretrained_backbone", False) and hasattr(model, "load_pretrained_backbone"):
            model.load_pretrained_backbone()
        return model


@dataclass(frozen=True)
class EncoderObjective(Objective):
    """An objective whose config holds its backbone's own config as a sub-config (``config.<backbone_field>``: a text
    encoder of any family, a ``Wav2Vec2Config``), so that a run can start from another checkpoint's backbone.

    ``--model_name_or_path`` is then either a checkpoint of this objective, continued, or one whose config
    :meth:`starting_backbone` accepts: a new model whose backbone (and more, where the checkpoint has it) starts from
    its weights (:meth:`load_start`), its config that checkpoint's backbone config with the flags' changes. The
    checkpoint's config is read once by :meth:`make_config` and once by :meth:`make_model`.

    Subclasses set :attr:`backbone_field` and :attr:`backbone_kind` and define :meth:`starting_backbone` and
    :meth:`load_start`; :meth:`start_values` and :meth:`update_backbone` have defaults.
    """

    backbone_field: ClassVar[str] = "encoder"
    """The config field of the backbone's sub-config (and the name of its flag, ``--<backbone_field>``)."""
    backbone_kind: ClassVar[str] = "a text encoder"
    """What a foreign checkpoint must be, for the one-line refusal of any other."""

    def starting_backbone(self, source: PretrainedConfig) -> PretrainedConfig | None:
        """The backbone config a run starts from, given another checkpoint's config; ``None``: not a start."""
        raise NotImplementedError

    def load_start(self, model: PreTrainedModel, model_name_or_path: str, source: PretrainedConfig) -> None:
        """Load the weights of the checkpoint at ``model_name_or_path`` (config ``source``) into a new ``model``.

        Raises:
            UsageError: weights that do not fit the model.
        """
        raise NotImplementedError

    def start_values(self, model_name_or_path: str) -> dict[str, Any]:
        """Config values of a run started from another checkpoint (before the flags'), e.g. its provenance."""
        return {}

    def update_backbone(self, backbone: dict[str, Any], update: Any, model_name_or_path: str) -> dict[str, Any]:
        """The starting backbone config (a dict) with the ``--<backbone_field>`` flag's changes (``None``: none).

        Raises:
            UsageError: a flag value that is not a JSON object of fields to change.
        """
        if update is None:
            return backbone
        if not isinstance(update, dict):
            field_name = self.backbone_field
            raise UsageError(
                f"--{field_name} with --model_name_or_path must be a JSON object of {field_name} fields to change"
            )
        return {**backbone, **update}

    def make_config(self, overrides: dict[str, Any], model_name_or_path: str | None = None) -> PretrainedConfig:
        """The objective's config from the flags; with a checkpoint, its backbone config (or its whole config, for
        one of this objective), updated by the flags; ``--<backbone_field> '{...}'`` changes backbone fields.

        Raises:
            UsageError: an unreadable config, a checkpoint that is neither of this objective nor a backbone, or
                refused values.
        """
        if not model_name_or_path:
            return self.config_class(**overrides)
        source = read_config(model_name_or_path)
        overrides = dict(overrides)
        update = overrides.pop(self.backbone_field, None)
        if isinstance(source, self.config_class):
            backbone, values = getattr(source, self.backbone_field), {**source.to_dict(), **overrides}
        else:
            backbone = self.starting_backbone(source)
            if backbone is None:
                raise UsageError(
                    f"--model_name_or_path {model_name_or_path} is a {source.model_type!r} checkpoint, not one of "
                    f"{self.name} ({self.config_class.model_type!r}) nor {self.backbone_kind}"
                )
            values = {**self.start_values(model_name_or_path), **overrides}
        backbone_values = self.update_backbone(backbone.to_dict(), update, model_name_or_path)
        return self.config_class(**{**values, self.backbone_field: backbone_values})

    def make_model(self, config: PretrainedConfig, model_name_or_path: str | None = None) -> PreTrainedModel:
        """A new model, the checkpoint of this objective at ``model_name_or_path``, or a new model that starts from
        another checkpoint's weights (:meth:`load_start`)."""
        if not model_name_or_path:
            return super().make_model(config)
        source = read_config(model_name_or_path)
        if isinstance(source, self.config_class):
            return super().make_model(config, model_name_or_path)
        model = self.model_class(config)
        self.load_start(model, model_name_or_path, source)
        return model


def read_config(model_name_or_path: str) -> PretrainedConfig:
    """The config of a checkpoint folder or Hub id.

    Raises:
        UsageError: no readable config, naming ``--model_name_or_path``.
    """
    try:
        return AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as error:
        raise UsageError(f"--model_name_or_path {model_name_or_path}: cannot read its config: {error}") from error


OBJECTIVES: dict[str, Objective] = {}
COMMANDS: dict[str, Callable[[list[str]], Any]] = {}
"""Extra ``hf-ssl`` commands that objectives bring, by name."""


def register_objective(objective: Objective) -> None:
    """Make ``objective`` available to ``hf-ssl pretrain``, its exporter and features to export and evaluate, and its
    config and models to transformers' ``AutoConfig``, ``AutoModel`` and ``AutoModelForPreTraining``."""
    if not dataclasses.is_dataclass(objective.data_arguments):
        raise TypeError(f"{objective.name}: data_arguments must be a dataclass")
    OBJECTIVES[objective.name] = objective
    COMMANDS.update(objective.commands)
    model_type = objective.config_class.model_type
    AutoConfig.register(model_type, objective.config_class, exist_ok=True)
    AutoModel.register(objective.config_class, objective.base_model_class, exist_ok=True)
    AutoModelForPreTraining.register(objective.config_class, objective.model_class, exist_ok=True)
    register_features(model_type, objective.features)
    if objective.exporter is not None:
        register_exporter(model_type, objective.exporter)


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UsageError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
