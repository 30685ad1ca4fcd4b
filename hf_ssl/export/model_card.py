"""Model cards: rendered with Jinja2 from a template in the exporting objective's folder (``model_card.md``), which
may import the shared blocks of ``model_cards/`` (installed as ``hf_ssl.model_cards``); metadata (with
``model-index``) built by ``huggingface_hub`` so the Hub shows the evaluation results.

Nothing here knows an objective: :func:`write_card` fills what every card has (metadata, training rows, evaluation
table, repository id, version) from the run record (:class:`~hf_ssl.callbacks.RunInfo`) and the evaluation results
(``hf-ssl evaluate --output_file``); the exporter adds its own fields.
"""

from __future__ import annotations

import functools
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import EvalResult, ModelCardData

from hf_ssl._version import __version__
from hf_ssl.callbacks import RUN_INFO_FILE, RunInfo
from hf_ssl.data.loading import EMBEDDED_DATASETS
from hf_ssl.evaluation.report import PROTOCOLS, result_rows
from hf_ssl.export import ExportContext

REPO_ID_PLACEHOLDER = "<user>/<model-name>"
"""Stands for the repository id in a card's code snippets until :func:`hf_ssl.hub.push_folder` knows it."""


def _load_shared_template(name: str) -> str | None:
    path = resources.files("hf_ssl.model_cards") / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


@functools.cache
def _environment(folder: Path | None) -> jinja2.Environment:
    """Templates looked up in ``folder`` first, then among the shared ones."""
    shared = jinja2.FunctionLoader(_load_shared_template)
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(folder), shared]) if folder is not None else shared,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_model_card(template_name: str, folder: str | os.PathLike | None = None, **context: Any) -> str:
    """Render a model card template with Jinja2.

    Undefined variables are errors, so a template and its caller cannot silently drift apart.

    Args:
        template_name: file name, with or without ``.md`` (``"model_card"``).
        folder: where the template is looked up first (an objective's folder); then among the shared templates of
            ``model_cards/``.
        **context: the template's variables.

    Returns:
        The card's Markdown, YAML front matter included.

    Raises:
        FileNotFoundError: no such template.
    """
    name = template_name if template_name.endswith(".md") else f"{template_name}.md"
    try:
        template = _environment(Path(folder).resolve() if folder is not None else None).get_template(name)
    except jinja2.TemplateNotFound:
        where = f"{folder} or the shared model_cards/" if folder is not None else "the shared model_cards/"
        raise FileNotFoundError(f"no model card template {name!r} in {where}") from None
    return template.render(**context)


def write_card(
    context: ExportContext,
    template: str = "model_card.md",
    *,
    model_name: str,
    library_name: str,
    pipeline_tag: str,
    tags: list[str],
    unit: str,
    license: str = "apache-2.0",
    **fields: Any,
) -> None:
    """Write the export's ``README.md`` from ``template`` (looked up in the exporter's folder, ``context.folder``,
    first).

    Every card gets ``metadata`` (the YAML front matter, with the evaluation as ``model-index``), ``repo_id``,
    ``dataset_name``, ``hf_ssl_version``, ``training_rows`` and ``evaluation`` (:func:`evaluation_summary`, the
    model's row named ``"<model_name> (this model)"``; ``None`` when not evaluated); ``fields`` add the objective's own.

    Args:
        context: the export's context (run record, evaluation, output folder).
        template: the card template's file name.
        model_name: the model's name in the metadata and the evaluation table.
        library_name: the library that loads the export (``"timm"``, ``"transformers"``, ...).
        pipeline_tag: the Hub's task of the export.
        tags: the Hub tags.
        unit: what one training example is called (``"images"``, ``"sentences"``, ...).
        license: the weights' license id.
        **fields: the template's other variables.
    """
    run_info, evaluation = context.run_info, context.evaluation
    card = render_model_card(
        template,
        folder=context.folder,
        metadata=card_metadata(
            model_name=model_name,
            library_name=library_name,
            pipeline_tag=pipeline_tag,
            license=license,
            tags=tags,
            run_info=run_info,
            evaluation=evaluation,
        ),
        repo_id=REPO_ID_PLACEHOLDER,
        dataset_name=run_info.dataset_name if run_info else None,
        hf_ssl_version=__version__,
        training_rows=training_rows(run_info, unit=unit),
        evaluation=evaluation_summary(evaluation, f"{model_name} (this model)") if evaluation else None,
        **fields,
    )
    (context.output_dir / "README.md").write_text(card, encoding="utf-8")


