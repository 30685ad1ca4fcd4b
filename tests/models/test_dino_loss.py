"""DINO's loss: parity with lightly's DINOLoss (loss and center update), the temperature schedule, gradients, and
the center averaged over processes."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightly.loss import DINOLoss as LightlyDINOLoss

from hf_ssl.models.dino.loss import DINOLoss, dino_loss, teacher_batch_center, teacher_temperature_at


def _logits(batch: int, views: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, views, dim, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("num_local", [0, 1, 4])
def test_loss_and_center_update_equal_lightly_over_steps(num_local):
    batch, dim, momentum, student_t = 5, 16, 0.8, 0.2
    ours = DINOLoss(dim, student_temperature=student_t, center_momentum=momentum)
    theirs = LightlyDINOLoss(dim, student_temp=student_t, center_momentum=momentum)
    for step, teacher_t in enumerate([0.04, 0.05, 0.07]):  # the center moves away from 0 after the first step
        student = _logits(batch, 2 + num_local, dim, seed=2 * step)
        teacher = _logits(batch, 2, dim, seed=2 * step + 1)
        loss = ours(student, teacher, teacher_temperature=teacher_t)
        expected = theirs(
            teacher_out=list(teacher.unbind(1)), student_out=list(student.unbind(1)), teacher_temp=teacher_t
        )
        torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ours.center, theirs.center.flatten(), atol=1e-6, rtol=1e-6)
    assert ours.center.abs().sum() > 0


def test_loss_is_algorithm_1_written_pair_by_pair():
    """Caron et al. (2021), Algorithm 1 with multi-crop: every (global teacher view, other student view) pair."""
    student, teacher = _logits(3, 4, 8, seed=0), _logits(3, 2, 8, seed=1)
    center, tps, tpt = torch.randn(8), 0.1, 0.05
    total, pairs = 0.0, 0
    for t in range(2):
        for s in range(4):
            if s == t:
                continue
            target = F.softmax((teacher[:, t] - center) / tpt, dim=-1)
            total = total - (target * F.log_softmax(student[:, s] / tps, dim=-1)).sum(dim=-1).mean()
            pairs += 1
    torch.testing.assert_close(dino_loss(student, teacher, center, tps, tpt), total / pairs)


def test_gradient_reaches_the_student_only_and_the_center_does_not_change_without_update():
    student = _logits(4, 3, 8, seed=0).requires_grad_()
    teacher = _logits(4, 2, 8, seed=1).requires_grad_()
    loss_fn = DINOLoss(8)
    loss_fn(student, teacher, teacher_temperature=0.04, update_center=False).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert torch.equal(loss_fn.center, torch.zeros(8))
    assert "center" in loss_fn.state_dict()


def test_loss_is_computed_in_fp32_under_bf16_inputs():
    student, teacher = _logits(4, 3, 8, seed=0), _logits(4, 2, 8, seed=1)
    center = torch.zeros(8)
    low = dino_loss(student.bfloat16(), teacher.bfloat16(), center, 0.1, 0.04)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, dino_loss(student.bfloat16().float(), teacher.bfloat16().float(), center))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="at least two views"):
        dino_loss(torch.randn(2, 1, 4), torch.randn(2, 1, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="T <= S"):
        dino_loss(torch.randn(2, 2, 4), torch.randn(2, 3, 4), torch.zeros(4))


@pytest.mark.parametrize("warmup", [1, 2, 30])
def test_teacher_temperature_follows_dinos_linspace_at_whole_epochs(warmup):
    schedule = np.concatenate([np.linspace(0.04, 0.07, warmup), np.full(5, 0.07)])
    for epoch, expected in enumerate(schedule):
        assert teacher_temperature_at(epoch, warmup, 0.04, 0.07) == pytest.approx(expected, abs=1e-12)
    if warmup > 2:  # linear between whole epochs
        mid = teacher_temperature_at(1.5, warmup, 0.04, 0.07)
        assert mid == pytest.approx((schedule[1] + schedule[2]) / 2, abs=1e-12)


def _center_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        teacher = _logits(3, 2, 6, seed=10 + rank)
        loss_fn = DINOLoss(6, center_momentum=0.5)
        loss_fn(_logits(3, 3, 6, seed=20 + rank), teacher, teacher_temperature=0.04)
        results[rank] = loss_fn.center.clone()
    finally:
        dist.destroy_process_group()


def test_center_is_averaged_over_two_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = mp.Manager().dict()
    mp.spawn(_center_worker, args=(port, results), nprocs=2, join=True)
    both = torch.cat([_logits(3, 2, 6, seed=10), _logits(3, 2, 6, seed=11)])
    expected = 0.5 * teacher_batch_center(both)  # m = 0.5 from a zero center, the mean over both processes' views
    torch.testing.assert_close(results[0], expected)
    torch.testing.assert_close(results[1], expected)
