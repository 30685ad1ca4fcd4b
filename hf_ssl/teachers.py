"""The momentum (EMA) teacher shared by the teacher-student objectives (DINO, data2vec, BYOL, MoCo).

The teacher is a frozen copy of some of the student's modules (its backbone, and its head where the method has the
teacher run one), updated after every optimizer step as ``teacher = m * teacher + (1 - m) * student`` for parameters
and copied for buffers, with ``m`` following a cosine schedule from ``base`` to ``final`` over the run (Grill et
al., 2020, BYOL sec. 3.1; Caron et al., 2021, DINO sec. 3.1).

An objective opts in like this:

.. code-block:: python

    class MyForPreTraining(PreTrainedModel):
        def __init__(self, config):
            super().__init__(config)
            self.backbone, self.head = ..., ...
            self.teacher = MomentumTeacher(self, ["backbone", "head"])
            self.post_init()
            self.teacher.reset_from(self)  # post_init initialised the copy anew: start it equal to the student

        def update_teacher(self, momentum: float) -> None:
            self.teacher.update(self, momentum)

and ``callbacks=lambda config: [MomentumTeacherCallback(config.teacher_momentum, ...)]`` in its ``Objective``.

The teacher is a submodule of the ``PreTrainedModel``, so its weights are saved with the student's in the
safetensors file (keys ``teacher.<module>.*``), restored by ``from_pretrained`` and by a checkpoint resume, and,
being updated from the student's weights alone, identical on every process of a run. Its parameters never
require gradients, so the Trainer never gives them to the optimizer (``Trainer.create_optimizer`` takes only the
parameters that require grad).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_ssl.distributed import unwrap_model
from hf_ssl.errors import check_range


class MomentumTeacher(nn.Module):
    """A frozen copy of named modules of a student, kept as their exponential moving average.

    The copied modules are this module's children under the same names (``teacher.backbone`` for the student's
    ``backbone``), so the teacher runs as ``self.teacher.backbone(inputs)``. It follows the model's train/eval mode;
    run it under ``torch.no_grad()`` (its outputs need no graph: nothing in it requires grad).

    Args:
        student: the model whose modules the teacher copies (the model being built, from its ``__init__``).
        names: the attributes of ``student`` to copy (``["backbone"]``, ``["backbone", "head"]``).

    Raises:
        ValueError: no names, or a name that is not a module of ``student``.
    """

    def __init__(self, student: nn.Module, names: Iterable[str]):
        super().__init__()
        self.names = tuple(names)
        if not self.names:
            raise ValueError("a MomentumTeacher needs the names of the student modules it copies")
        for name in self.names:
            self.add_module(name, copy.deepcopy(self._student_module(student, name)))
        self.requires_grad_(False)

    def _student_module(self, student: nn.Module, name: str) -> nn.Module:
        module = getattr(student, name, None)
        if not isinstance(module, nn.Module):
            raise ValueError(f"the student has no module {name!r} for its MomentumTeacher to copy")
        return module

    def _pairs(self, student: nn.Module, named: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """This teacher's tensors and the student's matching ones (``named``: ``"named_parameters"`` or
        ``"named_buffers"``), in the same order.

        Raises:
            ValueError: the student's modules no longer have the teacher's structure.
        """
        ours: list[torch.Tensor] = []
        theirs: list[torch.Tensor] = []
        for name in self.names:
            mine = dict(getattr(getattr(self, name), named)())
            other = dict(getattr(self._student_module(student, name), named)())
            if mine.keys() != other.keys():
                raise ValueError(
                    f"the teacher's {name} no longer matches the student's: {sorted(mine.keys() ^ other.keys())[:5]}"
                )
            ours.extend(mine.values())
            theirs.extend(other[key] for key in mine)
        return ours, theirs

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """One EMA step: ``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter, in
        place and outside autograd; buffers (e.g. batch-norm statistics) are copied from the student.

        Args:
            student: the model the teacher was made from.
            momentum: in ``[0, 1]``; 1 leaves the teacher as it is, 0 copies the student.
        """
        teacher_params, student_params = self._pairs(student, "named_parameters")
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
        for mine, theirs in zip(*self._pairs(student, "named_buffers"), strict=True):
            mine.copy_(theirs)

    @torch.no_grad()
    def reset_from(self, student: nn.Module) -> None:
        """Make the teacher equal to the student's modules (parameters and buffers).

        Call it at the end of the model's ``__init__``, after ``post_init()``: ``post_init`` initialises every
        module, the teacher's copy included, with fresh random weights, and a teacher starts equal to its student.
        (``from_pretrained`` then loads the saved teacher over it.)
        """
        for named in ("named_parameters", "named_buffers"):
            for mine, theirs in zip(*self._pairs(student, named), strict=True):
                mine.copy_(theirs)

    def train(self, mode: bool = True) -> MomentumTeacher:
        """Set the mode as ``nn.Module.train`` does, and freeze the parameters again.

        Loading weights (``from_pretrained``) replaces parameters with new ones that require grad; ``from_pretrained``
        ends with ``model.eval()`` and the Trainer calls ``model.train()`` before every step, so the teacher is
        frozen again before any optimizer or backward pass sees it.
        """
        super().train(mode)
        return self.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"copies={list(self.names)}"


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """The teacher's momentum at optimizer step ``step`` of ``total_steps``: ``base`` at step 0, rising along a
    half cosine to ``final`` at ``total_steps``: ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``
    (BYOL's and DINO's schedule).

    Args:
        step: the optimizer step, counted from 0; clipped to ``[0, total_steps]``.
        total_steps: the run's optimizer steps (``>= 1``).
        base: the momentum at the start.
        final: the momentum at the end.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumTeacherCallback(TrainerCallback):
    """Updates the model's momentum teacher once per optimizer step; :class:`~hf_ssl.trainer.SSLTrainer` logs the
    momentum as ``teacher/momentum`` (:meth:`logged_values`).

    After each optimizer step (``on_step_end``: once per update, however many micro-batches it accumulates), calls
    ``model.update_teacher(momentum)`` on the unwrapped model, with the momentum of :func:`cosine_momentum` at that
    update (counted from 0) over the run's ``max_steps``. A resumed run continues the schedule from the
    checkpoint's step.

    Args:
        base: the momentum of the first update, in ``[0, 1]``.
        final: the momentum at the end of the run, in ``[base, 1]``.

    Raises:
        UsageError: a momentum out of range.
    """

    log_name = "teacher/momentum"

    def __init__(self, base: float = 0.996, final: float = 1.0):
        check_range("the teacher's base momentum", base, 0.0, 1.0)
        check_range("the teacher's final momentum", final, base, 1.0)
        self.base = base
        self.final = final
        self.current: float | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if model is not None and not callable(getattr(unwrap_model(model), "update_teacher", None)):
            raise TypeError(f"{type(unwrap_model(model)).__name__} has no update_teacher(momentum) method")

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        self.current = cosine_momentum(state.global_step - 1, state.max_steps, self.base, self.final)
        unwrap_model(model).update_teacher(self.current)

    def logged_values(self) -> dict[str, float]:
        """The momentum of the last update, which :class:`~hf_ssl.trainer.SSLTrainer` adds to its training logs."""
        return {} if self.current is None else {self.log_name: self.current}


def collect_outputs(module: nn.Module, taps: list[nn.Module], **inputs: Any) -> list[torch.Tensor]:
    """Run ``module(**inputs)`` and return the outputs of ``taps`` (its submodules), in their order, caught by
    forward hooks that are removed afterwards: how a teacher's inner activations become targets (data2vec's
    feed-forward outputs before the last residual connection, fairseq's ``fc_results`` / ``layer_results``)."""
    outputs: dict[int, torch.Tensor] = {}
    handles = [
        tap.register_forward_hook(lambda _module, _args, output, i=i: outputs.__setitem__(i, output))
        for i, tap in enumerate(taps)
    ]
    try:
        module(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [outputs[i] for i in range(len(taps))]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block, then back in the mode it had (a teacher runs without dropout, as
    fairseq's ``self.ema.model.eval()``)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