def evaluation_summary(results: dict[str, Any], model_label: str) -> dict[str, Any]:
    """The card's view of ``hf-ssl evaluate`` results: headline facts and one row per feature set.

    Args:
        results: the evaluation JSON (``knn``, ``linear_probe``, ``baselines``, ...).
        model_label: name of the pretrained model's row.

    Returns:
        ``dataset``, ``split``, ``num_train``, ``num_test``, ``knn_k``, ``knn_temperature`` (``None`` when
        absent), ``columns`` (the protocol headers) and ``rows``: ``{"name", "cells"}`` as ``hf-ssl evaluate``
        prints them.
    """
    knn = results.get("knn") or {}
    rows = result_rows(results)
    if rows and rows[0]["name"] == "pretrained":
        rows[0] = {**rows[0], "name": model_label}
    return {
        "dataset": results.get("dataset"),
        "split": results.get("split"),
        "num_train": results.get("num_train"),
        "num_test": results.get("num_test"),
        "knn_k": knn.get("k"),
        "knn_temperature": knn.get("temperature"),
        "columns": [label for key, label in PROTOCOLS if any(key in row["cells"] for row in rows)],
        "rows": [
            {"name": row["name"], "cells": [row["cells"].get(key, "-") for key, _ in PROTOCOLS if _has(rows, key)]}
            for row in rows
        ],
    }


def _has(rows: list[dict[str, Any]], key: str) -> bool:
    return any(key in row["cells"] for row in rows)


def training_rows(run_info: RunInfo | None, unit: str = "examples") -> list[tuple[str, str]]:
    """The card's table rows for a run record: dataset, steps run, batch size, optimiser, result.

    Args:
        run_info: the checkpoint's run record, or ``None`` when it has none.
        unit: what one example is called (``"images"``, ``"sentences"``, ``"clips"``).
    """
    if run_info is None:
        return [("dataset", f"unknown (the checkpoint has no `{RUN_INFO_FILE}`)")]
    rows = []
    dataset = str(run_info.dataset_name or run_info.dataset_source or "the embedded default dataset")
    if run_info.dataset_config_name:
        dataset += f" ({run_info.dataset_config_name})"
    if run_info.train_split:
        dataset += f", split `{run_info.train_split}`"
    if run_info.num_examples:
        dataset += f", {run_info.num_examples} {unit}"
    if run_info.num_skipped:
        dataset += f" ({run_info.num_skipped} unusable ones skipped)"
    rows.append(("dataset", dataset))
    args, metrics = run_info.training_args, run_info.train_metrics
    length = f"{run_info.global_step} optimisation steps"
    if metrics.get("epoch") is not None:
        length += f" ({float(metrics['epoch']):.2f} epochs)"
    rows.append(("training length", length))
    per_device = args.get("per_device_train_batch_size")
    if per_device is not None:
        world, accumulation = run_info.world_size or 1, args.get("gradient_accumulation_steps") or 1
        rows.append(
            (
                "batch size",
                f"{per_device * world * accumulation} ({per_device} per device x {world} "
                f"{'process' if world == 1 else 'processes'} x {accumulation} accumulation "
                f"{'step' if accumulation == 1 else 'steps'})",
            )
        )
    optimiser = [
        f"{label} {args[key]}"
        for key, label in (("optim", "optimizer"), ("learning_rate", "learning rate"), ("weight_decay", "weight decay"))
        if args.get(key) is not None
    ]
    if optimiser:
        rows.append(("optimisation", ", ".join(optimiser)))
    if args.get("lr_scheduler_type") is not None:
        rows.append(("schedule", f"{args['lr_scheduler_type']}, warm-up {args.get('warmup_steps', 0)}"))
    if args.get("seed") is not None:
        rows.append(("seed", str(args["seed"])))
    if metrics.get("train_loss") is not None:
        rows.append(("mean training loss", f"{metrics['train_loss']:.4f}"))
    if metrics.get("train_runtime") is not None:
        rows.append(("training time", f"{metrics['train_runtime']:.0f} s"))
    return rows


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DATA_FILE_SUFFIXES = (".parquet", ".csv", ".tsv", ".json", ".jsonl", ".arrow", ".txt")


