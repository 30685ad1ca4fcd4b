"""The momentum teacher: frozen, updated by the EMA formula once per optimizer step on its cosine schedule, kept out
of the optimizer, logged, and saved and restored with the model."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import ModelOutput

from hf_ssl.errors import UsageError
from hf_ssl.teachers import MomentumTeacher, MomentumTeacherCallback, cosine_momentum
from hf_ssl.trainer import SSLTrainer


class TinyTeacherConfig(PretrainedConfig):
    model_type = "hf_ssl_test_teacher"

    def __init__(self, size: int = 4, **kwargs):
        self.size = size
        super().__init__(**kwargs)


class TinyTeacherModel(PreTrainedModel):
    """A student (backbone + head with batch-norm buffers) and its teacher of both; records every update."""

    config_class = TinyTeacherConfig

    def __init__(self, config: TinyTeacherConfig):
        super().__init__(config)
        self.backbone = nn.Linear(config.size, config.size)
        self.head = nn.Sequential(nn.Linear(config.size, config.size), nn.BatchNorm1d(config.size))
        self.teacher = MomentumTeacher(self, ["backbone", "head"])
        self.post_init()
        self.teacher.reset_from(self)
        self.momenta: list[float] = []

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.5)
            nn.init.zeros_(module.bias)

    def update_teacher(self, momentum: float) -> None:
        self.momenta.append(momentum)
        self.teacher.update(self, momentum)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        student = self.head(self.backbone(x))
        with torch.no_grad():
            target = self.teacher.head(self.teacher.backbone(x))
        return ModelOutput(loss=((student - x) ** 2).mean() + ((student - target) ** 2).mean())


def student_and_teacher(model: TinyTeacherModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    teacher = {name.removeprefix("teacher."): t for name, t in state.items() if name.startswith("teacher.")}
    return {name: t for name, t in state.items() if not name.startswith("teacher.")}, teacher


def test_a_new_model_starts_with_a_frozen_teacher_equal_to_its_student():
    torch.manual_seed(0)
    model = TinyTeacherModel(TinyTeacherConfig())
    student, teacher = student_and_teacher(model)
    assert student.keys() == teacher.keys() and len(teacher) == 9  # 2 linear layers, batch norm: 2 weights + 3 buffers
    for name in student:
        torch.testing.assert_close(teacher[name], student[name], rtol=0, atol=0)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert all(p.requires_grad for name, p in model.named_parameters() if not name.startswith("teacher."))


def test_no_gradient_reaches_the_teacher():
    torch.manual_seed(0)
    model = TinyTeacherModel(TinyTeacherConfig())
    out = model.teacher.backbone(torch.randn(3, 4))
    assert not out.requires_grad
    model(torch.randn(8, 4)).loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for name, p in model.named_parameters() if not name.startswith("teacher."))


def test_updates_follow_the_ema_formula_and_copy_buffers():
    torch.manual_seed(0)
    model = TinyTeacherModel(TinyTeacherConfig())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    _, expected = student_and_teacher(model)
    for momentum in (0.9, 0.5, 0.99):
        model.train()
        model(torch.randn(8, 4)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        student, _ = student_and_teacher(model)
        for name, value in student.items():
            is_buffer = name.startswith("head.1.running") or name.endswith("num_batches_tracked")
            expected[name] = value.clone() if is_buffer else momentum * expected[name] + (1 - momentum) * value
        model.update_teacher(momentum)
    student, teacher = student_and_teacher(model)
    assert not torch.allclose(teacher["backbone.weight"], student["backbone.weight"])  # the test is not vacuous
    for name in expected:
        torch.testing.assert_close(teacher[name], expected[name], rtol=0, atol=1e-7)
    assert teacher["head.1.num_batches_tracked"] == 3


def test_momentum_one_keeps_and_zero_copies():
    torch.manual_seed(0)
    model = TinyTeacherModel(TinyTeacherConfig())
    with torch.no_grad():
        model.backbone.weight.add_(1.0)
    before = model.teacher.backbone.weight.clone()
    model.update_teacher(1.0)
    torch.testing.assert_close(model.teacher.backbone.weight, before, rtol=0, atol=0)
    model.update_teacher(0.0)
    torch.testing.assert_close(model.teacher.backbone.weight, model.backbone.weight, rtol=0, atol=0)


def test_a_teacher_needs_modules_of_its_student():
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="no module 'head'"):
        MomentumTeacher(model, ["backbone", "head"])
    with pytest.raises(ValueError, match="needs the names"):
        MomentumTeacher(model, [])
    teacher = MomentumTeacher(model, ["backbone"])
    model.backbone = nn.Linear(2, 3, bias=False)
    with pytest.raises(ValueError, match="no longer matches the student's"):
        teacher.update(model, 0.5)


def test_cosine_schedule_endpoints_and_midpoint():
    assert cosine_momentum(0, 100) == 0.996
    assert cosine_momentum(100, 100) == 1.0
    assert cosine_momentum(50, 100) == pytest.approx(0.998, abs=1e-12)
    assert cosine_momentum(25, 100, base=0.9, final=1.0) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    assert cosine_momentum(200, 100) == 1.0 and cosine_momentum(-1, 100) == 0.996  # clipped to the run
    steps = [cosine_momentum(k, 10, 0.5, 1.0) for k in range(11)]
    assert steps == sorted(steps)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_momentum(0, 0)


def test_callback_refuses_momenta_out_of_range():
    with pytest.raises(UsageError, match="base momentum must be in \\[0, 1\\], got 1.5"):
        MomentumTeacherCallback(base=1.5)
    with pytest.raises(UsageError, match="final momentum must be in \\[0.9, 1\\], got 0.5"):
        MomentumTeacherCallback(base=0.9, final=0.5)


def train(model: TinyTeacherModel, output_dir, callback: MomentumTeacherCallback, **overrides) -> SSLTrainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=0.1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        **overrides,
    )
    rows = Dataset.from_dict({"x": torch.randn(64, 4).tolist()})
    collate = lambda rows: {"x": torch.tensor([row["x"] for row in rows])}  # noqa: E731
    recorder = LogRecorder()  # before the teacher's callback, as the reporting integrations (TensorBoard) are
    trainer = SSLTrainer(
        model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[recorder, callback]
    )
    trainer.train()
    trainer.recorded = recorder.logs
    return trainer


class LogRecorder(TrainerCallback):
    """What a reporting integration would receive: the logs as they reach the callbacks."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def test_trainer_updates_the_teacher_once_per_optimizer_step_and_never_optimises_it(tmp_path):
    torch.manual_seed(0)
    model = TinyTeacherModel(TinyTeacherConfig())
    initial = model.teacher.backbone.weight.detach().clone()
    callback = MomentumTeacherCallback(base=0.5, final=1.0)
    trainer = train(model, tmp_path, callback)

    expected = [cosine_momentum(k, 3, 0.5, 1.0) for k in range(3)]  # 3 updates of 2 micro-batches each
    assert model.momenta == pytest.approx(expected) and expected[0] == 0.5
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised.isdisjoint(id(p) for p in model.teacher.parameters())
    assert optimised == {id(p) for name, p in model.named_parameters() if not name.startswith("teacher.")}
    assert not torch.equal(model.teacher.backbone.weight, initial)
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())

    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["teacher/momentum"] for entry in logged] == pytest.approx(expected)
    reported = [entry for entry in trainer.recorded if "loss" in entry]  # a callback listed before the teacher's
    assert [entry["teacher/momentum"] for entry in reported] == pytest.approx(expected)


