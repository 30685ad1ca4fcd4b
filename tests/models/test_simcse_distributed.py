"""Real 2-process runs (gloo, CPU) of SimCSE's InfoNCE with hard negatives: positives and hard negatives gathered with
gradients make the mean of the processes' losses, and DDP's averaged gradients, equal to one process on the
concatenated batch (the pattern of tests/test_distributed.py, which checks SimCLR's NT-Xent; both share
``hf_ssl.losses.gather_with_offset``)."""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import hf_ssl.losses
from hf_ssl.losses import info_nce_loss

WORLD_SIZE = 2
PER_RANK = 3
IN_DIM, EMB_DIM = 6, 5
TEMPERATURE = 0.1
HARD_NEGATIVE_WEIGHT = 2.0
LAUNCH_TIMEOUT_S = 120
REPO_ROOT = Path(__file__).resolve().parents[2]


def _batch() -> torch.Tensor:
    """The global batch: ``(3, B, IN_DIM)`` inputs of the sentences, their positives and their hard negatives."""
    return torch.randn(3, WORLD_SIZE * PER_RANK, IN_DIM, generator=torch.Generator().manual_seed(0))


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, EMB_DIM)


def _step(model: nn.Module, inputs: torch.Tensor, gather: bool) -> dict[str, torch.Tensor]:
    """One forward of all the (3 * n) inputs, as SimCSE does, then the loss and its gradients."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    z = model(inputs.flatten(0, 1)).unflatten(0, (3, -1))  # (3, n, EMB_DIM)
    loss = info_nce_loss(
        z[0], z[1], z[2], TEMPERATURE, hard_negative_weight=HARD_NEGATIVE_WEIGHT, gather_distributed=gather
    )
    loss.backward()
    return {"loss": loss.detach(), "weight_grad": module.weight.grad.clone(), "bias_grad": module.bias.grad.clone()}


def _detached_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Mutant: a plain all_gather, no gradient through the other processes' candidates."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    gathered[dist.get_rank()] = tensor
    return torch.cat(gathered)


@contextlib.contextmanager
def _gather_replaced_by(gather_fn):
    original = hf_ssl.losses.all_gather_with_grad
    hf_ssl.losses.all_gather_with_grad = gather_fn or original
    try:
        yield
    finally:
        hf_ssl.losses.all_gather_with_grad = original


SCENARIOS = [
    ("gathered", True, None),
    ("local_negatives", False, None),
    ("mutant_local_grad", True, _detached_all_gather),
]


def _worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        local = _batch()[:, rank * PER_RANK : (rank + 1) * PER_RANK]
        results = {}
        for name, gather, gather_fn in SCENARIOS:
            with _gather_replaced_by(gather_fn):
                results[name] = _step(DistributedDataParallel(_model()), local, gather)
        torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict[str, dict[str, torch.Tensor]]]:
    tmp = tmp_path_factory.mktemp("simcse_two_process")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    procs = []
    for rank in range(WORLD_SIZE):
        log = open(tmp / f"rank{rank}.log", "w")  # closed below
        args = [sys.executable, __file__, str(rank), str(WORLD_SIZE), str(tmp / "init"), str(tmp / f"rank{rank}.pt")]
        procs.append((subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if any(proc.returncode != 0 for proc, _ in procs):
        logs = "\n".join((tmp / f"rank{r}.log").read_text() for r in range(WORLD_SIZE))
        pytest.fail(f"a worker failed or exceeded {LAUNCH_TIMEOUT_S} s:\n{logs}")
    return [torch.load(tmp / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def one_process() -> dict[str, torch.Tensor]:
    assert not dist.is_initialized() or dist.get_world_size() == 1
    return _step(_model(), _batch(), gather=True)


def test_two_processes_equal_one_process_on_the_concatenated_batch(rank_results, one_process):
    losses = torch.stack([r["gathered"]["loss"] for r in rank_results])
    torch.testing.assert_close(losses.mean(), one_process["loss"], rtol=0, atol=1e-6)
    for rank, result in enumerate(rank_results):
        for key in ("weight_grad", "bias_grad"):
            torch.testing.assert_close(
                result["gathered"][key], one_process[key], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {key}"
            )


def test_the_checks_fail_without_the_gather_or_its_gradient(rank_results, one_process):
    """Local negatives give another loss; a gather without gradients the same loss but other gradients."""
    mean_local = torch.stack([r["local_negatives"]["loss"] for r in rank_results]).mean()
    assert (mean_local - one_process["loss"]).abs() > 1e-2
    mutant = torch.stack([r["mutant_local_grad"]["loss"] for r in rank_results]).mean()
    torch.testing.assert_close(mutant, one_process["loss"], rtol=0, atol=1e-6)
    for result in rank_results:
        assert not torch.allclose(result["mutant_local_grad"]["weight_grad"], one_process["weight_grad"], atol=1e-6)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
