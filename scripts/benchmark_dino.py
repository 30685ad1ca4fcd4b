"""DINO training step time: hf_ssl against lightly's DINO parts, same timm backbone, same images, alternating steps.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/benchmark_dino.py --num_threads 1

Both sides are built in one process and their optimizer steps alternate (a step of one, a step of the other, the
order swapped every step), so a burst of load from other processes hits both alike. A timed step is the whole
step, in the main process: augmenting ``--batch_size`` decoded PIL images into the global and local views, the
student's forward on every view and the teacher's on the global ones, the loss, backward, the optimizer step
(AdamW) and the teacher's EMA update. ``--warmup`` steps of each side run first and are not timed.

(a) hf_ssl: ``DINOForPreTraining`` (timm backbone + ``DINOProjectionHead``, its ``MomentumTeacher``, ``DINOLoss``
    with its center), its views made by ``ImageCollator(DINOTransform(config), column)``, the teacher updated by
    ``model.update_teacher`` with the momentum of ``hf_ssl.teachers.cosine_momentum``.
(b) lightly 1.6: the same timm backbone (``hf_ssl.backbones.timm.create_backbone``, same name and kwargs),
    ``DINOProjectionHead`` (same sizes), a copy of both as teacher (``deactivate_requires_grad``),
    ``DINOLoss`` (same temperatures and center momentum), ``update_momentum`` with ``cosine_schedule``, and
    ``DINOTransform`` with the same crops (sizes, scales, bicubic), flip, jitter (lightly's 0.8/0.8/0.4/0.2 times
    ``cj_strength=0.5`` = DINO's 0.4/0.4/0.2/0.1), grayscale, blur and solarization probabilities and
    normalisation. As in lightly's DINO example, each view goes through the student in its own forward pass
    (``--lightly_batched``: one pass per resolution, as hf_ssl does).

Differences that remain: lightly's transform solarizes only the second global view (as DINO); hf_ssl cycles
``global_solarization_probs`` (the default (0, 0.2) is the same). The loss values differ (different weights and
views), only the work is the same. fp32 on CPU; pass ``--num_threads 1`` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "vision" / "cifar10")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="local dataset folder or file (load_data)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--backbone", default="resnet18", help="timm model name")
    stem = parser.add_mutually_exclusive_group()
    stem.add_argument("--small_image_stem", dest="small_image_stem", action="store_true", default=None)
    stem.add_argument("--no_small_image_stem", dest="small_image_stem", action="store_false")
    parser.add_argument("--image_size", type=int, default=32, help="side of the global crops")
    parser.add_argument("--local_crop_size", type=int, default=16)
    parser.add_argument("--num_local_crops", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the timed ones")
    parser.add_argument("--num_threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dim", type=int, default=4096)
    parser.add_argument("--head_hidden_dim", type=int, default=512)
    parser.add_argument("--head_bottleneck_dim", type=int, default=128)
    parser.add_argument(
        "--lightly_batched", action="store_true", help="lightly side: one student pass per resolution, as hf_ssl"
    )
    args = parser.parse_args(argv)
    if args.small_image_stem is None:  # timm's own stem argument exists for these families only
        args.small_image_stem = args.backbone.startswith(("convnext", "vit_"))
    if min(args.steps, args.batch_size) < 1 or args.warmup < 0 or args.num_local_crops < 0:
        parser.error("--steps and --batch_size must be >= 1; --warmup and --num_local_crops >= 0")
    return args


def make_config(args: argparse.Namespace) -> Any:
    from hf_ssl.models.dino.configuration_dino import DINOConfig

    return DINOConfig(
        backbone=args.backbone,
        small_image_stem=args.small_image_stem,
        image_size=args.image_size,
        local_crop_size=args.local_crop_size,
        num_local_crops=args.num_local_crops,
        out_dim=args.out_dim,
        head_hidden_dim=args.head_hidden_dim,
        head_bottleneck_dim=args.head_bottleneck_dim,
    )


def load_images(args: argparse.Namespace) -> tuple[Any, str]:
    """The first ``(warmup + steps) * batch_size`` rows (decoded), and the image column."""
    from hf_ssl.data import find_column, load_data

    if not os.path.exists(args.data):
        sys.exit(f"benchmark_dino: no data at {args.data!r}; point --data at a local image dataset folder or file")
    rows = (args.warmup + args.steps) * args.batch_size
    dataset = load_data(args.data, f"{args.split}[:{rows}]")
    if len(dataset) < rows:
        sys.exit(f"benchmark_dino: {args.data} ({args.split}) has {len(dataset)} rows, needs {rows}")
    return dataset, find_column(dataset, "image")


class HfSSLSide:
    """hf_ssl's DINO: collator + ``DINOForPreTraining`` + teacher update."""

    name = "hf_ssl"

    def __init__(self, config: Any, column: str, args: argparse.Namespace):
        from hf_ssl.data import ImageCollator
        from hf_ssl.models.dino.modeling_dino import DINOForPreTraining
        from hf_ssl.models.dino.transforms import DINOTransform
        from hf_ssl.teachers import cosine_momentum

        torch.manual_seed(args.seed)
        self.model = DINOForPreTraining(config).train()
        self.collator = ImageCollator(DINOTransform(config), column)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=args.lr)
        self.total = args.warmup + args.steps
        self.momentum = lambda step: cosine_momentum(step, self.total, config.teacher_momentum, 1.0)

    def step(self, rows: list[dict[str, Any]], step: int) -> float:
        batch = self.collator(rows)
        loss = self.model(**batch).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.update_teacher(self.momentum(step))
        return loss.item()


