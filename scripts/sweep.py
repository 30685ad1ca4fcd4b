"""What the one-command experiments share (``mae_mask_ratio.py``, ``simclr_augmentation_ablation.py``): runs of
``hf-ssl pretrain`` that differ in a few flags and share everything else (config file, seed, budget, data), each
evaluated with ``hf-ssl evaluate`` (kNN and linear probe), the random-init and raw-pixel floors with the first run
only; the rows and floors saved as ``results.json`` beside a table."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def sweep_parser(description: str, objective: str, default_config: Path, output_dir: str) -> argparse.ArgumentParser:
    """The flags every sweep has; a script adds its own (what its runs differ in)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", default=str(default_config), help=f"YAML of hf-ssl pretrain {objective} flags shared by every run"
    )
    parser.add_argument("--dataset_name", default=None, help="pretraining and evaluation data (default: the config's)")
    parser.add_argument("--train_split", default=None, help="split to pretrain on (default: the config's, or train)")
    parser.add_argument("--max_steps", type=int, default=None, help="optimisation steps per run (default: config's)")
    parser.add_argument("--eval_split", default="test", help="split evaluated on")
    parser.add_argument("--eval_train_split", default="train", help="split of the kNN bank and the linear probe")
    parser.add_argument("--seed", type=int, default=42, help="the same seed for every run")
    parser.add_argument("--output_dir", default=output_dir, help="one folder per run, and results.json")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's flags, and the ``hf-ssl pretrain`` flags after ``--`` (passed to every run)."""
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    return parser.parse_args(argv), extra


def evaluated_dataset(args: argparse.Namespace) -> str | None:
    """The data the runs are evaluated on: ``--dataset_name``, else the config's (``None``: the embedded default)."""
    if args.dataset_name:
        return args.dataset_name
    import yaml

    return (yaml.safe_load(Path(args.config).read_text()) or {}).get("dataset_name")


def run_sweep(
    objective: str,
    runs: list[tuple[Path, list[str]]],
    args: argparse.Namespace,
    extra: list[str],
    dataset_name: str | None,
    row_of: Callable[[Path, float, dict[str, Any]], dict[str, Any]],
    **evaluation: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pretrains and evaluates each ``(output folder, its own flags)`` of ``runs`` in turn.

    Args:
        objective: what ``hf-ssl pretrain`` trains.
        runs: each run's folder and the flags that set it apart.
        args: the sweep's flags (:func:`sweep_parser`).
        extra: ``hf-ssl pretrain`` flags for every run (after ``--``).
        dataset_name: the evaluation data (:func:`evaluated_dataset`).
        row_of: ``(run folder, pretraining seconds, evaluation results)`` -> the run's row.
        evaluation: further ``EvaluationArguments`` fields.

    Returns:
        The rows, and the floors (random-init and raw-pixel results, evaluated with the first run).
    """
    from hf_ssl.cli import main as hf_ssl_main
    from hf_ssl.evaluation import evaluate
    from hf_ssl.evaluation.arguments import EvaluationArguments

    common = ["--config", args.config, "--seed", str(args.seed), "--save_strategy", "no", "--disable_tqdm", "true"]
    for flag in ("dataset_name", "train_split", "max_steps"):
        if getattr(args, flag):
            common += [f"--{flag}", str(getattr(args, flag))]
    rows, floors = [], {}
    for i, (run, flags) in enumerate(runs):
        started = time.perf_counter()
        hf_ssl_main(["pretrain", objective, *common, *extra, *flags, "--output_dir", str(run)])
        seconds = time.perf_counter() - started
        results = evaluate(
            EvaluationArguments(
                model_name_or_path=str(run),
                dataset_name=dataset_name,
                split=args.eval_split,
                train_split=args.eval_train_split,
                output_file=str(run / "eval_results.json"),
                baselines=i == 0,  # the floors do not depend on what the runs vary
                **evaluation,
            )
        )
        floors.update(results.get("baselines") or {})
        rows.append(row_of(run, seconds, results))
    return rows, floors


def percent(entry: dict | None) -> str:
    """An accuracy entry as ``"12.3%"`` (``"-"`` when absent)."""
    return f"{100 * entry['accuracy']:.1f}%" if entry else "-"


def save_results(out: Path, rows: list[dict], floors: dict, table: str, table_file: str) -> None:
    """``results.json`` (rows and floors) and the table, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"runs": rows, "baselines": floors}, indent=2) + "\n")
    (out / table_file).write_text(table + "\n")
