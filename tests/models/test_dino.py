"""DINO's head (against lightly's DINOProjectionHead), config validation, and model: the teacher sees only the
global views, gets no gradient, follows the EMA; save / from_pretrained round trip."""

from __future__ import annotations

import re

import pytest
import torch
from common import ObjectiveChecks
from lightly.models.modules import DINOProjectionHead as LightlyDINOProjectionHead
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerState

from hf_ssl.backbones.timm import check_input_sizes
from hf_ssl.cli import main
from hf_ssl.errors import UsageError
from hf_ssl.models.dino import DINO
from hf_ssl.models.dino.callbacks import DINOScheduleCallback
from hf_ssl.models.dino.configuration_dino import DINOConfig
from hf_ssl.models.dino.loss import dino_loss
from hf_ssl.models.dino.modeling_dino import DINOForPreTraining, DINOModel, DINOProjectionHead


def tiny_config(**overrides) -> DINOConfig:
    values = dict(
        backbone="resnet18",
        backbone_kwargs={"layers": [1, 1, 1, 1]},
        image_size=32,
        out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        num_local_crops=2,
        local_crop_size=16,
    )
    return DINOConfig(**(values | overrides))


def views(batch: int = 3, num_local: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch, 2, 3, 32, 32, generator=g),
        "local_pixel_values": torch.randn(batch, num_local, 3, 16, 16, generator=g),
    }


# --- the head -----------------------------------------------------------------------------------------------------


def lightly_state(head: DINOProjectionHead) -> dict[str, torch.Tensor]:
    """Our head's weights under lightly's names (``layers.*``, ``last_layer.weight_g`` / ``weight_v``)."""
    state = {k.replace("mlp.", "layers."): v for k, v in head.state_dict().items() if not k.startswith("last_layer")}
    return state | {"last_layer.weight_g": head.weight_g.detach(), "last_layer.weight_v": head.weight_v.detach()}


@pytest.mark.filterwarnings("ignore::FutureWarning")  # lightly's torch.nn.utils.weight_norm
@pytest.mark.parametrize("batch_norm", [False, True])
def test_head_has_lightlys_shapes_and_outputs(batch_norm):
    ours = DINOProjectionHead(24, 32, 8, 40, batch_norm=batch_norm).eval()
    theirs = LightlyDINOProjectionHead(24, 32, 8, 40, batch_norm=batch_norm).eval()
    mine = lightly_state(ours)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    with torch.no_grad():  # move the gain away from 1 so the weight norm is exercised
        ours.weight_g.mul_(torch.rand_like(ours.weight_g) + 0.5)
    theirs.load_state_dict(lightly_state(ours))
    x = torch.randn(5, 24)
    torch.testing.assert_close(ours(x), theirs(x))
    theirs_trainable = {k for k, p in theirs.named_parameters() if p.requires_grad}
    ours_named = {k.replace("mlp.", "layers."): p for k, p in ours.mlp.named_parameters(prefix="mlp")}
    assert theirs_trainable == set(ours_named) | {"last_layer.weight_v"}
    assert not ours.weight_g.requires_grad and ours.weight_v.requires_grad
    assert all(p.requires_grad for p in ours.mlp.parameters())


def test_head_initialisation_is_dinos():
    torch.manual_seed(0)
    head = DINOProjectionHead(256, 512, 256, 1000)
    for layer in (m for m in head.mlp if isinstance(m, nn.Linear)):
        assert layer.weight.std().item() == pytest.approx(0.02, rel=0.03)  # cut at +-2 = +-100 sigma: std 0.02
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert torch.equal(head.weight_g, torch.ones(1000, 1)) and not head.weight_g.requires_grad
    bound = 1 / 256**0.5  # nn.Linear's default: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert head.weight_v.abs().max() <= bound and head.weight_v.abs().max() > 0.9 * bound
    weight = head.last_layer.weight
    torch.testing.assert_close(weight.norm(dim=1), torch.ones(1000))  # unit-norm prototypes
    assert DINOProjectionHead(8, 8, 4, 6, norm_last_layer=False).weight_g.requires_grad