class LightlySide:
    """lightly's DINO parts on the same timm backbone, as in lightly's DINO example."""

    name = "lightly"

    def __init__(self, config: Any, column: str, args: argparse.Namespace):
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad
        from lightly.transforms import DINOTransform

        from hf_ssl.backbones.timm import create_backbone

        blur, solarize = config.global_blur_probs, config.global_solarization_probs
        self.transform = DINOTransform(
            global_crop_size=config.image_size,
            global_crop_scale=tuple(config.global_crop_scale),
            local_crop_size=config.local_crop_size,
            local_crop_scale=tuple(config.local_crop_scale),
            n_local_views=config.num_local_crops,
            hf_prob=config.hflip_prob,
            cj_prob=config.color_jitter_prob,
            cj_strength=0.5,
            random_gray_scale=config.grayscale_prob,
            gaussian_blur=(blur[0], blur[1 % len(blur)], config.local_blur_prob),
            solarization_prob=solarize[1 % len(solarize)],
            normalize={"mean": list(config.image_mean), "std": list(config.image_std)},
        )

        def build() -> nn.Module:
            torch.manual_seed(args.seed)
            backbone = create_backbone(config.backbone, config.timm_kwargs)
            head = DINOProjectionHead(
                backbone.num_features,
                config.head_hidden_dim,
                config.head_bottleneck_dim,
                config.out_dim,
                batch_norm=config.head_batch_norm,
                norm_last_layer=config.norm_last_layer,
            )
            return nn.Sequential(backbone, head)

        self.student = build().train()
        self.teacher = build().train()  # lightly's head uses the old weight_norm, which deepcopy refuses
        self.teacher.load_state_dict(self.student.state_dict())
        deactivate_requires_grad(self.teacher)
        self.criterion = DINOLoss(
            output_dim=config.out_dim,
            warmup_teacher_temp=config.warmup_teacher_temperature,
            teacher_temp=config.teacher_temperature,
            warmup_teacher_temp_epochs=0,
            student_temp=config.student_temperature,
            center_momentum=config.center_momentum,
        )
        self.optimizer = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=args.lr)
        self.column, self.num_global = column, config.num_global_crops
        self.total, self.base_momentum = args.warmup + args.steps, config.teacher_momentum
        self.batched = args.lightly_batched

    def step(self, rows: list[dict[str, Any]], step: int) -> float:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        per_image = [self.transform(_rgb(row[self.column])) for row in rows]  # each: a list of views
        views = [torch.stack([v[i] for v in per_image]) for i in range(len(per_image[0]))]
        global_views = views[: self.num_global]
        teacher_out = [self.teacher(view) for view in global_views]  # no gradients (deactivate_requires_grad)
        if self.batched:  # one pass per resolution
            student_out = list(self.student(torch.cat(global_views)).chunk(len(global_views)))
            if len(views) > self.num_global:
                local = views[self.num_global :]
                student_out += list(self.student(torch.cat(local)).chunk(len(local)))
        else:  # as lightly's example: one pass per view
            student_out = [self.student(view) for view in views]
        loss = self.criterion(teacher_out, student_out, epoch=0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        momentum = cosine_schedule(step, self.total, self.base_momentum, 1.0)
        update_momentum(self.student, self.teacher, m=momentum)
        return loss.item()


def _rgb(image: Any) -> Any:
    return image if image.mode == "RGB" else image.convert("RGB")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    dataset, column = load_images(args)
    config = make_config(args)
    print(
        f"config: backbone={config.backbone} small_image_stem={config.small_image_stem} global={config.image_size}px "
        f"x{config.num_global_crops} local={config.local_crop_size}px x{config.num_local_crops} "
        f"batch_size={args.batch_size} steps={args.steps} warmup={args.warmup} "
        f"head={config.head_hidden_dim}->{config.head_bottleneck_dim}->{config.out_dim} lr={args.lr} "
        f"lightly_batched={args.lightly_batched} torch_threads={torch.get_num_threads()} cpus={os.cpu_count()} "
        f"data={args.data} ({len(dataset)} rows) torch={torch.__version__} dtype=float32 device=cpu",
        flush=True,
    )
    sides = [HfSSLSide(config, column, args), LightlySide(config, column, args)]
    times: dict[str, list[float]] = {side.name: [] for side in sides}
    losses: dict[str, list[float]] = {side.name: [] for side in sides}
    for step in range(args.warmup + args.steps):
        rows = [dataset[i] for i in range(step * args.batch_size, (step + 1) * args.batch_size)]  # decoded PIL
        for side in sides if step % 2 == 0 else sides[::-1]:
            start = time.perf_counter()
            losses[side.name].append(side.step(rows, step))
            elapsed = time.perf_counter() - start
            if step >= args.warmup:
                times[side.name].append(elapsed)
        print(
            f"step {step}{' (warm-up)' if step < args.warmup else ''}: "
            + "  ".join(f"{name} {losses[name][-1]:.3f} loss" for name in losses)
            + ("" if step < args.warmup else "  " + "  ".join(f"{name} {times[name][-1]:.3f} s" for name in times)),
            flush=True,
        )
    for name in times:
        print(
            f"{name:8s} median step {statistics.median(times[name]):.3f} s, mean {statistics.mean(times[name]):.3f} s "
            f"({args.batch_size / statistics.median(times[name]):.1f} img/s at the median step)"
        )
    median_ratio = statistics.median(times["lightly"]) / statistics.median(times["hf_ssl"])
    mean_ratio = statistics.mean(times["lightly"]) / statistics.mean(times["hf_ssl"])
    print(f"ratio (lightly time / hf_ssl time): {median_ratio:.3f} at the median step, {mean_ratio:.3f} on the mean")


if __name__ == "__main__":
    main()
