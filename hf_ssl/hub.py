"""Backbone exports in their own ecosystem's format, model cards rendered from ``model_cards/``, Hub uploads.

A pretraining checkpoint (``hf-ssl pretrain`` output folder) holds the whole objective: backbone, heads and
the config of the run. What a user keeps is the backbone, saved so that its ecosystem loads it without
``hf_ssl`` (SimCLR: timm's Hub format, loadable with ``timm.create_model("hf-hub:...")`` and transformers'
``AutoModel``), next to a model card that says how it was trained and how well it does.

Each objective registers an exporter for its ``model_type`` with :func:`register_exporter`;
:func:`export_backbone` dispatches on the checkpoint's config.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import timm
from huggingface_hub import HfApi
from transformers import AutoConfig, AutoModel, PretrainedConfig

import hf_ssl
from hf_ssl.data import DEFAULT_DATASET
from hf_ssl.models.simclr import SimCLRConfig, SimCLRModel, backbone_kwargs
from hf_ssl.trainer import RUN_INFO_FILE

logger = logging.getLogger(__name__)

EVAL_RESULTS_FILE = "eval_results.json"
"""Evaluation results looked for in the checkpoint folder when no ``eval_file`` is given."""

REPO_ID_PLACEHOLDER = "<user>/<model-name>"
"""Stands for the repository id in a card's code snippets until :func:`push_folder` knows it."""

SIMCLR_PAPER = ("arXiv:2002.05709", "A Simple Framework for Contrastive Learning of Visual Representations")

# pretrained_cfg fields that describe the weights timm's registry ships for an architecture, not ours
_SOURCE_WEIGHT_FIELDS = ("tag", "description", "origin_url", "paper_name", "paper_ids", "notes", "license")


