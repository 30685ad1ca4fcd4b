"""Exports of a pretraining checkpoint's backbone, each in the format its own ecosystem loads without ``hf_ssl``.

A pretraining checkpoint (``hf-ssl pretrain`` output folder) holds the whole objective: backbone, heads and the config
of the run. What a user keeps is the backbone, next to a model card that says how it was trained and how well it
does. Each objective registers an exporter for its ``model_type`` (through its :class:`~hf_ssl.objectives.Objective`);
:func:`export_backbone` checks the folders and dispatches on the checkpoint's config. The writers per ecosystem
(:mod:`hf_ssl.export.timm`, ...) and the model cards (:mod:`hf_ssl.export.model_card`) know no objective.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForPreTraining, PretrainedConfig, PreTrainedModel

from hf_ssl.callbacks import RunInfo
from hf_ssl.checkpoints import check_weights
from hf_ssl.errors import UsageError

logger = logging.getLogger(__name__)

EVAL_RESULTS_FILE = "eval_results.json"
"""Evaluation results looked for in the checkpoint folder when no ``eval_file`` is given."""


@dataclass
class ExportContext:
    """Everything an exporter gets.

    Args:
        model_dir: the checkpoint folder.
        output_dir: the folder to write the export into (exists, holds at most a previous export).
        config: the checkpoint's config, read once with ``AutoConfig``; exporters load models and tokenizers with it.
        run_info: the checkpoint's run record (dataset, training arguments, metrics), if it has one.
        evaluation: the evaluation results (``hf-ssl evaluate --output_file``), if any.
        folder: the exporter's own folder, where its model card template is looked up first
            (:func:`hf_ssl.export.model_card.write_card`).
    """

    model_dir: Path
    output_dir: Path
    config: PretrainedConfig
    run_info: RunInfo | None
    evaluation: dict[str, Any] | None
    folder: Path | None = None


@dataclass(frozen=True)
class Exporter:
    """How one objective exports its backbone.

    Args:
        export: writes the export (weights, config, ``README.md``) into ``context.output_dir``.
        files: the names ``export`` writes; an output folder holding anything else is refused, so a re-export
            only ever replaces files of a previous export.
    """

    export: Callable[[ExportContext], None]
    files: tuple[str, ...]

    @property
    def folder(self) -> Path:
        """The folder of the module that defines ``export`` (an objective's folder, inside the package or not)."""
        return Path(inspect.getfile(self.export)).resolve().parent


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(model_type: str, exporter: Exporter) -> None:
    """Make ``exporter`` the one :func:`export_backbone` uses for checkpoints of ``model_type``."""
    EXPORTERS[model_type] = exporter


def export_backbone(
    model_dir: str | os.PathLike, output_dir: str | os.PathLike, eval_file: str | os.PathLike | None = None
) -> Path:
    """Export the backbone of a pretraining checkpoint, with a model card, in its ecosystem's format.

    Nothing of the objective beyond the backbone is exported (no projection head, no decoder).

    Args:
        model_dir: a checkpoint folder written by ``hf-ssl pretrain`` (or ``save_pretrained``).
        output_dir: where to write the export; created if needed. It must not be ``model_dir`` and may hold
            only files of a previous export (and dotfiles such as ``.git``).
        eval_file: evaluation results JSON for the model card; default ``<model_dir>/eval_results.json`` when
            that exists, else the card says the model was not evaluated.

    Returns:
        ``output_dir`` as a ``Path``.

    Raises:
        UsageError: ``model_dir`` is not a checkpoint folder, the given ``eval_file`` does not exist, no exporter
            handles the checkpoint's model type, or ``output_dir`` is unsuitable.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    config, exporter = _resolve(model_dir, output_dir)
    if eval_file is None and (model_dir / EVAL_RESULTS_FILE).is_file():
        eval_file = model_dir / EVAL_RESULTS_FILE
    if eval_file is not None and not Path(eval_file).is_file():
        raise UsageError(f"{eval_file}: no such evaluation results file")
    context = ExportContext(
        model_dir=model_dir,
        output_dir=output_dir,
        config=config,
        run_info=RunInfo.load(model_dir),
        evaluation=read_json(Path(eval_file)) if eval_file is not None else None,
        folder=exporter.folder,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    exporter.export(context)
    logger.info("exported the %s backbone of %s to %s", config.model_type, model_dir, output_dir)
    return output_dir


def load_pretraining_model(context: ExportContext, model_class: type[PreTrainedModel]) -> PreTrainedModel:
    """The checkpoint's whole pretraining model (``AutoModelForPreTraining`` with ``context.config``), in eval mode.

    Raises:
        UsageError: the checkpoint holds another model than ``model_class``, or lacks some of its weights (they would
            be exported at random).
    """
    model, info = AutoModelForPreTraining.from_pretrained(
        context.model_dir, config=context.config, output_loading_info=True
    )
    if not isinstance(model, model_class):
        expected, got = model_class.__name__, type(model).__name__
        raise UsageError(f"{context.model_dir}: expected a {expected} checkpoint, got {got}")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise UsageError(f"{context.model_dir}: {len(missing)} weights are missing ({', '.join(missing[:5])})")
    return model.eval()


def _check_output_dir(model_dir: Path, output_dir: Path, files: tuple[str, ...]) -> None:
    if output_dir.exists() and output_dir.resolve() == model_dir.resolve():
        raise UsageError(f"{output_dir}: the export would overwrite the checkpoint; choose another output_dir")
    if output_dir.is_file():
        raise UsageError(f"{output_dir} is a file; output_dir must be a folder")
    if output_dir.is_dir():
        foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in files and not p.name.startswith("."))
        if foreign:
            raise UsageError(
                f"{output_dir} holds files that are not part of an export ({', '.join(foreign[:5])}); "
                "choose an empty or new output_dir"
            )


def read_json(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def _resolve(model_dir: Path, output_dir: Path) -> tuple[PretrainedConfig, Exporter]:
    """The checkpoint's config and exporter, once the checkpoint is readable (its config parses, its
    ``model.safetensors`` is whole) and ``output_dir`` may be written.

    Raises:
        UsageError: naming the folder or file at fault.
    """
    if not (model_dir / "config.json").is_file():
        raise UsageError(f"{model_dir}: not a checkpoint folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{model_dir / 'config.json'}: cannot read the checkpoint's config: {first_line}") from error
    check_weights(model_dir, what="checkpoint")
    exporter = EXPORTERS.get(config.model_type)
    if exporter is None:
        raise UsageError(
            f"{model_dir}: no exporter for model type {config.model_type!r}; "
            f"exportable types: {', '.join(sorted(EXPORTERS))}"
        )
    _check_output_dir(model_dir, output_dir, exporter.files)
    return config, exporter
