"""Real 2-process runs (gloo, CPU) of the contrastive losses that gather across processes: SimCLR's NT-Xent and
SimCSE's InfoNCE with hard negatives (both use ``hf_ssl.losses.gather_with_offset``). Gathered with gradients, the
mean of the processes' losses, and DDP's averaged gradients, equal one process on the concatenated batch.

The module launches this file as a script once per rank (subprocesses with a wall-clock limit, so a stuck
collective fails the test instead of hanging it); the workers save their results with ``torch.save`` and the
tests compare them with a 1-process run on the concatenated batch computed here.
"""

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
from hf_ssl.models.simclr.loss import nt_xent_loss
from hf_ssl.models.simcse.loss import info_nce_loss

pytestmark = pytest.mark.slow  # subprocesses, several processes or whole CLI runs

WORLD_SIZE = 2
PAIRS_PER_RANK = 3
IN_DIM, EMB_DIM = 6, 5
TEMPERATURE = 0.2
HARD_NEGATIVE_WEIGHT = 2.0
LAUNCH_TIMEOUT_S = 120
REPO_ROOT = Path(__file__).resolve().parents[1]


def _triplets() -> torch.Tensor:
    """SimCSE's global batch: ``(3, B, IN_DIM)`` inputs of the sentences, their positives and hard negatives."""
    return torch.randn(3, WORLD_SIZE * PAIRS_PER_RANK, IN_DIM, generator=torch.Generator().manual_seed(1))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: the two views' inputs of ``B = WORLD_SIZE * PAIRS_PER_RANK`` examples."""
    generator = torch.Generator().manual_seed(0)
    x_a = torch.randn(WORLD_SIZE * PAIRS_PER_RANK, IN_DIM, generator=generator)
    x_b = torch.randn(WORLD_SIZE * PAIRS_PER_RANK, IN_DIM, generator=generator)
    return x_a, x_b


def _rank_slice(rank: int) -> slice:
    return slice(rank * PAIRS_PER_RANK, (rank + 1) * PAIRS_PER_RANK)


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(IN_DIM, EMB_DIM)


