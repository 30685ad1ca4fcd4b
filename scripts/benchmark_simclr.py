"""SimCLR training throughput: hf_ssl against lightly's parts, same timm backbone, same data.

    .venv/bin/python scripts/benchmark_simclr.py --backbone convnext_atto --small_image_stem \
        --batch_size 256 --steps 20 --warmup 3 --num_workers 1 --repeats 3

Both run in one process, alternating (a, b, then b, a, ...) ``--repeats`` times; medians are reported.

(a) hf_ssl: ``SimCLRForPreTraining`` (timm backbone + ``SimCLRProjectionHead`` + NT-Xent), fed by a
    ``DataLoader`` over the undecoded HF dataset with ``ImageCollator(SimCLRTransform(config), column)``.
(b) lightly: the same timm backbone (``hf_ssl.backbones.timm.create_backbone``) (same timm name and kwargs), lightly's
    ``SimCLRProjectionHead`` and ``NTXentLoss``, and a collate function applying
    ``lightly.transforms.SimCLRTransform`` (same crop scale, jitter strength and probability, grayscale and
    blur probability, normalisation) to the decoded PIL images. As in lightly's examples, the two views go
    through the model in two forward passes (``--lightly_concat``: one batch of ``2B``, as hf_ssl does).
    lightly's head also has a BatchNorm1d on its output, which ours does not.

Same rows, batch size, workers, seed and optimizer (AdamW, same lr). A timed step is end to end: waiting for
the batch (decode + augmentation + collation, in the workers or, with ``--num_workers 0``, in the main
process), forward, backward and optimizer step; ``--warmup`` steps run first and are not timed. Throughput
counts images, not views. Each run also reports how its time splits between waiting for data and computing,
and the throughput at its median step (less sensitive to bursts of load from other processes). fp32 on CPU.

On a small shared machine, pass ``--num_threads 1``: with one OpenMP thread per core, any other busy process
stalls every parallel op at its barrier, and steps become several times slower, by amounts that differ
from run to run; one thread leaves a core to the DataLoader worker and to the rest of the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "vision" / "cifar10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="local dataset folder or file (load_data)")
    parser.add_argument("--split", default="train", help="split; the first warmup+steps batches are used")
    parser.add_argument("--backbone", default="convnext_atto", help="timm model name")
    stem = parser.add_mutually_exclusive_group()
    stem.add_argument("--small_image_stem", dest="small_image_stem", action="store_true", default=None)
    stem.add_argument("--no_small_image_stem", dest="small_image_stem", action="store_false")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="alternating a/b runs; medians are reported")
    parser.add_argument("--num_threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--projection_hidden_dim", type=int, default=2048)
    parser.add_argument("--projection_dim", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--crop_min_scale", type=float, default=0.08)
    parser.add_argument("--color_jitter_strength", type=float, default=0.5)
    parser.add_argument("--blur_prob", type=float, default=0.0)
    parser.add_argument("--only", choices=["hf_ssl", "lightly"], default=None, help="run one side only")
    parser.add_argument(
        "--lightly_concat", action="store_true", help="lightly side: one forward pass over both views (2B)"
    )
    args = parser.parse_args(argv)
    if args.small_image_stem is None:  # default: small stem for the default backbone (ConvNeXt at 32x32)
        args.small_image_stem = args.backbone == "convnext_atto"
    if min(args.steps, args.batch_size, args.repeats) < 1 or args.warmup < 0 or args.num_workers < 0:
        parser.error("--steps, --batch_size and --repeats must be >= 1; --warmup and --num_workers >= 0")
    return args


def load_rows(args: argparse.Namespace) -> tuple[Any, str]:
    """The first ``(warmup + steps) * batch_size`` rows of the split, and the image column."""
    from hf_ssl.data import find_column, load_data

    if not os.path.exists(args.data):
        sys.exit(
            f"benchmark_simclr: no data at {args.data!r}; point --data at a local dataset folder or file "
            "(e.g. a folder holding CIFAR-10's train.parquet)"
        )
    rows = (args.warmup + args.steps) * args.batch_size
    dataset = load_data(args.data, f"{args.split}[:{rows}]")
    if len(dataset) < rows:
        sys.exit(f"benchmark_simclr: {args.data} ({args.split}) has {len(dataset)} rows, needs {rows}")
    return dataset, find_column(dataset, "image")


def make_config(args: argparse.Namespace) -> Any:
    from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig

    return SimCLRConfig(
        backbone=args.backbone,
        small_image_stem=args.small_image_stem,
        image_size=args.image_size,
        projection_hidden_dim=args.projection_hidden_dim,
        projection_dim=args.projection_dim,
        projection_layers=2,
        loss_temperature=args.temperature,
        crop_min_scale=args.crop_min_scale,
        color_jitter_strength=args.color_jitter_strength,
        blur_prob=args.blur_prob,
    )


def make_loader(dataset: Any, collate_fn: Callable, args: argparse.Namespace) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(args.seed),
    )


def timed_training(
    loader: Iterable,
    step_loss: Callable[[Any], torch.Tensor],
    params: list[nn.Parameter],
    args: argparse.Namespace,
) -> dict[str, float]:
    """Runs ``warmup + steps`` optimizer steps; times the last ``steps`` end to end (data wait + compute)."""
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    batches = iter(loader)
    data_s = compute_s = 0.0
    losses, step_times = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        loss = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = time.perf_counter()
        losses.append(loss.item())
        if step >= args.warmup:
            data_s += fetched - start
            compute_s += done - fetched
            step_times.append(done - start)
    del batches  # shuts the workers down
    total = data_s + compute_s
    return {
        "img_per_s": args.steps * args.batch_size / total,
        # robust to the bursts of contention of a shared machine: throughput at the median step time
        "median_step_img_per_s": args.batch_size / statistics.median(step_times),
        "step_s": total / args.steps,
        "data_s": data_s / args.steps,
        "compute_s": compute_s / args.steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def run_hf_ssl(dataset: Any, column: str, config: Any, args: argparse.Namespace) -> dict[str, float]:
    from hf_ssl.data import ImageCollator, undecoded
    from hf_ssl.models.simclr.modeling_simclr import SimCLRForPreTraining
    from hf_ssl.models.simclr.transforms import SimCLRTransform

    torch.manual_seed(args.seed)
    model = SimCLRForPreTraining(config).train()
    collator = ImageCollator(SimCLRTransform(config), column)
    loader = make_loader(undecoded(dataset, column), collator, args)

    def step_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(pixel_values=batch["pixel_values"]).loss

    return timed_training(loader, step_loss, list(model.parameters()), args)


class LightlyCollate:
    """Rows with decoded PIL images -> ``(x0, x1)``, each ``(B, C, H, W)``, by lightly's transform."""

    def __init__(self, transform: Callable, column: str):
        self.transform, self.column = transform, column

    def __call__(self, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        views = [self.transform(_rgb(row[self.column])) for row in rows]  # each: [view0, view1]
        return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])