@dataclass
class ExportContext:
    """Everything an exporter gets.

    Args:
        model_dir: the checkpoint folder.
        output_dir: the folder to write the export into (exists, holds at most a previous export).
        config: the checkpoint's config, loaded with ``AutoConfig``.
        run_info: the checkpoint's ``hf_ssl_run.json`` (dataset, training arguments, metrics), if present.
        evaluation: the evaluation results (``hf-ssl evaluate --output_file``), if any.
    """

    model_dir: Path
    output_dir: Path
    config: PretrainedConfig
    run_info: dict[str, Any] | None
    evaluation: dict[str, Any] | None


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


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(model_type: str, files: Iterable[str]) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(context: ExportContext) -> None`` as the exporter of ``model_type``.

    Args:
        model_type: the objective config's ``model_type`` (``"hf_ssl_simclr"``).
        files: the file names the exporter writes.
    """

    def decorate(fn: Callable[[ExportContext], None]) -> Callable[[ExportContext], None]:
        EXPORTERS[model_type] = Exporter(fn, tuple(files))
        return fn

    return decorate


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
        FileNotFoundError: ``model_dir`` or the given ``eval_file`` does not exist.
        ValueError: no exporter for the checkpoint's model type, or ``output_dir`` is unsuitable.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such checkpoint folder")
    config = AutoConfig.from_pretrained(model_dir)
    exporter = EXPORTERS.get(config.model_type)
    if exporter is None:
        raise ValueError(
            f"{model_dir}: no exporter for model type {config.model_type!r}; "
            f"exportable types: {', '.join(sorted(EXPORTERS))}"
        )
    _check_output_dir(model_dir, output_dir, exporter.files)
    if eval_file is None and (model_dir / EVAL_RESULTS_FILE).is_file():
        eval_file = model_dir / EVAL_RESULTS_FILE
    if eval_file is not None and not Path(eval_file).is_file():
        raise FileNotFoundError(f"{eval_file}: no such evaluation results file")
    run_file = model_dir / RUN_INFO_FILE
    context = ExportContext(
        model_dir=model_dir,
        output_dir=output_dir,
        config=config,
        run_info=_read_json(run_file) if run_file.is_file() else None,
        evaluation=_read_json(Path(eval_file)) if eval_file is not None else None,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    exporter.export(context)
    logger.info("exported the %s backbone of %s to %s", config.model_type, model_dir, output_dir)
    return output_dir


def _check_output_dir(model_dir: Path, output_dir: Path, files: tuple[str, ...]) -> None:
    if output_dir.exists() and output_dir.resolve() == model_dir.resolve():
        raise ValueError(f"{output_dir}: the export would overwrite the checkpoint; choose another output_dir")
    if output_dir.is_file():
        raise ValueError(f"{output_dir} is a file; output_dir must be a folder")
    if output_dir.is_dir():
        foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in files and not p.name.startswith("."))
        if foreign:
            raise ValueError(
                f"{output_dir} holds files that are not part of an export ({', '.join(foreign[:5])}); "
                "choose an empty or new output_dir"
            )


def _read_json(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


# ----------------------------------------------------------------------------------------------------
# model cards


def _load_template(name: str) -> str | None:
    path = resources.files("hf_ssl.model_cards") / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


_ENV = jinja2.Environment(
    loader=jinja2.FunctionLoader(_load_template),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


def render_model_card(template_name: str, **context: Any) -> str:
    """Render a model card template of ``model_cards/`` (installed as ``hf_ssl.model_cards``) with Jinja2.

    Undefined variables are errors, so a template and its caller cannot silently drift apart.

    Args:
        template_name: file name in ``model_cards/``, with or without ``.md`` (``"simclr"``).
        **context: the template's variables.

    Returns:
        The card's Markdown, YAML front matter included.

    Raises:
        FileNotFoundError: no such template.
    """
    name = template_name if template_name.endswith(".md") else f"{template_name}.md"
    try:
        template = _ENV.get_template(name)
    except jinja2.TemplateNotFound:
        available = sorted(p.name for p in resources.files("hf_ssl.model_cards").iterdir() if p.name.endswith(".md"))
        raise FileNotFoundError(f"no model card template {name!r}; available: {', '.join(available)}") from None
    return template.render(**context)


def evaluation_summary(results: dict[str, Any], model_label: str) -> dict[str, Any]:
    """The card's view of ``hf-ssl evaluate`` results: headline facts and one row per feature kind.

    Args:
        results: the evaluation JSON (``knn``, ``linear_probe``, ``baselines.{random_init,raw_pixels}``, ...).
        model_label: name of the pretrained model's row.

    Returns:
        ``dataset``, ``split``, ``num_train``, ``num_test``, ``knn_k``, ``knn_temperature`` (``None`` when
        absent) and ``rows``: ``{"name", "knn", "linear_probe"}`` as ``hf-ssl evaluate`` prints them.
    """
    from hf_ssl.evaluation.report import result_rows

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
        "rows": rows,
    }


def training_rows(run_info: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The card's table rows for a run's ``hf_ssl_run.json``: dataset, length, batch size, optimiser, result.

    Args:
        run_info: the file's content, or ``None`` when the checkpoint has none.
    """
    if run_info is None:
        return [("dataset", f"unknown (the checkpoint has no `{RUN_INFO_FILE}`)")]
    rows = []
    dataset = str(run_info.get("dataset_name") or "unknown")
    if run_info.get("dataset_config_name"):
        dataset += f" ({run_info['dataset_config_name']})"
    if run_info.get("train_split"):
        dataset += f", split `{run_info['train_split']}`"
    if run_info.get("num_examples"):
        dataset += f", {run_info['num_examples']} images"
    rows.append(("dataset", dataset))
    args = run_info.get("training_args") or {}
    metrics = run_info.get("train_metrics") or {}
    max_steps = args.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        length = f"{max_steps} steps"
    elif args.get("num_train_epochs") is not None:
        length = f"{args['num_train_epochs']} epochs"
    else:
        length = None
    if length and metrics.get("epoch") is not None:
        length += f" ({float(metrics['epoch']):.2f} epochs run)"
    if length:
        rows.append(("training length", length))
    per_device = args.get("per_device_train_batch_size")
    if per_device is not None:
        world, accumulation = args.get("world_size") or 1, args.get("gradient_accumulation_steps") or 1
        rows.append(
            (
                "batch size",
                f"{per_device * world * accumulation} ({per_device} per device x {world} processes x "
                f"{accumulation} accumulation steps)",
            )
        )
    optimiser = [
        f"{label} {args[key]}"
        for key, label in (
            ("optim", "optimizer"),
            ("learning_rate", "learning rate"),
            ("weight_decay", "weight decay"),
        )
        if args.get(key) is not None
    ]
    if optimiser:
        rows.append(("optimisation", ", ".join(optimiser)))
    if args.get("lr_scheduler_type") is not None:
        rows.append(("schedule", f"{args['lr_scheduler_type']}, {args.get('warmup_steps', 0)} warmup steps"))
    if args.get("seed") is not None:
        rows.append(("seed", str(args["seed"])))
    if metrics.get("train_loss") is not None:
        rows.append(("mean training loss", f"{metrics['train_loss']:.4f}"))
    if metrics.get("train_runtime") is not None:
        rows.append(("training time", f"{metrics['train_runtime']:.0f} s"))
    return rows


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DATA_FILE_SUFFIXES = (".parquet", ".csv", ".tsv", ".json", ".jsonl", ".arrow", ".txt")


def hub_datasets(run_info: dict[str, Any] | None) -> list[str]:
    """The Hub dataset id of a run for the card's ``datasets:`` metadata; empty for local or embedded data."""
    name = (run_info or {}).get("dataset_name")
    if (
        not isinstance(name, str)
        or name == DEFAULT_DATASET
        or not _HUB_ID.match(name)
        or name.lower().endswith(_DATA_FILE_SUFFIXES)
        or os.path.exists(name)
    ):
        return []
    return [name]


# ----------------------------------------------------------------------------------------------------
# SimCLR: timm's Hub format


def simclr_data_config(config: SimCLRConfig) -> dict[str, Any]:
    """timm's preprocessing settings equal to ``hf_ssl.data.eval_transform``: shorter side resized to
    ``image_size`` (bilinear), centre crop (``crop_pct`` 1), the config's mean and std."""
    return {
        "input_size": (config.num_channels, config.image_size, config.image_size),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": tuple(config.image_mean),
        "std": tuple(config.image_std),
    }