def _step(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor, gather: bool) -> dict[str, torch.Tensor]:
    """One forward/backward: the loss, the gradient w.r.t. the embeddings, the parameter gradients."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    embeddings = model(torch.cat([x_a, x_b]))  # (2n, EMB_DIM): one forward per backward, as DDP requires
    embeddings.retain_grad()
    z_a, z_b = embeddings.chunk(2)
    loss = nt_xent_loss(z_a, z_b, temperature=TEMPERATURE, gather_distributed=gather)
    loss.backward()
    return {
        "loss": loss.detach(),
        "embedding_grad": embeddings.grad.clone(),  # rows: the n first views, then the n second views
        "weight_grad": module.weight.grad.clone(),
        "bias_grad": module.bias.grad.clone(),
    }


def _info_nce_step(model: nn.Module, inputs: torch.Tensor, gather: bool) -> dict[str, torch.Tensor]:
    """One forward of all the ``3 n`` inputs, as SimCSE does, then InfoNCE with hard negatives and its gradients."""
    module = model.module if isinstance(model, DistributedDataParallel) else model
    z = model(inputs.flatten(0, 1)).unflatten(0, (3, -1))  # (3, n, EMB_DIM)
    loss = info_nce_loss(
        z[0], z[1], z[2], TEMPERATURE, hard_negative_weight=HARD_NEGATIVE_WEIGHT, gather_distributed=gather
    )
    loss.backward()
    return {"loss": loss.detach(), "weight_grad": module.weight.grad.clone(), "bias_grad": module.bias.grad.clone()}


def _detached_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Mutant: a plain all_gather; no gradient flows through the gathered views at all."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered)


def _local_grad_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Mutant: a plain all_gather with this rank's slice put back, so only local gradients flow."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    gathered[dist.get_rank()] = tensor
    return torch.cat(gathered)


@contextlib.contextmanager
def _gather_replaced_by(gather_fn):
    """Temporarily make ``nt_xent_loss`` use ``gather_fn`` (None: the real ``all_gather_with_grad``)."""
    original = hf_ssl.losses.all_gather_with_grad
    hf_ssl.losses.all_gather_with_grad = gather_fn or original
    try:
        yield
    finally:
        hf_ssl.losses.all_gather_with_grad = original


# (name, gather_distributed, replacement for all_gather_with_grad)
SCENARIOS = [
    ("gathered", True, None),
    ("local_negatives", False, None),
    ("mutant_detached_gather", True, _detached_all_gather),
    ("mutant_local_grad_gather", True, _local_grad_all_gather),
]


def _worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    """One process: every scenario with a fresh DDP-wrapped model on this rank's share of the pairs."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        x_a, x_b = _batch()
        local = _rank_slice(rank)
        results = {}
        for name, gather, gather_fn in SCENARIOS:
            with _gather_replaced_by(gather_fn):
                # DDP averages the parameter gradients over the processes
                results[name] = _step(DistributedDataParallel(_model()), x_a[local], x_b[local], gather)
                results[f"info_nce/{name}"] = _info_nce_step(
                    DistributedDataParallel(_model()), _triplets()[:, local], gather
                )
        torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Launch WORLD_SIZE worker processes once for the module; return each rank's saved results."""
    tmp = tmp_path_factory.mktemp("two_process")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    procs = []
    for rank in range(WORLD_SIZE):
        log = open(tmp / f"rank{rank}.log", "w")  # closed below, after the process ends
        args = [
            sys.executable,
            __file__,
            str(rank),
            str(WORLD_SIZE),
            str(tmp / "init"),
            str(tmp / f"rank{rank}.pt"),
        ]
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
    logs = "\n".join(
        f"--- rank {r} (exit {p.returncode}) ---\n" + (tmp / f"rank{r}.log").read_text()
        for r, (p, _) in enumerate(procs)
    )
    if any(proc.returncode != 0 for proc, _ in procs):
        pytest.fail(f"a worker failed or exceeded {LAUNCH_TIMEOUT_S} s:\n{logs}")
    return [torch.load(tmp / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def one_process() -> dict[str, torch.Tensor]:
    """The 1-process run on the concatenated batch (no process group in the test process)."""
    assert not dist.is_initialized() or dist.get_world_size() == 1
    return _step(_model(), *_batch(), gather=True)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_mean_loss_over_processes_equals_one_process_loss(rank_results, one_process):
    """(a) Each process' loss: its own anchors against all gathered views; their mean is the full loss."""
    losses = torch.stack([r["gathered"]["loss"] for r in rank_results])
    torch.testing.assert_close(losses.mean(), one_process["loss"], rtol=0, atol=1e-6)
    assert not torch.allclose(losses[0], losses[1]), "the processes should see different anchors"


def test_ddp_parameter_gradients_equal_one_process_gradients(rank_results, one_process):
    """(b) After DDP's averaging, every process holds the parameter gradients of the 1-process run."""
    for rank, result in enumerate(rank_results):
        for key in ("weight_grad", "bias_grad"):
            torch.testing.assert_close(
                result["gathered"][key], one_process[key], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {key}"
            )


def test_embedding_gradients_are_world_size_times_one_process_slice(rank_results, one_process):
    """(b) The gradient w.r.t. each process' embeddings is WORLD_SIZE times its slice of the 1-process one.

    Why: the 1-process loss is L = mean over all 2B anchors, and process r's loss L_r is the mean over its own
    2B/W anchors, so L = (1/W) sum_r L_r. The gather's backward sums over processes, so each process'
    embeddings receive d(sum_r L_r)/dz = W dL/dz. DDP divides the *parameter* gradients by W (that is why
    they match exactly above), but it never touches the embeddings' gradient, which stays W times larger.
    """
    full = one_process["embedding_grad"]  # rows: B first views, then B second views
    batch = WORLD_SIZE * PAIRS_PER_RANK
    for rank, result in enumerate(rank_results):
        local = _rank_slice(rank)
        # this rank's first views, then its second views
        expected = torch.cat([full[local], full[batch:][local]])
        torch.testing.assert_close(
            result["gathered"]["embedding_grad"],
            WORLD_SIZE * expected,
            rtol=1e-5,
            atol=1e-6,
            msg=f"rank {rank}",
        )


def test_without_gather_negatives_are_local_and_loss_differs(rank_results, one_process):
    """(c) gather_distributed=False: each process' loss is the 1-process loss of its own pairs only, and their
    mean differs from the full-batch loss, so the gather is what makes the two-process run match."""
    x_a, x_b = _batch()
    for rank, result in enumerate(rank_results):
        local = _rank_slice(rank)
        expected = _step(_model(), x_a[local], x_b[local], gather=True)
        for key in ("loss", "embedding_grad"):
            torch.testing.assert_close(
                result["local_negatives"][key], expected[key], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {key}"
            )
    mean_local = torch.stack([r["local_negatives"]["loss"] for r in rank_results]).mean()
    assert (mean_local - one_process["loss"]).abs() > 1e-2


@pytest.mark.parametrize("mutant", ["mutant_detached_gather", "mutant_local_grad_gather"])
def test_non_differentiable_gather_is_caught(rank_results, one_process, mutant):
    """A plain all_gather gives the same loss but wrong gradients, which the gradient checks above flag."""
    losses = torch.stack([r[mutant]["loss"] for r in rank_results])
    torch.testing.assert_close(losses.mean(), one_process["loss"], rtol=0, atol=1e-6)
    for result in rank_results:
        assert not _close(result[mutant]["weight_grad"], one_process["weight_grad"])
        assert not _close(result[mutant]["embedding_grad"], result["gathered"]["embedding_grad"])


def test_info_nce_with_hard_negatives_two_processes_equal_one_process(rank_results):
    """SimCSE's loss: the mean loss and DDP's gradients equal one process on the concatenated triplets; local
    negatives give another loss, and a gather without gradients the same loss but other gradients."""
    one_process = _info_nce_step(_model(), _triplets(), gather=True)
    losses = {name: torch.stack([r[f"info_nce/{name}"]["loss"] for r in rank_results]) for name, _, _ in SCENARIOS}
    torch.testing.assert_close(losses["gathered"].mean(), one_process["loss"], rtol=0, atol=1e-6)
    for rank, result in enumerate(rank_results):
        for key in ("weight_grad", "bias_grad"):
            torch.testing.assert_close(
                result["info_nce/gathered"][key], one_process[key], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {key}"
            )
    assert (losses["local_negatives"].mean() - one_process["loss"]).abs() > 1e-2
    torch.testing.assert_close(losses["mutant_local_grad_gather"].mean(), one_process["loss"], rtol=0, atol=1e-6)
    for result in rank_results:
        assert not _close(result["info_nce/mutant_local_grad_gather"]["weight_grad"], one_process["weight_grad"])


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