def test_callback_needs_a_model_that_updates_its_teacher(tmp_path):
    class NoTeacher(TinyTeacherModel):
        update_teacher = None

    with pytest.raises(TypeError, match="NoTeacher has no update_teacher"):
        train(NoTeacher(TinyTeacherConfig()), tmp_path, MomentumTeacherCallback())


def test_save_and_from_pretrained_restore_the_teacher_exactly_and_frozen(tmp_path):
    torch.manual_seed(0)
    model = TinyTeacherModel(TinyTeacherConfig())
    with torch.no_grad():
        model.backbone.weight.add_(1.0)
        model.head[1].running_mean.add_(2.0)
    model.update_teacher(0.5)  # the teacher now differs from both the student and a fresh copy of it
    model.save_pretrained(tmp_path)

    loaded = TinyTeacherModel.from_pretrained(tmp_path)
    saved, loaded_state = model.state_dict(), loaded.state_dict()
    assert any(name.startswith("teacher.") for name in saved) and saved.keys() == loaded_state.keys()
    for name, value in saved.items():
        torch.testing.assert_close(loaded_state[name], value, rtol=0, atol=0, msg=name)
    assert not torch.equal(loaded.teacher.backbone.weight, loaded.backbone.weight)
    assert all(not p.requires_grad for p in loaded.teacher.parameters())
    assert all(p.requires_grad for name, p in loaded.named_parameters() if not name.startswith("teacher."))
