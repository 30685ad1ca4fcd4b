"""data2vec audio: the shared objective checks, the loss on a hand-computed case, the teacher (unmasked input, no
gradient, eval mode), the export as a plain ``Data2VecAudioModel`` giving the student's features without hf_ssl, the
config's refusals, and a short CLI run on the default data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from common import ObjectiveChecks
from tiny_wav2vec import RATE

from hf_ssl.errors import UsageError
from hf_ssl.masking import compute_span_mask
from hf_ssl.models.data2vec_audio import DATA2VEC_AUDIO
from hf_ssl.models.data2vec_audio.configuration_data2vec_audio import Data2VecAudioPretrainingConfig
from hf_ssl.models.data2vec_audio.modeling_data2vec_audio import Data2VecAudioForPreTraining, data2vec_audio_targets

TINY_BACKBONE = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[16, 16, 16, 16],
    conv_kernel=[10, 3, 3, 3],
    conv_stride=[5, 2, 2, 2],
    num_conv_pos_embeddings=5,
    conv_pos_kernel_size=5,
    num_conv_pos_embedding_groups=4,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    layerdrop=0.0,
)
"""A transformers ``Data2VecAudioConfig`` of the tests' tiny size (wav2vec's tiny CNN: a frame every 40 samples at
8 kHz), dropout off."""
TINY_OBJECTIVE = dict(
    average_top_k_layers=2, mask_time_prob=0.5, mask_time_length=4, sampling_rate=RATE, max_duration_seconds=1.0
)


def tiny_config(**overrides) -> Data2VecAudioPretrainingConfig:
    return Data2VecAudioPretrainingConfig(backbone=dict(TINY_BACKBONE), **{**TINY_OBJECTIVE, **overrides})


def tiny_flags() -> list[str]:
    flags = ["--backbone", json.dumps(TINY_BACKBONE)]
    return flags + [arg for key, value in TINY_OBJECTIVE.items() for arg in (f"--{key}", str(value))]


def audio_batch(config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    t = torch.arange(RATE) / RATE
    tones = torch.stack([torch.sin(2 * math.pi * 440 * t), torch.sin(2 * math.pi * 700 * t)])
    input_values = tones + 0.1 * torch.randn(2, RATE, generator=generator)
    attention_mask = torch.ones(2, RATE, dtype=torch.long)
    attention_mask[1, 6000:] = 0
    model = Data2VecAudioForPreTraining(config)
    frames = int(model.backbone._get_feat_extract_output_lengths(RATE))
    lengths = model.backbone._get_feat_extract_output_lengths(attention_mask.sum(-1))
    mask = compute_span_mask(2, frames, 0.5, 4, 2, lengths=lengths, generator=generator)
    return {"input_values": input_values, "attention_mask": attention_mask, "mask_time_indices": mask}


class TestData2VecAudioObjective(ObjectiveChecks):
    objective = DATA2VEC_AUDIO

    def tiny_config(self):
        return tiny_config()

    def pretrain_flags(self):
        return [*tiny_flags(), "--per_device_train_batch_size", "4"]

    def batch(self, config):
        return audio_batch(config)


# --- targets and loss ------------------------------------------------------------------------------------------------


def test_every_target_norm_in_fairseqs_order():
    """All four norms on: fairseq's ``Data2VecAudioModel.forward`` (``examples/data2vec/models/data2vec_audio.py``)
    instance-norms then layer-norms each layer, averages, then layer-norms and instance-norms the average."""
    config = tiny_config(layer_norm_target_layer=True, layer_norm_targets=True, instance_norm_targets=True)
    layers = [torch.randn(2, 5, 3) * (i + 1) + i for i in range(3)]  # (B, T, H)
    y = [F.instance_norm(layer.transpose(1, 2)).transpose(1, 2) for layer in layers[-2:]]
    y = [F.layer_norm(layer, layer.shape[-1:]) for layer in y]
    y = sum(y) / len(y)
    y = F.layer_norm(y, y.shape[-1:])
    expected = F.instance_norm(y.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(data2vec_audio_targets(layers, config), expected)
    plain = data2vec_audio_targets(layers, tiny_config())
    assert not torch.allclose(plain, expected, atol=1e-3)  # the extra norms change the targets


def test_targets_are_the_mean_of_the_top_k_instance_normed_layers():
    config = tiny_config()
    layers = [torch.randn(2, 5, 3) * (i + 1) + i for i in range(3)]  # (B, T, H)
    expected = sum((layer - layer.mean(1, keepdim=True)) / torch.sqrt(layer.var(1, unbiased=False, keepdim=True)
                   + 1e-5) for layer in layers[-2:]) / 2  # fmt: skip
    torch.testing.assert_close(data2vec_audio_targets(layers, config), expected)
    # padded frames are left out of the statistics: the unpadded part alone gives the same targets there
    frame_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    padded = data2vec_audio_targets(layers, config, frame_mask)
    alone = data2vec_audio_targets([layer[:1, :3] for layer in layers], config)
    torch.testing.assert_close(padded[:1, :3], alone)


def test_loss_is_the_formula_on_a_hand_computed_case(monkeypatch):
    """Targets fixed by hand: the loss is sum over masked frames and features of (pred - target)^2 / sqrt(H),
    divided by the masked-frame count (or by ``num_items_in_batch``); smooth L1 when ``loss_beta`` > 0."""
    config = tiny_config()
    model = Data2VecAudioForPreTraining(config).eval()
    batch = audio_batch(config)
    mask = batch["mask_time_indices"]
    targets = torch.randn(*mask.shape, 32, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(model, "teacher_targets", lambda *args: targets)
    with torch.no_grad():
        output = model(**batch)
        hidden = model.data2vec_audio(batch["input_values"], batch["attention_mask"], mask_time_indices=mask)
        predictions = model.regression_head(hidden.last_hidden_state)[mask]  # (N, H)
        count = int(mask.sum())
        expected = ((predictions - targets[mask]) ** 2).sum() / math.sqrt(32) / count
        torch.testing.assert_close(output.loss, expected)
        torch.testing.assert_close(model(**batch, num_items_in_batch=4 * count).loss, expected / 4)
        torch.testing.assert_close(output.target_var, targets[mask].var(0).mean())
        model.config.loss_beta = 0.5
        smooth = F.smooth_l1_loss(predictions, targets[mask], beta=0.5, reduction="sum") / math.sqrt(32) / count
        torch.testing.assert_close(model(**batch).loss, smooth)


def test_teacher_sees_the_unmasked_input_in_eval_mode_and_gets_no_gradient():
    config = tiny_config(target_layer_output="block", average_top_k_layers=1)
    model = Data2VecAudioForPreTraining(config).train()
    batch = audio_batch(config)
    seen = {}

    def record(module, args, kwargs, output):
        seen["training"] = module.training
        seen["last"] = output.last_hidden_state

    handle = model.teacher.data2vec_audio.backbone.register_forward_hook(record, with_kwargs=True)
    output = model(**batch)
    handle.remove()
    output.loss.backward()
    assert seen["training"] is False  # the teacher ran in eval mode (no dropout) while the student trained
    with torch.no_grad():
        unmasked = model.teacher.data2vec_audio.backbone.eval()(batch["input_values"], batch["attention_mask"])
    torch.testing.assert_close(seen["last"], unmasked.last_hidden_state)  # no mask embedding in the teacher's input
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.data2vec_audio.parameters() if p.requires_grad)


def test_update_teacher_averages_the_transformer_and_copies_the_feature_encoder():
    config = tiny_config()
    model = Data2VecAudioForPreTraining(config)
    with torch.no_grad():
        for parameter in model.data2vec_audio.parameters():
            parameter.add_(1.0)
    before = model.teacher.data2vec_audio.backbone.encoder.layers[0].feed_forward.output_dense.weight.clone()
    model.update_teacher(0.9)
    teacher, student = model.teacher.data2vec_audio.backbone, model.backbone
    layer = teacher.encoder.layers[0].feed_forward.output_dense.weight
    torch.testing.assert_close(layer, 0.9 * before + 0.1 * student.encoder.layers[0].feed_forward.output_dense.weight)
    for part in ("feature_extractor", "feature_projection"):
        for mine, theirs in zip(getattr(teacher, part).parameters(), getattr(student, part).parameters(), strict=True):
            torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"average_top_k_layers": 4}, "average_top_k_layers must be <= the backbone's 3 layers"),
        ({"average_top_k_layers": 0}, "average_top_k_layers must be an integer >= 1"),
        ({"loss_beta": -1.0}, "loss_beta"),
        ({"loss_scale": 0.0}, "loss_scale"),
        ({"teacher_momentum_final": 0.5}, "teacher_momentum_final"),
        ({"mask_time_prob": 0.0}, "mask_time_prob"),
        ({"target_layer_output": "attn"}, "target_layer_output"),
        ({"instance_norm_target_layer": "yes"}, "instance_norm_target_layer"),
        ({"max_duration_seconds": 0.001}, "max_duration_seconds"),
    ],
)
def test_bad_config_values_are_refused_in_one_line(overrides, message):
    with pytest.raises(UsageError, match=message) as info:
        tiny_config(**overrides)
    assert "\n" not in str(info.value)


_STUDENT_FEATURES = textwrap.dedent(
    """
    import sys

    import torch
    from transformers import AutoFeatureExtractor, AutoModel, Data2VecAudioModel

    folder, out = sys.argv[1], sys.argv[2]
    plain = Data2VecAudioModel.from_pretrained(folder).eval()
    auto = AutoModel.from_pretrained(folder).eval()
    assert type(auto) is Data2VecAudioModel, type(auto)
    assert not any(name == "hf_ssl" or name.startswith("hf_ssl.") for name in sys.modules)
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    x = torch.load(out + ".in.pt")
    inputs = extractor(list(x.numpy()), sampling_rate=extractor.sampling_rate, return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.save([plain(**inputs).last_hidden_state, auto(**inputs).last_hidden_state], out)
    """
)


@pytest.mark.slow
def test_export_gives_the_students_features_without_hf_ssl(tmp_path):
    from hf_ssl.data.audio import feature_extractor_for
    from hf_ssl.export import export_backbone

    config = tiny_config()
    torch.manual_seed(0)
    model = Data2VecAudioForPreTraining(config).eval()
    with torch.no_grad():  # student and teacher apart, so equal features prove the student was exported
        for parameter in model.data2vec_audio.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "ckpt")
    out = export_backbone(tmp_path / "ckpt", tmp_path / "export")
    assert {p.name for p in out.iterdir()} == set(DATA2VEC_AUDIO.exporter.files)
    x = torch.randn(2, RATE)
    torch.save(x, str(tmp_path / "features.pt.in.pt"))
    run = subprocess.run(
        [sys.executable, "-c", _STUDENT_FEATURES, str(out), str(tmp_path / "features.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    plain, auto = torch.load(tmp_path / "features.pt")
    inputs = feature_extractor_for(config)(list(x.numpy()), sampling_rate=RATE, return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model.data2vec_audio(inputs["input_values"], inputs["attention_mask"]).last_hidden_state
        teachers = model.teacher.data2vec_audio.backbone(**inputs).last_hidden_state
    torch.testing.assert_close(plain, ours)
    torch.testing.assert_close(auto, ours)
    assert not torch.allclose(plain, teachers)


@pytest.mark.slow
def test_cli_run_on_the_default_data_lowers_the_loss(tmp_path):
    from hf_ssl.cli import main

    out = tmp_path / "run"
    main(["pretrain", "data2vec_audio", *tiny_flags(), "--output_dir", str(out), "--max_steps", "30",
          "--per_device_train_batch_size", "4", "--learning_rate", "2e-3", "--logging_steps", "1",
          "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0"])  # fmt: skip
    log = json.loads((out / "hf_ssl_run.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    print("data2vec_audio losses:", losses)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    assert any("target_var" in entry for entry in log)


def test_start_from_a_plain_checkpoint_fills_student_and_teacher_and_refuses_one_that_does_not_fit(tmp_path):
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    config = tiny_config()
    plain = Data2VecAudioModel(Data2VecAudioConfig.from_dict(config.backbone.to_dict()))
    plain.save_pretrained(tmp_path / "plain")
    model = Data2VecAudioForPreTraining(config)
    DATA2VEC_AUDIO.load_start(model, str(tmp_path / "plain"), plain.config)
    reference = plain.state_dict()
    for tower in (model.backbone, model.teacher.data2vec_audio.backbone):
        for name, tensor in tower.state_dict().items():
            if name != "masked_spec_embed":  # ours: the plain model's SpecAugment is off
                assert torch.equal(tensor, reference[name]), name
    wider = Data2VecAudioModel(Data2VecAudioConfig.from_dict({**config.backbone.to_dict(), "hidden_size": 48}))
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(UsageError, match="do not fit the backbone"):
        DATA2VEC_AUDIO.load_start(model, str(tmp_path / "wider"), wider.config)
