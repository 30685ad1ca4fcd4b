"""``hf-ssl report``: a Markdown page with PNG plots of one pretraining run, readable on GitHub.

The page (``report.md`` in the output folder, the pictures beside it) holds: every scalar the run logged, over
steps, one figure per group (losses, learning rate, other training scalars, each ``prefix/*`` family such as
``health/*``, and the ``eval_*`` metrics); the warnings of the run record; the evaluation table of an
``hf-ssl evaluate`` result; a 2-D map (PCA or t-SNE) of the backbone's features of a labelled set, coloured by
label; and the objective's own pictures, through the ``report_pictures`` hook of its ``Objective`` record (the CLI
passes it in: evaluation never imports an objective).

matplotlib is an optional extra (``pip install "hf_ssl[report]"``), imported only here and only when a report is
made, with the Agg backend.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_ssl.callbacks import RUN_INFO_FILE, RunInfo
from hf_ssl.checkpoints import last_complete_checkpoint
from hf_ssl.data import find_column, find_label_column, load_data
from hf_ssl.errors import UsageError, check_choice, check_range
from hf_ssl.evaluation.features import default_device, extract_feature_sets, last_layer, load_features, model_encoder
from hf_ssl.evaluation.report import format_markdown_table
from hf_ssl.evaluation.tasks import get_task
from hf_ssl.evaluation.tasks.classification import layer_key

logger = logging.getLogger(__name__)

REPORT_FILE = "report.md"
EXTRA_HINT = 'pip install "hf_ssl[report]"'
Pictures = Callable[[str, Path, Any], list[tuple[str, Path]]]
"""An objective's ``report_pictures`` hook: ``(run_dir, output_dir, ReportArguments) -> [(title, png path)]``."""

# log keys that are no curve: the x axis, and the Trainer's timing and throughput figures
_NOT_PLOTTED = ("step", "epoch", "total_flos")
_TIMING_SUFFIXES = ("_runtime", "_samples_per_second", "_steps_per_second")
_GROUP_TITLES = {
    "loss": "Losses",
    "learning_rate": "Learning rate",
    "training": "Other training scalars",
    "eval": "Evaluation metrics (eval_*)",
}


