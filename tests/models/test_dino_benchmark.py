"""scripts/benchmark_dino.py runs end to end, tiny, and times both sides on the same work."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark_dino.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_dino", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_dino_runs_tiny(cifar10_dir, capsys):
    benchmark = _load_script()
    benchmark.main(
        [
            "--data", str(cifar10_dir), "--backbone", "resnet18", "--batch_size", "4", "--steps", "2",
            "--warmup", "1", "--num_local_crops", "2", "--out_dim", "64", "--head_hidden_dim", "32",
            "--head_bottleneck_dim", "16", "--num_threads", "1",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    steps = re.findall(r"step (\d+): hf_ssl ([\d.]+) loss\s+lightly ([\d.]+) loss\s+hf_ssl ([\d.]+) s\s+lightly", out)
    assert [int(s[0]) for s in steps] == [1, 2]  # the timed steps, after one warm-up
    # both sides compute a DINO loss (a cross-entropy over K = 64 prototypes) on the same views: positive and of
    # the order of log(K) at the start, not a placeholder value
    for _, ours, theirs, _ in steps:
        for loss in (float(ours), float(theirs)):
            assert 0.1 * math.log(64) < loss < 3 * math.log(64)
    ratio = re.search(r"ratio \(lightly time / hf_ssl time\): ([\d.]+) at the median step", out)
    assert ratio is not None and float(ratio.group(1)) > 0


def test_lightly_transform_matches_config_views(cifar10_dir):
    """The lightly side makes the same number and sizes of views as hf_ssl's transform."""
    benchmark = _load_script()
    args = benchmark.parse_args(["--data", str(cifar10_dir), "--batch_size", "2", "--steps", "1", "--warmup", "0"])
    dataset, column = benchmark.load_images(args)
    config = benchmark.make_config(args)
    lightly_side = benchmark.LightlySide(config, column, args)
    ours = benchmark.HfSSLSide(config, column, args).collator([dataset[0], dataset[1]])
    views = lightly_side.transform(dataset[0][column].convert("RGB"))
    assert [tuple(v.shape) for v in views] == [tuple(ours["pixel_values"].shape[2:])] * 2 + [
        tuple(ours["local_pixel_values"].shape[2:])
    ] * 2
