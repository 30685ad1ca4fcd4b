"""Training speed of hf_ssl's MAE against transformers' ViTMAEForPreTraining, in one process, on the same data.

Both models get the same weights (mapped with ``load_vit_mae_state_dict``), the same batches and the same masking
noise; they run alternately, step by step (who goes first swaps every step), so that a shared, noisy CPU affects
both alike. A step is forward + backward + AdamW update, fp32. Prints images/s of each per repeat, the medians, the
ratio ours / reference (median of the per-repeat ratios), and the same from each model's fastest step.

    OMP_NUM_THREADS=1 python scripts/benchmark_mae.py --num_threads 1 --steps 10 --repeats 3
    python scripts/benchmark_mae.py --profile  # where the time goes, per op, for each model
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "vision" / "cifar10" / "train.parquet"

SIZES = dict(
    image_size=32,
    patch_size=4,
    num_channels=3,
    hidden_size=192,
    num_hidden_layers=6,
    num_attention_heads=3,
    intermediate_size=768,
    decoder_hidden_size=128,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=4,
    decoder_intermediate_size=512,
    mask_ratio=0.75,
    norm_pix_loss=True,
    qkv_bias=True,
    layer_norm_eps=1e-6,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before the first repeat")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--data",
        type=str,
        default=str(DEFAULT_DATA),
        help="CIFAR-10-style parquet with an 'image' column; random tensors if the file does not exist",
    )
    parser.add_argument(
        "--reference_attn", default="sdpa", choices=["sdpa", "eager"], help="ViTMAE's attention implementation"
    )
    parser.add_argument("--profile", action="store_true", help="profile 3 steps of each model (torch.profiler)")
    return parser.parse_args()


def load_batches(path: str, count: int, batch_size: int, config) -> list[torch.Tensor]:
    """``count`` batches ``(B, 3, 32, 32)``: augmented CIFAR-10 images (MAETransform), or random tensors."""
    if not Path(path).exists():
        print(f"data: random tensors ({path} not found)")
        return [torch.randn(batch_size, 3, 32, 32) for _ in range(count)]
    import pyarrow.parquet as pq

    from hf_ssl.data import ImageCollator
    from hf_ssl.models.mae.transforms import MAETransform

    rows = pq.read_table(path, columns=["image"]).slice(0, count * batch_size).to_pylist()
    collate = ImageCollator(MAETransform(config), "image")
    batches = [collate(rows[i : i + batch_size])["pixel_values"] for i in range(0, len(rows), batch_size)]
    print(f"data: {len(rows)} images of {path}")
    return [b for b in batches if len(b) == batch_size] or [torch.randn(batch_size, 3, 32, 32)]


def make_step(model: torch.nn.Module):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-4, weight_decay=0.05)

    def step(pixel_values: torch.Tensor, noise: torch.Tensor) -> float:
        loss = model(pixel_values=pixel_values, noise=noise).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def step_time(step, pixel_values: torch.Tensor, noise: torch.Tensor) -> float:
    start = time.perf_counter()
    step(pixel_values, noise)
    return time.perf_counter() - start


def profile(name: str, step, batches, noises) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(3):
            step(batches[i % len(batches)], noises[i % len(noises)])
    print(f"\n=== {name}: top ops by self CPU time (3 steps) ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(0)
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from hf_ssl.models.mae.configuration_mae import MAEConfig
    from hf_ssl.models.mae.modeling_mae import MAEForPreTraining, load_vit_mae_state_dict

    config = MAEConfig(**SIZES)
    reference = ViTMAEForPreTraining(
        ViTMAEConfig(**SIZES, hidden_act="gelu", attn_implementation=args.reference_attn)
    ).train()
    ours = MAEForPreTraining(config).train()
    with torch.no_grad():
        fixed = {k: v for k, v in ours.state_dict().items() if "pos_embed" in k}
        ours.load_state_dict(load_vit_mae_state_dict(reference.state_dict()))
        ours.load_state_dict(fixed, strict=False)  # keep our sin-cos tables (a fresh ViTMAE's are zeros)
    steps = {"hf_ssl": make_step(ours), "transformers": make_step(reference)}

    batches = load_batches(args.data, max(1, min(args.steps, 8)), args.batch_size, config)
    noises = [torch.rand(args.batch_size, config.num_patches) for _ in range(len(batches))]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, fp32, "
        f"reference attention: {reference.config._attn_implementation}"
    )
    for step in steps.values():
        for i in range(args.warmup):
            step(batches[i % len(batches)], noises[i % len(noises)])

    if args.profile:
        for name, step in steps.items():
            profile(name, step, batches, noises)
        return

    # the models alternate step by step (who goes first swaps every step), so contention on a shared CPU hits both
    speeds: dict[str, list[float]] = {name: [] for name in steps}
    step_times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for repeat in range(args.repeats):
        elapsed = dict.fromkeys(steps, 0.0)
        for i in range(args.steps):
            batch, noise = batches[i % len(batches)], noises[i % len(noises)]
            for name in order if (repeat * args.steps + i) % 2 == 0 else order[::-1]:
                seconds = step_time(steps[name], batch, noise)
                elapsed[name] += seconds
                step_times[name].append(seconds)
        for name in steps:
            speeds[name].append(args.steps * args.batch_size / elapsed[name])
        print(
            f"repeat {repeat}: "
            + ", ".join(f"{name} {speeds[name][-1]:.1f} images/s" for name in steps)
            + f", ratio {speeds['hf_ssl'][-1] / speeds['transformers'][-1]:.3f}"
        )
    ratios = [a / b for a, b in zip(speeds["hf_ssl"], speeds["transformers"], strict=True)]
    print(
        f"median of repeats: hf_ssl {statistics.median(speeds['hf_ssl']):.1f} images/s, "
        f"transformers {statistics.median(speeds['transformers']):.1f} images/s, "
        f"ratio hf_ssl / transformers {statistics.median(ratios):.3f}"
    )
    fastest = {name: args.batch_size / min(times) for name, times in step_times.items()}
    print(
        f"fastest step: hf_ssl {fastest['hf_ssl']:.1f} images/s, transformers {fastest['transformers']:.1f} "
        f"images/s, ratio {fastest['hf_ssl'] / fastest['transformers']:.3f} (least disturbed by other processes)"
    )


if __name__ == "__main__":
    main()