@dataclass
class ReportArguments:
    """The flags of ``hf-ssl report RUN --output_dir DIR``."""

    run_dir: str = field(metadata={"help": "A pretraining output_dir (its hf_ssl_run.json, or its checkpoints)."})
    output_dir: str = field(metadata={"help": "Folder to write report.md and its PNG pictures to."})
    eval_file: str | None = field(
        default=None,
        metadata={"help": "hf-ssl evaluate's JSON result for the table (default: eval_results.json in RUN, if any)."},
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Labelled set of the embedding map and the objective's pictures, as for evaluate; empty: the "
            "embedded default of the checkpoint's data kind."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    split: str = field(default="test", metadata={"help": "Split of the labelled set."})
    input_column: str | None = field(default=None, metadata={"help": "Input column (detected if not given)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected if not given)."})
    embedding_map: bool = field(default=True, metadata={"help": "Draw the 2-D map of the embeddings."})
    projection: str = field(
        default="pca",
        metadata={"help": "pca (linear: what a linear probe sees) or tsne (scikit-learn's t-SNE: local structure)."},
    )
    max_points: int = field(default=1000, metadata={"help": "Rows of the labelled set drawn at most (seeded sample)."})
    batch_size: int = field(default=128, metadata={"help": "Feature-extraction batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of the row sample, t-SNE and the objective's pictures."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets caches downloads."})

    def __post_init__(self) -> None:
        if not os.path.isdir(self.run_dir):
            raise UsageError(f"RUN {self.run_dir}: no such folder")
        check_choice("--projection", self.projection, ("pca", "tsne"))
        check_range("--max_points", self.max_points, 3)
        check_range("--batch_size", self.batch_size, 1)

    def load_split(self, default: tuple[str, Callable[[str], Any]] | None) -> Any:
        """The report's labelled set: ``--split`` of ``--dataset_name``, else of ``default``, the embedded
        ``(name, loader(split))`` of the data kind."""
        config, cache = self.dataset_config_name, self.cache_dir
        return load_data(self.dataset_name, self.split, config_name=config, cache_dir=cache, default=default)


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display).

    Raises:
        UsageError: matplotlib is not installed; the message names the extra that brings it.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise UsageError(f"hf-ssl report draws with matplotlib, which is not installed: {EXTRA_HINT}") from err
    return plt


# --- what the run logged -------------------------------------------------------------------------------------------


def run_record(run_dir: str | os.PathLike) -> RunInfo | None:
    """The run record (``hf_ssl_run.json``) of ``run_dir``, or ``None`` when it has none.

    Raises:
        UsageError: a record that is not readable JSON.
    """
    try:
        return RunInfo.load(run_dir)
    except (OSError, ValueError, TypeError) as err:
        raise UsageError(f"RUN {run_dir}: cannot read its {RUN_INFO_FILE}: {err}") from err


def read_run(run_dir: str | os.PathLike) -> tuple[RunInfo | None, list[dict[str, Any]]]:
    """The run record of ``run_dir`` and its log history; without a record (a run still going, or killed), the
    log history of its newest complete checkpoint's ``trainer_state.json``.

    Raises:
        UsageError: neither a run record nor a checkpoint with a trainer state, or no log entry at all.
    """
    info = run_record(run_dir)
    history = list(info.log_history) if info is not None else []
    source = RUN_INFO_FILE
    if not history:
        checkpoint = last_complete_checkpoint(run_dir)
        state = Path(checkpoint) / "trainer_state.json" if checkpoint else None
        if info is None and (state is None or not state.is_file()):
            raise UsageError(
                f"RUN {run_dir}: not a pretraining run folder (no {RUN_INFO_FILE}, no checkpoint-*/trainer_state.json)"
            )
        if state is not None and state.is_file():
            source = str(state)
            try:
                history = json.loads(state.read_text()).get("log_history") or []
            except (OSError, ValueError, AttributeError) as err:
                raise UsageError(f"RUN {run_dir}: cannot read {source}: {err}") from err
    if not any(_scalars(entry) for entry in history):
        raise UsageError(f"RUN {run_dir}: no log history in {source} (train with --logging_steps N to log scalars)")
    return info, history


def run_warnings(run_dir: str | os.PathLike) -> list[str]:
    """The ``warnings`` list of the run record (collapse and stall warnings of the health callbacks), if any; read
    from the file itself, so a record written by a newer version is read too."""
    path = Path(run_dir) / RUN_INFO_FILE
    try:
        warnings = json.loads(path.read_text()).get("warnings") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return []
    return [str(message) for message in warnings] if isinstance(warnings, list) else []


def _scalars(entry: dict[str, Any]) -> dict[str, float]:
    if "train_runtime" in entry:  # the run's closing summary: no point of a curve
        return {}
    return {
        key: float(value)
        for key, value in entry.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and key not in _NOT_PLOTTED
        and not key.endswith(_TIMING_SUFFIXES)
    }


def metric_group(key: str) -> str:
    """The figure a logged key is drawn in: its prefix for ``prefix/name`` keys (``health``), ``eval`` for the
    Trainer's ``eval_*`` keys, ``loss`` for ``loss`` and ``*_loss``, ``learning_rate``, else ``training``."""
    if "/" in key:
        return key.split("/", 1)[0]
    if key.startswith("eval_"):
        return "eval"
    if key == "loss" or key.endswith("_loss"):
        return "loss"
    if key == "learning_rate":
        return "learning_rate"
    return "training"


def group_curves(history: list[dict[str, Any]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Every logged scalar as a curve ``(steps, values)``, grouped by :func:`metric_group`, in page order (losses,
    learning rate, other training scalars, prefixed families by name, evaluation metrics)."""
    groups: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in _scalars(entry).items():
            steps, values = groups.setdefault(metric_group(key), {}).setdefault(key, ([], []))
            steps.append(int(step))
            values.append(value)
    first, last = ["loss", "learning_rate", "training"], ["eval"]
    order = [g for g in first if g in groups]
    order += sorted(g for g in groups if g not in first + last) + [g for g in last if g in groups]
    return {name: groups[name] for name in order}


def plot_group(plt: Any, title: str, curves: dict[str, tuple[list[int], list[float]]], path: Path) -> Path:
    """One figure of ``curves``, one panel per key (their scales differ), saved as PNG at ``path``."""
    columns = min(3, len(curves))
    rows = math.ceil(len(curves) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.9 * rows), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, curves.items(), strict=False):
        ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


# --- the embedding map ---------------------------------------------------------------------------------------------


def project_2d(features: torch.Tensor, method: str = "pca", seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``(N, F)`` features -> ``(N, 2)`` coordinates and the two axis labels.

    ``pca``: the two leading principal components (SVD of the centred features, signs fixed so the largest loading
    of each is positive), labelled with their share of the variance. ``tsne``: scikit-learn's t-SNE (van der Maaten
    & Hinton, 2008) from a PCA start, seeded.
    """
    x = features.double()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        coords = TSNE(2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x.numpy())
        return torch.from_numpy(coords).float(), ["t-SNE 1", "t-SNE 2"]
    x = x - x.mean(dim=0)
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)  # vh (min(N, F), F)
    components = torch.zeros(2, x.shape[1], dtype=x.dtype)
    components[: min(2, len(vh))] = vh[:2]
    largest = components.gather(1, components.abs().argmax(dim=1, keepdim=True))  # (2, 1)
    components = components * torch.where(largest < 0, -1.0, 1.0)
    variance = singular.pow(2)
    share = (variance / variance.sum().clamp_min(1e-12)).tolist() + [0.0, 0.0]
    return (x @ components.T).float(), [f"PC{i + 1} ({100 * share[i]:.0f}% of variance)" for i in range(2)]


def _class_ids(ds: Any, column: str) -> tuple[Callable[[Any], int], list[str]]:
    """``value -> class id`` of a label column and the class names (ClassLabel names, else the values as text,
    sorted)."""
    feature = ds.features[column]
    if hasattr(feature, "int2str"):
        return int, list(feature.names)
    names = sorted({str(v) for v in ds[column]})
    index = {name: i for i, name in enumerate(names)}
    return lambda value: index[str(value)], names


def embedding_map(plt: Any, args: ReportArguments, model_dir: str, path: Path) -> tuple[Path, str]:
    """Draw the 2-D map of the backbone's features of (at most ``args.max_points``) labelled rows.

    Returns:
        The PNG and a sentence saying what it shows.
    """
    model, spec = load_features(model_dir)
    task = get_task(spec.modality)
    ds = args.load_split(task.default_dataset)
    try:
        column = find_column(ds, spec.modality, args.input_column)
        label_column = find_label_column(ds, args.label_column)
    except UsageError as err:
        raise UsageError(f"embedding map, split {args.split!r}: {err}") from err
    if len(ds) > args.max_points:  # a seeded sample: the first rows of a sorted split would be one class
        ds = ds.select(sorted(random.Random(args.seed).sample(range(len(ds)), args.max_points)))
    ds = task.prepare(ds.select_columns([column, label_column]), column)
    class_id, names = _class_ids(ds, label_column)
    preprocess = task.preprocessor(model_dir, model.config)

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = preprocess([row[column] for row in batch])
        inputs["labels"] = torch.tensor([class_id(row[label_column]) for row in batch])
        return inputs

    device = default_device()
    sets, label_tensor = extract_feature_sets(
        {"model": model_encoder(model.to(device).eval(), spec.pool)},
        ds,
        collate,
        batch_size=args.batch_size,
        device=device,
    )
    features = sets["model"]  # a backbone read per layer: its last layer, as evaluate reports at the top level
    coords, axis_labels = project_2d(last_layer(features), args.projection, args.seed)

    figure, ax = plt.subplots(figsize=(6.4, 5.2))
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for class_id, class_name in enumerate(names):
        chosen = label_tensor == class_id
        if chosen.any():
            ax.scatter(
                *coords[chosen].T.tolist(), s=9, alpha=0.75, color=colours(class_id % colours.N), label=class_name
            )
    ax.set_xlabel(axis_labels[0], fontsize=8)
    ax.set_ylabel(axis_labels[1], fontsize=8)
    ax.tick_params(labelsize=7)
    if len(names) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    dataset = args.dataset_name or task.default_dataset[0]
    ax.set_title(f"{dataset} {args.split}: {len(label_tensor)} rows", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    layer = f"; {layer_key(max(features))} shown" if isinstance(features, dict) else ""
    method = {"pca": "PCA", "tsne": "t-SNE"}[args.projection]
    what = (
        f"{method} of the features ({spec.description}{layer}) of {len(label_tensor)} rows of {dataset} "
        f"split {args.split!r}, coloured by {label_column!r}."
    )
    return path, what


# --- the page ------------------------------------------------------------------------------------------------------


def _model_dir(run_dir: str) -> str | None:
    """The run's final model, else its newest complete checkpoint, else ``None``."""
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        return run_dir
    return last_complete_checkpoint(run_dir)


def _read_eval(args: ReportArguments) -> dict[str, Any] | None:
    path = args.eval_file or os.path.join(args.run_dir, "eval_results.json")
    if args.eval_file is None and not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            results = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"--eval_file {path}: cannot read it: {err}") from err
    if not isinstance(results, dict):
        raise UsageError(f"--eval_file {path}: not an hf-ssl evaluate result (a JSON object)")
    return results


def _relative(path: Path, output_dir: Path) -> str:
    return os.path.relpath(path, output_dir).replace(os.sep, "/")


def write_report(args: ReportArguments, pictures: Pictures | None = None) -> Path:
    """Write ``report.md`` and its pictures to ``args.output_dir``.

    Args:
        args: :class:`ReportArguments`.
        pictures: the run's objective's ``report_pictures`` hook, or ``None``.

    Returns:
        The page's path.

    Raises:
        UsageError: matplotlib missing, not a run folder, no log history, an unreadable eval file, or a labelled set
            that cannot be read (``--embedding_map false`` skips the map).
    """
    plt = pyplot()  # first: a missing extra is said before any work
    info, history = read_run(args.run_dir)
    evaluation = _read_eval(args)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    lines = [f"# Run report: `{args.run_dir}`", ""]
    if info is not None:
        data = info.dataset_name or info.dataset_source or "the embedded default data"
        lines += [
            f"{info.objective} on {data} ({info.num_examples or 'streamed'} examples), {info.global_step} steps on "
            f"{info.world_size} process(es), hf_ssl {info.hf_ssl_version}.",
            "",
        ]
    warnings = run_warnings(args.run_dir)
    if warnings:
        lines += ["## Warnings", "", *[f"- {message}" for message in warnings], ""]

    lines += ["## Training curves", ""]
    for group, curves in group_curves(history).items():
        title = _GROUP_TITLES.get(group, f"{group}/*")
        png = plot_group(plt, title, curves, output / f"curves_{group}.png")
        lines += [f"### {title}", "", f"![{title}]({_relative(png, output)})", ""]

    if evaluation is not None:
        lines += ["## Evaluation", ""]
        if evaluation.get("model"):
            where = f"{evaluation.get('dataset', '?')}, split {evaluation.get('split')!r}"
            lines += [f"`{evaluation['model']}` on {where} ({evaluation.get('num_test')} rows scored).", ""]
        lines += [format_markdown_table(evaluation), ""]

    model_dir = _model_dir(args.run_dir)
    if args.embedding_map and model_dir is not None:
        png, what = embedding_map(plt, args, model_dir, output / "embeddings.png")
        lines += ["## Embeddings", "", what, "", f"![Embedding map]({_relative(png, output)})", ""]

    if pictures is not None and model_dir is not None:
        made = pictures(model_dir, output, args)
        if made:
            lines += [f"## Pictures of the {info.objective if info else 'run'}'s objective", ""]
            for title, png in made:
                lines += [f"### {title}", "", f"![{title}]({_relative(Path(png), output)})", ""]

    page = output / REPORT_FILE
    page.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    logger.info("wrote %s", page)
    return page
