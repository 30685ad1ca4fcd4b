"""The DINO loss: self-distillation with centering and sharpening (Caron et al., 2021, arXiv:2104.14294).

The student is trained to predict, from every view of an image, the teacher's output distribution on the *other*
global views (Algorithm 1 and sec. 3.1). The teacher's outputs are centered (an exponential moving average of their
batch mean is subtracted, averaged over processes) and sharpened (a low teacher temperature, warmed up linearly);
together they avoid collapse. The reference is facebookresearch/dino's ``DINOLoss`` (``main_dino.py``), which
lightly's ``lightly.loss.DINOLoss`` follows; ``tests/models/test_dino_loss.py`` checks parity with lightly's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hf_ssl.losses import full_precision


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temperature: float = 0.1,
    teacher_temperature: float = 0.04,
) -> torch.Tensor:
    """Cross entropy between the centered, sharpened teacher softmax of each global view and the student softmax of
    every other view (Caron et al., 2021, Algorithm 1: ``H(t, s) = -sum(softmax((t - C) / tpt) * log_softmax(s /
    tps))``), averaged over the ``B * T * (S - 1)`` (teacher view, other student view) pairs of images.

    The first ``T`` student views must be the global views the teacher saw, in the same order: the pair of a teacher
    view with the student's output on the same view is left out. Computed in fp32 whatever the input dtype. No
    gradient flows into the teacher's side.

    Args:
        student_logits: ``(B, S, K)`` student head outputs of the ``S`` views (the ``T`` global views first, then the
            local ones) of ``B`` images.
        teacher_logits: ``(B, T, K)`` teacher head outputs of the ``T`` global views.
        center: ``(K,)`` the center subtracted from the teacher's outputs.
        student_temperature: the student's softmax temperature ``tps``.
        teacher_temperature: the teacher's softmax temperature ``tpt`` (lower than the student's: sharpening).

    Returns:
        The scalar mean loss.

    Raises:
        ValueError: mismatched shapes, or fewer than two views in all.
    """
    if student_logits.ndim != 3 or teacher_logits.ndim != 3:
        raise ValueError(
            f"expected (B, S, K) student and (B, T, K) teacher logits, got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )
    batch, num_student, dim = student_logits.shape
    num_teacher = teacher_logits.shape[1]
    if teacher_logits.shape[0] != batch or teacher_logits.shape[2] != dim or num_teacher > num_student:
        raise ValueError(
            f"the teacher's logits {tuple(teacher_logits.shape)} must be (B, T, K) with T <= S for the student's "
            f"{tuple(student_logits.shape)}"
        )
    if num_student < 2:
        raise ValueError(f"the DINO loss needs at least two views, got {num_student}")
    with full_precision(student_logits.device):
        teacher = F.softmax((teacher_logits.detach().float() - center.float()) / teacher_temperature, dim=-1)
        student = F.log_softmax(student_logits.float() / student_temperature, dim=-1)
        cross = -torch.einsum("btk,bsk->ts", teacher, student)  # (T, S): summed over the batch
    same_view = torch.eye(num_teacher, num_student, dtype=torch.bool, device=cross.device)
    pairs = num_teacher * (num_student - 1)
    return cross.masked_fill(same_view, 0.0).sum() / (pairs * batch)


@torch.no_grad()
def teacher_batch_center(teacher_logits: torch.Tensor) -> torch.Tensor:
    """The mean of the teacher's outputs over the batch and its views, averaged over every process when
    ``torch.distributed`` is initialised (so the center is the same on all of them): ``(..., K)`` -> ``(K,)``."""
    mean = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1]).mean(dim=0)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mean)
        mean = mean / dist.get_world_size()
    return mean


def teacher_temperature_at(progress: float, warmup: float, start: float = 0.04, final: float = 0.04) -> float:
    """The teacher temperature after ``progress`` epochs (or steps) of a linear warm-up of ``warmup`` of them.

    At whole numbers it equals DINO's schedule ``np.linspace(start, final, warmup)[progress]`` (lightly's too):
    ``start`` at 0, ``final`` from ``warmup - 1`` on; linear in between, so fractional epochs are warmed up too.

    Args:
        progress: epochs (or steps) done, ``>= 0``.
        warmup: length of the warm-up; ``<= 1`` gives ``start`` before 1 and ``final`` from then on.
        start: the temperature at the start of training (0.04 in DINO).
        final: the temperature after warm-up (0.04 to 0.07 in DINO).
    """
    if progress >= warmup:
        return final
    if warmup <= 1:
        return start
    return start + (final - start) * min(max(progress, 0.0) / (warmup - 1), 1.0)


class DINOLoss(nn.Module):
    """The DINO loss with its center: :func:`dino_loss`, then the center's EMA update (Caron et al., 2021, eq. 4:
    ``C <- m C + (1 - m) mean(teacher outputs)``).

    The center is a persistent buffer, so it is saved with the model and restored on resume. Two ways to update it:

    * plain (the default, as facebookresearch/dino's and lightly's ``DINOLoss``): every call with ``update_center``
      takes one EMA step right after its loss. One forward per optimizer step (a model trained by hand,
      ``model(**batch).loss.backward()``) gives one update per step.
    * deferred (``defer_center_update = True``, set by ``DINOScheduleCallback`` for a Trainer run): each call adds
      the sum and count of its teacher outputs to pending totals and leaves the center alone, so every micro-batch
      of a step (gradient accumulation) reads the center as at the step's start; :meth:`apply_pending_center`
      (the callback, once per optimizer step) takes ONE EMA step towards the mean of all of them. Then 2
      micro-batches x 4 rows give the center of one batch of 8.

    The pending totals are plain attributes, not buffers: DDP broadcasts rank 0's buffers before every forward and
    would overwrite the other ranks' totals; the update averages them over processes (:func:`teacher_batch_center`).

    Args:
        out_dim: ``K``, the number of prototypes (the head's output size).
        student_temperature: the student's softmax temperature.
        center_momentum: the center's EMA momentum ``m``.
    """

    def __init__(self, out_dim: int, student_temperature: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temperature = student_temperature
        self.center_momentum = center_momentum
        self.center: torch.Tensor
        self.register_buffer("center", torch.zeros(out_dim))
        self.defer_center_update = False
        self.pending_sum: torch.Tensor | None = None  # (K,) fp32 sum of the teacher outputs since the last update
        self.pending_count = 0  # how many (image, global view) rows that sum holds

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_temperature: float,
        update_center: bool = True,
    ) -> torch.Tensor:
        """The loss of :func:`dino_loss` with the current center; then, with ``update_center``, one EMA step of the
        center towards the teacher's batch mean (averaged over processes), or, with ``defer_center_update``, the
        teacher outputs added to the pending totals (see the class docstring)."""
        loss = dino_loss(student_logits, teacher_logits, self.center, self.student_temperature, teacher_temperature)
        if update_center and self.defer_center_update:
            self.accumulate_center(teacher_logits)
        elif update_center:
            self.update_center(teacher_logits)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """``center <- m * center + (1 - m) * mean of teacher_logits``, in place (see :func:`teacher_batch_center`)."""
        batch_center = teacher_batch_center(teacher_logits).to(self.center.dtype)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)

    @torch.no_grad()
    def accumulate_center(self, teacher_logits: torch.Tensor) -> None:
        """Add ``(..., K)`` teacher outputs to the pending sum and count (this process' only)."""
        rows = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
        total = rows.sum(dim=0)
        self.pending_sum = total if self.pending_sum is None else self.pending_sum + total
        self.pending_count += rows.shape[0]

    @torch.no_grad()
    def apply_pending_center(self) -> bool:
        """One EMA step of the center towards the mean of the pending teacher outputs (this process' mean, averaged
        over processes by :meth:`update_center`, as DINO's reference averages equal per-process batches), then clear
        them. Every process must call it (an all-reduce); a process without pending outputs contributes nothing and
        takes no step, so call it where all of them have run the same forwards (the end of an optimizer step).

        Returns:
            Whether the center moved.
        """
        if self.pending_sum is None or self.pending_count == 0:
            return False
        mean = self.pending_sum / self.pending_count  # (K,)
        self.pending_sum, self.pending_count = None, 0
        self.update_center(mean.unsqueeze(0))
        return True