@register_exporter(SimCLRConfig.model_type, files=("config.json", "model.safetensors", "README.md"))
def export_simclr(context: ExportContext) -> None:
    """Write a SimCLR backbone in timm's Hub format (``config.json`` + ``model.safetensors``) and its card.

    ``config.json`` carries the rebuild arguments (``model_args``, e.g. the small-image stem) and a
    ``pretrained_cfg`` with OUR preprocessing, so ``timm.create_model("hf-hub:...", pretrained=True)``,
    ``timm.data.resolve_model_data_config`` and transformers' ``TimmWrapperModel`` / ``AutoImageProcessor``
    all reproduce the backbone and its input pipeline.
    """
    config: SimCLRConfig = context.config  # type: ignore[assignment]
    model, info = AutoModel.from_pretrained(context.model_dir, output_loading_info=True)
    if not isinstance(model, SimCLRModel):
        raise TypeError(f"expected AutoModel to build a SimCLRModel from {context.model_dir}, got {type(model)}")
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"{context.model_dir}: the checkpoint lacks backbone weights ({', '.join(missing[:5])}, ...); "
            "refusing to export randomly initialised layers"
        )
    backbone = model.backbone.eval()
    timm_kwargs = backbone_kwargs(config)
    timm.models.save_for_hf(
        backbone,
        context.output_dir,
        model_args=timm_kwargs,
        data_config=simclr_data_config(config),
        safe_serialization=True,
    )
    source_license = (backbone.pretrained_cfg or {}).get("license")
    license_id = source_license if config.pretrained_backbone and source_license else "apache-2.0"
    hub_config = _finalize_timm_config(context.output_dir / "config.json", license_id, SIMCLR_PAPER)

    pretrained_cfg = hub_config["pretrained_cfg"]
    call_args = "".join(f", {key}={value!r}" for key, value in timm_kwargs.items())
    evaluation = context.evaluation
    if evaluation is not None:
        evaluation = evaluation_summary(evaluation, f"SimCLR {config.backbone} (this model)")
    card = render_model_card(
        "simclr.md",
        repo_id=REPO_ID_PLACEHOLDER,
        license=license_id,
        datasets=hub_datasets(context.run_info),
        dataset_name=(context.run_info or {}).get("dataset_name"),
        hf_ssl_version=hf_ssl.__version__,
        backbone=config.backbone,
        backbone_call=f"timm.create_model({config.backbone!r}{call_args})",
        num_features=backbone.num_features,
        num_channels=pretrained_cfg["input_size"][0],
        image_size=config.image_size,
        interpolation=pretrained_cfg["interpolation"],
        crop_pct=pretrained_cfg["crop_pct"],
        image_mean=list(pretrained_cfg["mean"]),
        image_std=list(pretrained_cfg["std"]),
        config=config,
        training_rows=training_rows(context.run_info),
        evaluation=evaluation,
    )
    (context.output_dir / "README.md").write_text(card, encoding="utf-8")


def _finalize_timm_config(path: Path, license_id: str, paper: tuple[str, str]) -> dict[str, Any]:
    """Make timm's ``config.json`` describe our weights and load through every timm front end.

    ``num_classes`` leaves ``model_args``: transformers' ``TimmWrapperModel`` passes its own and would get it
    twice; timm takes it from the root ``num_classes`` / the caller. The registry's description of its own
    weights (tag, license, paper, ...) is replaced by ours.
    """
    hub_config = json.loads(path.read_text())
    hub_config.get("model_args", {}).pop("num_classes", None)
    pretrained_cfg = hub_config["pretrained_cfg"]
    for key in _SOURCE_WEIGHT_FIELDS:
        pretrained_cfg.pop(key, None)
    pretrained_cfg.update(license=license_id, paper_ids=paper[0], paper_name=paper[1])
    path.write_text(json.dumps(hub_config, indent=2) + "\n")
    return hub_config


# ----------------------------------------------------------------------------------------------------
# Hub


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload backbone exported with hf_ssl",
) -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``folder`` (an export) to it.

    The card's code snippets name the repository by a placeholder until now; it is replaced in
    ``folder/README.md`` by the full repository id before the upload, so the folder matches what is on the
    Hub.

    Args:
        folder: the exported folder.
        repo_id: ``user/name`` (or ``name``, in the token owner's namespace).
        token: Hub token; default the saved login.
        private: create the repository as private (an existing repository keeps its visibility).
        commit_message: the upload's commit message.

    Returns:
        The URL of the commit.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    api = HfApi(token=token, library_name="hf_ssl", library_version=hf_ssl.__version__)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    full_id = getattr(repo_url, "repo_id", None) or repo_id
    card = folder / "README.md"
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if REPO_ID_PLACEHOLDER in text:
            card.write_text(text.replace(REPO_ID_PLACEHOLDER, full_id), encoding="utf-8")
    commit = api.upload_folder(repo_id=full_id, folder_path=folder, commit_message=commit_message)
    return str(getattr(commit, "commit_url", None) or commit)
