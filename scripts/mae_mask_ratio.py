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

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "scripts" / "configs" / "mae_digits.yaml"
sys.path.insert(0, str(REPO / "scripts"))

from sweep import evaluated_dataset, parse, percent, run_sweep, save_results, sweep_parser  # noqa: E402


def parse_args(argv: list[str]):
    parser = sweep_parser(__doc__, "mae", DEFAULT_CONFIG, "runs/mae-mask-ratio")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.9], help="mask ratios to compare")
    return parse(parser, argv)


def last_logged_loss(run: Path) -> tuple[float | None, int]:
    info = json.loads((run / "hf_ssl_run.json").read_text())
    logged = [entry for entry in info["log_history"] if "loss" in entry]
    return (float(logged[-1]["loss"]) if logged else None), int(info["global_step"])


def main(argv: list[str] | None = None) -> list[dict]:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    out = Path(args.output_dir)
    ratio_of = {out / f"ratio-{ratio:g}": ratio for ratio in args.ratios}

    def row_of(run: Path, seconds: float, results: dict) -> dict:
        loss, steps = last_logged_loss(run)
        return {
            "mask_ratio": ratio_of[run],
            "steps": steps,
            "pretrain_seconds": round(seconds, 1),
            "final_train_loss": loss,
            "test_reconstruction_loss": (results.get("reconstruction") or {}).get("loss"),
            "knn": results["knn"],
            "linear_probe": results["linear_probe"],
        }

    runs = [(run, ["--mask_ratio", str(ratio)]) for run, ratio in ratio_of.items()]
    dataset_name = evaluated_dataset(args)
    rows, floors = run_sweep("mae", runs, args, extra, dataset_name, row_of)

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
    save_results(out, rows, floors, table, "results.txt")
    return rows


if __name__ == "__main__":
    main()