def test_head_gain_stays_frozen_after_train_and_its_gradients_can_be_cancelled():
    head = DINOProjectionHead(8, 8, 4, 6)
    head.last_layer.parametrizations.weight.original0 = nn.Parameter(torch.ones(6, 1))  # as loading does
    head.train()
    assert not head.weight_g.requires_grad
    head(torch.randn(3, 8)).sum().backward()
    assert head.weight_v.grad is not None
    head.cancel_last_layer_gradients()
    assert head.weight_v.grad is None and head.mlp[0].weight.grad is not None


# --- the config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"backbone": "no_such_net"}, "backbone"),
        ({"out_dim": 0}, "out_dim"),
        ({"student_temperature": 0.0}, "student_temperature"),
        ({"teacher_momentum": 0.9, "teacher_momentum_final": 0.8}, "teacher_momentum_final"),
        ({"center_momentum": 1.5}, "center_momentum"),
        ({"num_global_crops": 1, "num_local_crops": 0}, "two views"),
        ({"local_crop_scale": (0.5, 0.2)}, r"local_crop_scale\[1\]"),
        ({"global_crop_scale": 0.4}, "global_crop_scale"),
        ({"warmup_teacher_temperature_steps": -1}, "warmup_teacher_temperature_steps"),
    ],
)
def test_config_refuses_bad_values_in_one_line(overrides, field):
    with pytest.raises(UsageError, match=field) as caught:
        tiny_config(**overrides)
    assert "\n" not in str(caught.value)


def test_config_round_trips_every_hyperparameter(tmp_path):
    config = tiny_config(teacher_temperature=0.07, warmup_teacher_temperature_epochs=30, global_crop_scale=(0.3, 1))
    config.save_pretrained(tmp_path)
    again = DINOConfig.from_pretrained(tmp_path)
    assert again.to_diff_dict() == config.to_diff_dict()
    assert again.global_crop_scale == [0.3, 1.0] and again.teacher_temperature == 0.07


# --- the model ----------------------------------------------------------------------------------------------------


def test_teacher_sees_only_the_global_views_and_the_loss_is_dinos():
    torch.manual_seed(0)
    model = DINOForPreTraining(tiny_config()).eval()
    seen: list[tuple[int, ...]] = []
    model.teacher.dino.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    batch = views()
    with torch.no_grad():
        out = model(**batch, teacher_temperature=0.05)
    assert seen == [(3 * 2, 3, 32, 32)]
    assert out.student_logits.shape == (3, 4, 64) and out.teacher_logits.shape == (3, 2, 64)
    with torch.no_grad():  # the teacher starts equal to the student: its logits are the student's on the globals
        torch.testing.assert_close(out.teacher_logits, out.student_logits[:, :2])
    expected = dino_loss(out.student_logits, out.teacher_logits, torch.zeros(64), 0.1, 0.05)
    torch.testing.assert_close(out.loss, expected)
    assert out.teacher_temperature.item() == pytest.approx(0.05)


def test_no_gradient_reaches_the_teacher_and_every_trainable_student_parameter_gets_one():
    torch.manual_seed(0)  # timm zero-initialises each block's last BatchNorm, which would stop gradients at step 0
    config = tiny_config(backbone_kwargs={"layers": [1, 1, 1, 1], "zero_init_last": False})
    model = DINOForPreTraining(config).train()
    model(**views()).loss.backward()
    teacher = dict(model.teacher.named_parameters())
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher.values())
    student = {n: p for n, p in model.named_parameters() if not n.startswith("teacher.")}
    assert {n for n, p in student.items() if not p.requires_grad} == {
        "head.last_layer.parametrizations.weight.original0"
    }
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.values() if p.requires_grad)


def test_center_moves_in_training_only_and_teacher_follows_the_ema():
    torch.manual_seed(0)
    model = DINOForPreTraining(tiny_config())
    with torch.no_grad():
        model.eval()(**views())
    assert torch.equal(model.criterion.center, torch.zeros(64))
    with torch.no_grad():
        out = model.train()(**views())
    torch.testing.assert_close(model.criterion.center, 0.1 * out.teacher_logits.mean(dim=(0, 1)))
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1)
    model.update_teacher(0.9)
    for name, p in model.teacher.named_parameters():
        student = model.get_parameter(name)
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * student, rtol=0, atol=1e-7)


