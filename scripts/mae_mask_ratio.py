"""MAE's mask-ratio experiment (He et al., 2021, arXiv:2111.06377, figure 5) as one command.

Pretrains MAE at several mask ratios on the same data with the same budget (steps, batch, seed, schedule: everything
but ``--mask_ratio``), evaluates each encoder's frozen features (kNN and linear probe, ``hf-ssl evaluate``), and
prints one row per ratio: the last logged training loss, the masked reconstruction loss on the test images, kNN and
linear-probe accuracy. The random-init encoder and raw pixels are evaluated once, on the first run, as the floor.
Losses of different ratios are not comparable to each other (a higher ratio predicts more patches from fewer);
accuracies are.

    # the embedded digits, a small ViT, a minute or two per ratio
    OMP_NUM_THREADS=1 python scripts/mae_mask_ratio.py
    # CIFAR-10 with the README's config, a smaller budget each
    OMP_NUM_THREADS=1 python scripts/mae_mask_ratio.py --config scripts/configs/mae_cifar10.yaml \\
        --dataset_name ../shared/data/vision/cifar10 --max_steps 300 --eval_train_split "train[:10000]" \\
        --output_dir runs/mae-mask-ratio-cifar10 -- --warmup_steps 30

Any further ``hf-ssl pretrain mae`` flag can follow ``--`` (e.g. ``-- --learning_rate 2e-3``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "scripts" / "configs" / "mae_digits.yaml"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.9], help="mask ratios to compare")
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="YAML of hf-ssl pretrain mae flags shared by every run"
    )
    parser.add_argument(
        "--dataset_name", default=None, help="pretraining and evaluation data (default: the config's, else digits)"
    )
    parser.add_argument("--train_split", default=None, help="split to pretrain on (default: the config's, or train)")
    parser.add_argument("--max_steps", type=int, default=None, help="optimisation steps per ratio (default: config's)")
    parser.add_argument("--eval_split", default="test", help="split evaluated on")
    parser.add_argument("--eval_train_split", default="train", help="split of the kNN bank and the linear probe")
    parser.add_argument("--seed", type=int, default=42, help="the same seed for every run")
    parser.add_argument("--output_dir", default="runs/mae-mask-ratio", help="one folder per ratio, and results.json")
    return parser.parse_args(argv), extra


def last_logged_loss(run: Path) -> tuple[float | None, int]:
    info = json.loads((run / "hf_ssl_run.json").read_text())
    logged = [entry for entry in info["log_history"] if "loss" in entry]
    return (float(logged[-1]["loss"]) if logged else None), int(info["global_step"])


def percent(entry: dict | None) -> str:
    return f"{100 * entry['accuracy']:.1f}%" if entry else "-"


def main(argv: list[str] | None = None) -> list[dict]:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    from hf_ssl.cli import main as hf_ssl_main
    from hf_ssl.evaluation import evaluate
    from hf_ssl.evaluation.arguments import EvaluationArguments

    out = Path(args.output_dir)
    common = ["--config", args.config, "--seed", str(args.seed), "--save_strategy", "no", "--disable_tqdm", "true"]
    if args.dataset_name:
        common += ["--dataset_name", args.dataset_name]
    if args.train_split:
        common += ["--train_split", args.train_split]
    if args.max_steps:
        common += ["--max_steps", str(args.max_steps)]
    dataset_name = args.dataset_name
    if dataset_name is None:  # evaluate on the data the config pretrains on
        import yaml

        dataset_name = (yaml.safe_load(Path(args.config).read_text()) or {}).get("dataset_name")

    rows, floors = [], {}
    for i, ratio in enumerate(args.ratios):
        run = out / f"ratio-{ratio:g}"
        started = time.perf_counter()
        hf_ssl_main(["pretrain", "mae", *common, *extra, "--mask_ratio", str(ratio), "--output_dir", str(run)])
        seconds = time.perf_counter() - started
        results = evaluate(
            EvaluationArguments(
                model_name_or_path=str(run),
                dataset_name=dataset_name,
                split=args.eval_split,
                train_split=args.eval_train_split,
                output_file=str(run / "eval_results.json"),
                baselines=i == 0,  # the floors do not depend on the ratio
            )
        )
        floors.update(results.get("baselines") or {})
        loss, steps = last_logged_loss(run)
        rows.append(
            {
                "mask_ratio": ratio,
                "steps": steps,
                "pretrain_seconds": round(seconds, 1),
                "final_train_loss": loss,
                "test_reconstruction_loss": (results.get("reconstruction") or {}).get("loss"),
                "knn": results["knn"],
                "linear_probe": results["linear_probe"],
            }
        )

    widths = (10, 5, 10, 14, 6, 12)
    names = ("mask ratio", "steps", "final loss", "test rec. loss", "kNN", "linear probe")

    def line(*cells: str) -> str:
        return "  ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True))

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [line(*names), "-" * len(line(*names))]
    for row in rows:
        lines.append(
            line(
                f"{row['mask_ratio']:g}",
                str(row["steps"]),
                number(row["final_train_loss"]),
                number(row["test_reconstruction_loss"]),
                percent(row["knn"]),
                percent(row["linear_probe"]),
            )
        )
    for name, entry in floors.items():
        lines.append(line(name.replace("_", " "), "", "", "", percent(entry["knn"]), percent(entry["linear_probe"])))
    table = "\n".join(lines)
    print(
        f"\nMAE mask ratio on {dataset_name or 'the embedded digits'}: train on {args.eval_train_split!r}, "
        f"test on {args.eval_split!r}\n{table}"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"runs": rows, "baselines": floors}, indent=2) + "\n")
    (out / "results.txt").write_text(table + "\n")
    return rows


if __name__ == "__main__":
    main()