def hub_dataset_id(name: str | None) -> str | None:
    """``name`` if it is a Hub dataset id (not a local path or file, nor an embedded dataset), else ``None``."""
    if (
        not isinstance(name, str)
        or name in EMBEDDED_DATASETS
        or not _HUB_ID.match(name)
        or name.lower().endswith(_DATA_FILE_SUFFIXES)
        or os.path.exists(name)
    ):
        return None
    return name


def hub_datasets(run_info: RunInfo | None) -> list[str]:
    """The Hub dataset id of a run for the card's ``datasets:`` metadata; empty for local or embedded data."""
    name = hub_dataset_id(run_info.dataset_name if run_info else None)
    return [name] if name else []


_TASKS = {"image": "image-classification", "text": "text-classification", "audio": "audio-classification"}


def card_metadata(
    *,
    model_name: str,
    library_name: str,
    pipeline_tag: str,
    license: str,
    tags: list[str],
    run_info: RunInfo | None,
    evaluation: dict[str, Any] | None,
) -> str:
    """The card's YAML front matter (without the ``---`` fences), with the evaluation results as ``model-index``.

    Each protocol of the evaluated model (kNN, linear probe, STS) becomes one ``EvalResult`` on the evaluated
    dataset and split; baselines stay in the card's table only.
    """
    results = []
    if evaluation:
        dataset = str(evaluation.get("dataset") or "unknown")
        if hub_dataset_id(dataset) is None and os.path.exists(dataset):  # a local folder or file: its name only
            dataset = os.path.basename(os.path.normpath(dataset))
        task = _TASKS.get(str(evaluation.get("modality") or "image"), "feature-extraction")
        for key, label in PROTOCOLS:
            entry = evaluation.get(key)
            if not isinstance(entry, dict):
                continue
            for metric, value in entry.items():
                if metric not in ("accuracy", "spearman", "pearson") or not isinstance(value, int | float):
                    continue
                if metric == "accuracy":  # the Hub groups results by task: one name for kNN, probe and fine-tune
                    task_name = "classification" if "finetune" in evaluation else "classification of frozen features"
                else:
                    task_name = "semantic similarity of frozen features"
                results.append(
                    EvalResult(
                        task_type=task if metric == "accuracy" else "sentence-similarity",
                        task_name=task_name,
                        dataset_type=hub_dataset_id(dataset) or dataset,
                        dataset_name=dataset,
                        dataset_split=str(evaluation.get("split") or "test"),
                        metric_type=metric,
                        metric_name=label if metric == "accuracy" else f"STS {metric.capitalize()}",
                        metric_value=round(float(value), 4),
                    )
                )
    data = ModelCardData(
        library_name=library_name,
        license=license,
        pipeline_tag=pipeline_tag,
        tags=tags,
        datasets=hub_datasets(run_info) or None,
        model_name=model_name,
        eval_results=results or None,
    )
    return data.to_yaml()