def test_teacher_temperature_schedule_in_epochs_or_steps():
    model = DINOForPreTraining(
        tiny_config(warmup_teacher_temperature=0.04, teacher_temperature=0.07, warmup_teacher_temperature_epochs=4)
    )
    assert model.teacher_temperature_at(0.0, 0) == pytest.approx(0.04)
    assert model.teacher_temperature_at(1.5, 999) == pytest.approx(0.055)
    assert model.teacher_temperature_at(3.0, 0) == pytest.approx(0.07)
    model.config.warmup_teacher_temperature_steps = 11
    assert model.teacher_temperature_at(100.0, 5) == pytest.approx(0.055)
    model.set_teacher_temperature(0.06)
    with torch.no_grad():
        assert model.eval()(**views()).teacher_temperature.item() == pytest.approx(0.06)


def test_save_and_from_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DINOForPreTraining(tiny_config())
    with torch.no_grad():  # move away from init, teacher apart from student, a non-zero center
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.train()(**views(seed=1))
    model.eval()
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert "criterion.center" in keys and any(k.startswith("teacher.dino.backbone.") for k in keys)
    loaded = DINOForPreTraining.from_pretrained(tmp_path).eval()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    assert not loaded.train().head.weight_g.requires_grad
    loaded.eval()
    batch = views(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).loss, model(**batch).loss)
        backbone = DINOModel.from_pretrained(tmp_path).eval()  # the teacher's backbone, as DINO releases it
        x = batch["pixel_values"][:, 0]
        torch.testing.assert_close(backbone(x).pooler_output, model.teacher.dino(x).pooler_output)
        assert not torch.allclose(backbone(x).pooler_output, model.dino(x).pooler_output)


