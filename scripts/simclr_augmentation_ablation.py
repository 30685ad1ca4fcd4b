"""SimCLR's augmentation ablation (Chen et al., 2020, arXiv:2002.05709, section 3 and figure 5) as one command.

Pretrains SimCLR with the full augmentation pipeline, then once more with each augmentation removed in turn (random
resized crop, horizontal flip, colour jitter, grayscale, Gaussian blur), on the same data with the same budget
(steps, batch, seed, schedule: everything but the one augmentation). Removing one sets the config value that turns it
off (``hf_ssl.models.simclr.configuration_simclr.AUGMENTATIONS``: ``crop_min_scale 1``, ``hflip_prob 0``,
``color_jitter_prob 0``, ``grayscale_prob 0``, ``blur_prob 0``), so each run's ``config.json`` records what it
trained with. Each backbone's frozen features are evaluated with ``hf-ssl evaluate`` (kNN and linear probe); the
random-init backbone and raw pixels are evaluated once, on the first run, as the floor. Prints a Markdown table.

The full pipeline is the config's augmentations, each one the config turns off put back at ``SimCLRConfig``'s
default (the digit-scenes recipe leaves out flips), and Gaussian blur with probability ``--blur_prob`` (0.5, the
paper's ImageNet value; the CIFAR-10 recipes leave blur off), so that every row removes something.

    # the embedded digit-scenes, the README's first config, a couple of minutes per run
    OMP_NUM_THREADS=1 python scripts/simclr_augmentation_ablation.py
    # CIFAR-10 with the README's config at a much smaller budget each (the README's Results)
    OMP_NUM_THREADS=1 python scripts/simclr_augmentation_ablation.py --config scripts/configs/simclr_cifar10.yaml \\
        --max_steps 80 --eval_train_split "train[:5000]" --eval_split "test[:5000]" \\
        --output_dir runs/simclr-ablation-cifar10 -- --train_split "train[:10000]" --per_device_train_batch_size 128

Any further ``hf-ssl pretrain simclr`` flag can follow ``--`` (e.g. ``-- --learning_rate 2e-3``).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "scripts" / "configs" / "simclr_digit_scenes.yaml"
sys.path.insert(0, str(REPO / "scripts"))

from sweep import evaluated_dataset, parse, percent, run_sweep, save_results, sweep_parser  # noqa: E402


def parse_args(argv: list[str]):
    from hf_ssl.models.simclr.configuration_simclr import AUGMENTATIONS

    parser = sweep_parser(__doc__, "simclr", DEFAULT_CONFIG, "runs/simclr-ablation")
    parser.add_argument(
        "--remove",
        nargs="+",
        choices=list(AUGMENTATIONS),
        default=list(AUGMENTATIONS),
        help="augmentations to remove, one run each (default: all)",
    )
    parser.add_argument("--blur_prob", type=float, default=0.5, help="Gaussian blur probability of the full pipeline")
    parser.add_argument("--probe_max_iter", type=int, default=1000, help="L-BFGS iterations of the linear probe")
    args, extra = parse(parser, argv)
    if not 0 < args.blur_prob <= 1:
        parser.error(f"--blur_prob must be in (0, 1], got {args.blur_prob}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max_steps must be >= 1, got {args.max_steps}")
    return args, extra


def full_pipeline(config_file: str, blur_prob: float) -> dict[str, float]:
    """The config values of the full pipeline: the config file's augmentations, plus each one it turns off at
    :class:`SimCLRConfig`'s default (a recipe may leave out flips, say), and blur at ``blur_prob``."""
    import yaml

    from hf_ssl.models.simclr.configuration_simclr import AUGMENTATIONS, SimCLRConfig

    keys = {key for values in AUGMENTATIONS.values() for key in values} | {"color_jitter_strength"}
    given = {k: v for k, v in (yaml.safe_load(Path(config_file).read_text()) or {}).items() if k in keys}
    applied, defaults = SimCLRConfig(**given).augmentations, SimCLRConfig()
    full = {"blur_prob": blur_prob}
    for name, off in AUGMENTATIONS.items():
        if name not in applied and name != "blur":
            full.update({key: getattr(defaults, key) for key in off})
    return full


def markdown_table(rows: list[dict], floors: dict) -> str:
    """One Markdown row per run (and per floor): augmentations used, kNN and linear-probe accuracy."""
    lines = [
        "| run | augmentations | pretraining s | kNN accuracy | linear probe accuracy |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['run']} | {', '.join(row['augmentations']) or 'none'} | {row['pretrain_seconds']:.0f} | "
            f"{percent(row['knn'])} | {percent(row['linear_probe'])} |"
        )
    for name, entry in floors.items():
        lines.append(f"| {name.replace('_', ' ')} | | | {percent(entry['knn'])} | {percent(entry['linear_probe'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args, extra = parse_args(list(sys.argv[1:] if argv is None else argv))
    from hf_ssl.models.simclr.configuration_simclr import AUGMENTATIONS, SimCLRConfig

    out = Path(args.output_dir)
    full = full_pipeline(args.config, args.blur_prob)
    values_of = {"full": full} | {f"no {name}": {**full, **AUGMENTATIONS[name]} for name in args.remove}
    runs = [
        (out / label.replace(" ", "-"), [item for key, value in values.items() for item in (f"--{key}", str(value))])
        for label, values in values_of.items()
    ]
    label_of = {run: label for (run, _), label in zip(runs, values_of, strict=True)}

    def row_of(run: Path, seconds: float, results: dict) -> dict:
        label = label_of[run]
        print(f"{label}: kNN {percent(results['knn'])}, linear probe {percent(results['linear_probe'])}", flush=True)
        return {
            "run": label,
            "augmentations": list(SimCLRConfig.from_pretrained(run).augmentations),
            "pretrain_seconds": round(seconds, 1),
            "knn": results["knn"],
            "linear_probe": results["linear_probe"],
        }

    dataset_name = evaluated_dataset(args)
    rows, floors = run_sweep("simclr", runs, args, extra, dataset_name, row_of, probe_max_iter=args.probe_max_iter)
    table = markdown_table(rows, floors)
    print(
        f"\nSimCLR augmentation ablation on {dataset_name}: train on {args.eval_train_split!r}, "
        f"test on {args.eval_split!r}\n\n{table}"
    )
    save_results(out, rows, floors, table, "results.md")
    return rows


if __name__ == "__main__":
    main()
