"""Peak memory of one training step with and without the gradient cache, for SimCLR and SimCSE.

The gradient cache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup",
arXiv:2101.06983; ``gradient_cache_chunk_size`` on the configs, :mod:`hf_ssl.gradient_cache`) gives the loss and
gradients of a whole contrastive batch while holding the encoder activations of one chunk at a time. This script
runs one training step (forward and backward of the model in training mode, as the Trainer does; no optimizer) of a
batch of ``--batch_size`` examples, encoded in one pass ("direct") or in chunks of ``--chunk_size`` examples
("gradient cache"), each in its own fresh subprocess so that no allocation of one mode is seen by the other:

- SimCLR: the CIFAR-10 recipe of the README: ResNet-18 (timm, its ImageNet stem), 32x32 inputs, the default
  projection head (2048 -> 128, BatchNorm), temperature 0.2; 2 views per image.
- SimCSE: unsupervised (each sentence encoded twice, dropout 0.1 on), the default encoder (BERT, hidden 256, 4
  layers, vocabulary 30,522), ``--seq_length`` (32) tokens per sentence, ``length_buckets`` 4.

What is measured, per mode:

- on a CUDA device: ``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before it (the
  model and the batch), i.e. the step's peak of live tensor memory (activations, gradients, workspace);
- on the CPU, which has no allocator statistics, two figures: (1) the step's peak resident memory above the resident
  memory before it (``getrusage`` ``ru_maxrss``, read in the subprocess), with glibc's ``MALLOC_MMAP_THRESHOLD_`` set
  to 64 KiB so that large tensors are returned to the system when freed and the resident size follows the live
  tensors instead of the allocator's free lists; (2) the peak, over the step's operators, of the tensor memory they
  allocated minus what was freed, from the PyTorch profiler (``profile_memory=True``; a second step of the same
  subprocess, sampled at operator boundaries, so a temporary freed inside one operator is not seen).

The time of the measured step is printed too (one step, on a CUDA device after a warm-up step): the gradient cache
encodes the batch twice, so expect about a third more compute. The two losses are close but not equal: each chunk
has its own BatchNorm statistics in SimCLR's projection head, and its own dropout draws in SimCSE (the tests compare
the two ways where they must agree: ``tests/test_gradient_cache.py``).

Example (from the project root)::

    OMP_NUM_THREADS=1 python scripts/benchmark_gradient_cache.py --batch_size 256 --chunk_size 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

MIB = 2**20


def build(objective: str, chunk_size: int | None, args: argparse.Namespace) -> tuple[torch.nn.Module, dict]:
    """The model (training mode) and one batch of ``args.batch_size`` random examples."""
    torch.manual_seed(0)
    if objective == "simclr":
        from hf_ssl import SimCLRConfig, SimCLRForPreTraining

        config = SimCLRConfig(
            backbone="resnet18", image_size=32, loss_temperature=0.2, gradient_cache_chunk_size=chunk_size
        )
        batch = {"pixel_values": torch.randn(args.batch_size, 2, 3, 32, 32)}
        return SimCLRForPreTraining(config).train(), batch
    from hf_ssl.models.simcse.configuration_simcse import SimCSEConfig
    from hf_ssl.models.simcse.modeling_simcse import SimCSEForPreTraining

    config = SimCSEConfig(gradient_cache_chunk_size=chunk_size)  # dropout 0.1 (BERT's), the SimCSE augmentation
    lengths = torch.randint(args.seq_length // 2, args.seq_length + 1, (args.batch_size,))
    mask = (torch.arange(args.seq_length) < lengths[:, None]).long()
    ids = torch.randint(1000, config.encoder.vocab_size, (args.batch_size, args.seq_length)) * mask
    return SimCSEForPreTraining(config).train(), {"input_ids": ids, "attention_mask": mask}


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def profiled_peak_mib(model: torch.nn.Module, batch: dict) -> float:
    """Peak over the step's operators of the tensor memory allocated minus freed since the step began."""
    from torch.profiler import ProfilerActivity, profile

    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(**batch).loss.backward()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / MIB


def worker(objective: str, chunk_size: int | None, args: argparse.Namespace) -> dict:
    """One mode in this (fresh) process: its step's loss, time and peak memory."""
    torch.set_num_threads(args.num_threads)
    device = torch.device(args.device)
    model, batch = build(objective, chunk_size, args)
    model.to(device)
    batch = {name: value.to(device) for name, value in batch.items()}
    result: dict = {"objective": objective, "chunk_size": chunk_size, "device": str(device)}
    if device.type == "cuda":  # a first step (kernel selection, lazy initialisation) is not measured
        model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:  # no warm-up: it would raise the peak resident memory before the measured step
        before = rss_mib()
    start = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    result["seconds"] = time.perf_counter() - start
    if device.type == "cuda":
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / MIB
    else:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before  # KiB on Linux
        result["profiled_peak_mib"] = profiled_peak_mib(model, batch)
    result["loss"] = loss.item()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", nargs="+", default=["simclr", "simcse"], choices=["simclr", "simcse"])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--chunk_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=32, help="SimCSE: tokens per sentence (at most)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("OBJECTIVE", "CHUNK_SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("batch_size", "chunk_size", "seq_length", "num_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.worker:
        objective, chunk = args.worker
        print(json.dumps(worker(objective, None if chunk == "none" else int(chunk), args)))
        return

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(args.num_threads)}
    common = ["--batch_size", str(args.batch_size), "--seq_length", str(args.seq_length), "--device", args.device,
              "--num_threads", str(args.num_threads)]  # fmt: skip
    cpu = args.device == "cpu"
    measure = "resident memory, and the profiler's count" if cpu else "max_memory_allocated"
    print(f"one training step (forward + backward), batch {args.batch_size}, device {args.device}: peak memory of the "
          f"step above what was allocated before it ({measure})")  # fmt: skip
    for objective in args.objectives:
        rows = []
        for chunk in ("none", str(args.chunk_size)):
            command = [sys.executable, __file__, "--worker", objective, chunk, *common]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{objective} chunk {chunk} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        for row in rows:
            mode = "direct" if row["chunk_size"] is None else f"gradient cache, chunks of {row['chunk_size']}"
            memory = f"peak {row['peak_mib']:8.1f} MiB"
            if cpu:
                memory += f" (profiler: {row['profiled_peak_mib']:8.1f} MiB)"
            print(f"{objective:7s} {mode:32s} {memory}, loss {row['loss']:.4f}, {row['seconds']:.2f} s")
        ratio = rows[0]["peak_mib"] / max(rows[1]["peak_mib"], 1e-9)
        print(f"{objective:7s} direct / gradient cache peak memory: {ratio:.1f}x")


if __name__ == "__main__":
    main()