def test_evaluated_features_of_a_run_folder_are_the_exported_teachers(tmp_path):
    import timm
    from transformers import AutoModel

    from hf_ssl.evaluation.features import load_features, model_encoder
    from hf_ssl.export import export_backbone

    torch.manual_seed(0)
    model = DINOForPreTraining(tiny_config())
    with torch.no_grad():  # the teacher apart from the student
        for p in model.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "run")
    out = export_backbone(tmp_path / "run", tmp_path / "export")
    evaluated, spec = load_features(str(tmp_path / "run"))
    assert "teacher" in spec.description
    x = views(batch=4, seed=3)["pixel_values"][:, 0]
    exported = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    model.eval()
    with torch.no_grad():
        features = model_encoder(evaluated, spec.pool)({"pixel_values": x})
        torch.testing.assert_close(features, exported(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features, model.teacher.dino(x).pooler_output, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(features, model.dino(x).pooler_output, atol=1e-3)  # not the student's
        auto = AutoModel.from_pretrained(tmp_path / "run").eval()
        torch.testing.assert_close(auto(x).pooler_output, features, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_refused():
    model = DINOForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="B, G, C, H, W"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at least two views"):
        model(torch.randn(2, 1, 3, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backbone", "convnext_atto", "--small_image_stem", "true", "--local_crop_size", "16"],
         "--local_crop_size 16: backbone 'convnext_atto' cannot take 16 x 16 images"),
        (["--backbone", "vit_tiny_patch16_224", "--backbone_kwargs", '{"depth": 1}', "--local_crop_size", "20"],
         "--local_crop_size 20: backbone 'vit_tiny_patch16_224' cannot take 20 x 20 images .*divisible"),
    ],
)  # fmt: skip
def test_crops_the_backbone_cannot_take_are_refused_before_training(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "dino", *flags, "--image_size", "32", "--out_dim", "64", "--max_steps", "1",
              "--output_dir", str(tmp_path), "--report_to", "none"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search("hf-ssl: error: " + message, err) and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before anything was trained or written


def test_the_crop_size_check_leaves_the_seeded_initialisation_alone():
    """The check builds its own backbone before the run builds the model: under a forked random state, so a seed
    gives the same initial weights with the check as without it."""
    config = tiny_config()
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    check_input_sizes(config.backbone, config.timm_kwargs, 3, {"--image_size": 32, "--local_crop_size": 16})
    assert torch.equal(torch.rand(4), expected)


# --- the objective ------------------------------------------------------------------------------------------------


class TestDINOObjective(ObjectiveChecks):
    objective = DINO

    def tiny_config(self):
        return tiny_config()

    def pretrain_flags(self):
        return ["--backbone", "resnet18", "--backbone_kwargs", '{"layers": [1, 1, 1, 1]}', "--image_size", "32",
                "--out_dim", "64", "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--num_local_crops", "2",
                "--local_crop_size", "16", "--global_blur_probs", "0", "--local_blur_prob", "0",
                "--per_device_train_batch_size", "8"]  # fmt: skip

    def batch(self, config):
        return views(batch=6)


def test_schedule_callback_sets_the_temperature_and_freezes_the_prototypes_in_the_first_epoch():
    model = DINOForPreTraining(tiny_config(teacher_temperature=0.07, warmup_teacher_temperature_epochs=3))
    callback = DINOScheduleCallback()
    state = TrainerState(epoch=1.0, global_step=4)
    callback.on_step_begin(None, state, None, model=model)
    assert model.current_teacher_temperature == pytest.approx(0.055)
    model.train()(**views()).loss.backward()
    callback.on_pre_optimizer_step(None, TrainerState(epoch=1.5), None, model=model)
    assert model.head.weight_v.grad is not None  # past freeze_last_layer_epochs = 1
    callback.on_pre_optimizer_step(None, TrainerState(epoch=0.5), None, model=model)
    assert model.head.weight_v.grad is None and model.head.mlp[0].weight.grad is not None


def test_a_vit_takes_local_crops_of_another_size_and_exports_the_argument():
    config = tiny_config(backbone="vit_tiny_patch16_224", small_image_stem=True, backbone_kwargs={"depth": 1})
    assert config.timm_kwargs["dynamic_img_size"] is True
    assert "dynamic_img_size" not in tiny_config(backbone="resnet18").timm_kwargs
    assert "dynamic_img_size" not in tiny_config(backbone="vit_tiny_patch16_224", num_local_crops=0).timm_kwargs
    torch.manual_seed(0)
    out = DINOForPreTraining(config)(**views())
    assert out.student_logits.shape == (3, 4, 64) and torch.isfinite(out.loss)


def test_a_trainer_run_warms_the_temperature_up_moves_the_teacher_and_keeps_the_prototypes_in_the_first_epoch(
    tmp_path,
):
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_ssl.trainer import SSLTrainer

    config = tiny_config(warmup_teacher_temperature_steps=3, teacher_temperature=0.06, teacher_momentum=0.5)
    torch.manual_seed(0)
    model = DINOForPreTraining(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, learning_rate=0.01,
                             logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_pin_memory=False, disable_tqdm=True, remove_unused_columns=False)  # fmt: skip
    rows = Dataset.from_dict({"seed": list(range(64))})  # 64 rows: 3 steps of 4 stay inside the first epoch
    collate = lambda rows: views(batch=len(rows), seed=rows[0]["seed"])  # noqa: E731
    trainer = SSLTrainer(
        model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=DINO.callbacks(config)
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["teacher_temperature"] for entry in logged] == pytest.approx([0.04, 0.05, 0.06])
    assert [entry["teacher/momentum"] for entry in logged][0] == pytest.approx(0.5)
    for name in (
        "head.last_layer.parametrizations.weight.original1",
        "head.last_layer.parametrizations.weight.original0",
    ):
        assert torch.equal(model.get_parameter(name), before[name]), name  # frozen during the first epoch
    assert not torch.equal(model.head.mlp[0].weight, before["head.mlp.0.weight"])
    assert not torch.equal(model.teacher.head.mlp[0].weight, before["teacher.head.mlp.0.weight"])
    assert model.criterion.center.abs().sum() > 0


def test_a_vit_run_with_local_crops_of_another_size_exports_the_teachers_features_to_timm(tmp_path):
    """``dynamic_img_size`` (set for local crops of another size) travels in the export's ``model_args``: timm
    rebuilds the same ViT and gives the teacher's features, on the global size and on the local one."""
    import timm

    from hf_ssl.export import export_backbone

    config = tiny_config(backbone="vit_tiny_patch16_224", small_image_stem=True, backbone_kwargs={"depth": 1})
    torch.manual_seed(0)
    model = DINOForPreTraining(config).train()
    model(**views()).loss.backward()  # a training forward (moves the center), then the teacher apart
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "run")
    out = export_backbone(tmp_path / "run", tmp_path / "export")
    exported = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    batch = views(seed=4)
    model.eval()
    with torch.no_grad():
        for x in (batch["pixel_values"][:, 0], batch["local_pixel_values"][:, 0]):  # 32 px and 16 px
            teacher = model.teacher.dino(x).pooler_output
            torch.testing.assert_close(exported(x), teacher, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(exported(x), model.dino(x).pooler_output, atol=1e-3)