def _rgb(image: Any) -> Any:
    return image if image.mode == "RGB" else image.convert("RGB")


def run_lightly(dataset: Any, column: str, config: Any, args: argparse.Namespace) -> dict[str, float]:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    from hf_ssl.backbones.timm import create_backbone

    s = config.color_jitter_strength
    transform = SimCLRTransform(
        input_size=config.image_size,
        cj_prob=config.color_jitter_prob,
        cj_strength=s,  # brightness/contrast/saturation 0.8 s, hue 0.2 s: lightly's defaults times s
        min_scale=config.crop_min_scale,
        random_gray_scale=config.grayscale_prob,
        gaussian_blur=config.blur_prob,
        hf_prob=config.hflip_prob,
        normalize={"mean": list(config.image_mean), "std": list(config.image_std)},
    )
    torch.manual_seed(args.seed)
    backbone = create_backbone(config.backbone, config.timm_kwargs)
    head = SimCLRProjectionHead(backbone.num_features, config.projection_hidden_dim, config.projection_dim)
    model = nn.Sequential(backbone, head).train()
    criterion = NTXentLoss(temperature=config.loss_temperature)

    def step_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x0, x1 = batch
        if args.lightly_concat:
            z0, z1 = model(torch.cat([x0, x1])).chunk(2)
        else:  # as in lightly's examples
            z0, z1 = model(x0), model(x1)
        return criterion(z0, z1)

    loader = make_loader(dataset, LightlyCollate(transform, column), args)
    return timed_training(loader, step_loss, list(model.parameters()), args)


def describe(name: str, result: dict[str, float]) -> str:
    return (
        f"{name:8s} {result['img_per_s']:8.1f} img/s "
        f"({result['median_step_img_per_s']:.1f} at the median step)  step {result['step_s']:.3f} s "
        f"(data wait {result['data_s']:.3f} s, compute {result['compute_s']:.3f} s)  "
        f"loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    dataset, column = load_rows(args)
    config = make_config(args)
    print(
        f"config: backbone={config.backbone} small_image_stem={config.small_image_stem} "
        f"image_size={config.image_size} batch_size={args.batch_size} steps={args.steps} "
        f"warmup={args.warmup} num_workers={args.num_workers} repeats={args.repeats} "
        f"torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} lr={args.lr} "
        f"seed={args.seed} projection={config.projection_hidden_dim}->{config.projection_dim} "
        f"temperature={config.loss_temperature} crop_min_scale={config.crop_min_scale} "
        f"jitter=(p={config.color_jitter_prob}, s={config.color_jitter_strength}) "
        f"grayscale={config.grayscale_prob} blur={config.blur_prob} lightly_concat={args.lightly_concat} "
        f"data={args.data} ({len(dataset)} rows, column {column!r}) torch={torch.__version__} "
        "dtype=float32 device=cpu",
        flush=True,
    )
    runners = {"hf_ssl": run_hf_ssl, "lightly": run_lightly}
    names = [args.only] if args.only else list(runners)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            result = runners[name](dataset, column, config, args)
            results[name].append(result)
            print(f"repeat {repeat}: {describe(name, result)}", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    medians = {name: median(name, "img_per_s") for name in names}
    for name in names:
        print(
            f"median over {args.repeats} run(s), {name}: {medians[name]:.1f} img/s end to end, "
            f"{median(name, 'median_step_img_per_s'):.1f} img/s at the median step; per step: data wait "
            f"{median(name, 'data_s'):.3f} s, compute {median(name, 'compute_s'):.3f} s"
        )
    if len(names) == 1:
        print(f"{names[0]}: {medians[names[0]]:.1f} img/s")
        return
    robust = median("hf_ssl", "median_step_img_per_s") / median("lightly", "median_step_img_per_s")
    print(f"ratio at the median step (less sensitive to contention): {robust:.3f}")
    ours, theirs = medians["hf_ssl"], medians["lightly"]
    print(f"hf_ssl: {ours:.1f} img/s  lightly: {theirs:.1f} img/s  ratio: {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
