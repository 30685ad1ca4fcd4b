"""wav2vec 2.0-style pretraining: config, masking and negatives, parity with transformers, training, save/load,
callbacks (the export is checked in test_wav2vec_objective.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_wav2vec import NO_DROPOUT, RATE, TINY_BACKBONE, tiny_wav2vec_config
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.trainer_callback import TrainerControl, TrainerState

from hf_ssl.data.collators import AudioCollator
from hf_ssl.errors import UsageError
from hf_ssl.masking import compute_span_mask
from hf_ssl.models.wav2vec.callbacks import GumbelTemperatureCallback
from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig
from hf_ssl.models.wav2vec.loss import wav2vec_contrastive_loss
from hf_ssl.models.wav2vec.masking import sample_negative_indices
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining, Wav2VecModel

# --- config ------------------------------------------------------------------------------------------------------


def test_config_round_trip_and_auto_classes(tmp_path):
    config = tiny_wav2vec_config(diversity_loss_weight=0.3, contrastive_logits_temperature=0.2)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_wav2vec" and saved["backbone"]["model_type"] == "wav2vec2"
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, Wav2VecConfig) and isinstance(again.backbone, Wav2Vec2Config)
    assert again.backbone.conv_dim == [16, 16, 16, 16] and again.backbone.hidden_size == 32
    for key in (
        "diversity_loss_weight",
        "contrastive_logits_temperature",
        "num_codevectors_per_group",
        "sampling_rate",
    ):
        assert getattr(again, key) == getattr(config, key)
    assert isinstance(AutoModel.from_config(again), Wav2VecModel)
    assert isinstance(AutoModelForPreTraining.from_config(again), Wav2VecForPreTraining)


def test_config_backbone_from_a_path(tmp_path):
    Wav2Vec2Config(**TINY_BACKBONE).save_pretrained(tmp_path / "plain")
    assert Wav2VecConfig(backbone=str(tmp_path / "plain")).backbone.hidden_size == 32
    tiny_wav2vec_config().save_pretrained(tmp_path / "ours")  # one of our checkpoints: its backbone is taken
    assert Wav2VecConfig(backbone=str(tmp_path / "ours")).backbone.conv_kernel == [10, 3, 3, 3]
    with pytest.raises(UsageError, match="backbone: cannot read"):
        Wav2VecConfig(backbone=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mask_time_prob", 1.5, r"mask_time_prob must be in \(0, 1\]"),
        ("mask_time_length", 0, "mask_time_length must be an integer >= 1"),
        ("num_negatives", 2.5, "num_negatives must be an integer >= 1"),
        ("codevector_dim", 15, "codevector_dim .* must be a multiple of num_codevector_groups"),
        ("contrastive_logits_temperature", 0.0, "contrastive_logits_temperature must be > 0"),
        ("min_gumbel_temperature", 3.0, "max_gumbel_temperature must be >= 3"),
        ("gumbel_temperature_decay", 1.5, "gumbel_temperature_decay must be in"),
        ("feat_quantizer_dropout", 1.0, "feat_quantizer_dropout must be in"),
        ("max_duration_seconds", 0.001, "max_duration_seconds .* is too short"),
    ],
)
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(UsageError, match=message):
        tiny_wav2vec_config(**{field: value})


def test_receptive_field():
    assert Wav2VecConfig().receptive_field == 400 and Wav2VecConfig().frame_stride == 320  # 25 ms, 20 ms at 16 kHz
    assert tiny_wav2vec_config().receptive_field == 1 + 9 + 2 * 5 + 2 * 10 + 2 * 20  # 1 + sum (k_i - 1) * prod s_<i
    assert tiny_wav2vec_config().frame_stride == 40  # 5 ms frames at 8 kHz


# --- masks and negatives -------------------------------------------------------------------------------------------


def test_span_mask_respects_prob_length_and_padding():
    torch.manual_seed(1)
    lengths = torch.tensor([200, 120, 37, 200])
    masks = torch.stack([compute_span_mask(4, 200, 0.4, 5, 1, lengths=lengths) for _ in range(200)])  # (R, B, T)
    padded = torch.arange(200)[None, None, :] >= lengths[None, :, None]
    assert not masks[padded.expand_as(masks)].any()  # never into the padding
    # every masked run is made of whole spans: runs are at least mask_length long
    row = masks[0, 0].int()
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int), row, torch.zeros(1, dtype=torch.int)]))
    runs = torch.nonzero(edges == -1).flatten() - torch.nonzero(edges == 1).flatten()
    assert (runs >= 5).all()
    # expected masked fraction: spans cover <= mask_prob (overlaps), well above half of it
    fraction = masks[:, 0].float().mean().item()
    assert 0.25 < fraction <= 0.4
    more = torch.stack([compute_span_mask(1, 200, 0.8, 5, 0) for _ in range(50)]).float().mean().item()
    assert more > fraction + 0.1
    # the min_masks floor: a tiny prob still gives min_masks spans
    assert (compute_span_mask(8, 100, 0.001, 5, 2).sum(1) >= 5).all()


def test_negatives_are_other_masked_frames_of_the_same_utterance():
    torch.manual_seed(2)
    lengths = torch.tensor([60, 25, 60])
    mask = compute_span_mask(3, 60, 0.5, 4, 2, lengths=lengths)
    negatives = sample_negative_indices(mask, 20)  # (B, T, K)
    assert negatives.shape == (3, 60, 20)
    for b in range(3):
        frames = torch.nonzero(mask[b]).flatten()
        for t in frames.tolist():
            chosen = negatives[b, t] - b * 60
            assert (chosen != t).all()  # never the positive
            assert mask[b, chosen].all()  # masked frames of the same utterance, hence unpadded
            assert (chosen < lengths[b]).all()
    # uniform over the other masked frames: with many draws every other masked frame shows up
    frames = torch.nonzero(mask[0]).flatten()
    draws = sample_negative_indices(mask, 2000)[0, frames[0]]
    assert set(draws.tolist()) == set(frames[1:].tolist())


def test_model_draws_masks_from_the_attention_mask():
    config = tiny_wav2vec_config()
    model = Wav2VecForPreTraining(config).train()
    x = torch.randn(2, RATE)
    attention_mask = torch.ones(2, RATE, dtype=torch.long)
    attention_mask[1, RATE // 2 :] = 0
    out = model(x, attention_mask=attention_mask)
    valid = model._get_feat_extract_output_lengths(torch.tensor(RATE // 2))
    assert out.mask_time_indices.shape == (2, model._get_feat_extract_output_lengths(RATE))
    assert out.mask_time_indices[1].any() and not out.mask_time_indices[1, valid:].any()
    assert torch.isfinite(out.loss)


# --- parity with transformers ---------------------------------------------------------------------------------------


def _reference_pair(config: Wav2VecConfig) -> tuple[Wav2VecForPreTraining, Wav2Vec2ForPreTraining]:
    ours = Wav2VecForPreTraining(config)
    ref_config = Wav2Vec2Config(
        **{
            **config.backbone.to_dict(),
            "num_codevector_groups": config.num_codevector_groups,
            "num_codevectors_per_group": config.num_codevectors_per_group,
            "codevector_dim": config.codevector_dim,
            "proj_codevector_dim": config.proj_codevector_dim,
            "contrastive_logits_temperature": config.contrastive_logits_temperature,
            "diversity_loss_weight": config.diversity_loss_weight,
            "feat_quantizer_dropout": config.feat_quantizer_dropout,
        }
    )
    reference = Wav2Vec2ForPreTraining(ref_config)
    state = {k.replace("wav2vec.backbone.", "wav2vec2.", 1): v for k, v in ours.state_dict().items()}
    missing, unexpected = reference.load_state_dict(state, strict=True), None
    assert not missing.missing_keys and not missing.unexpected_keys and unexpected is None
    return ours, reference


def _masks(model, batch: int, samples: int, attention_mask=None):
    frames = int(model._get_feat_extract_output_lengths(samples))
    lengths = model._get_feat_extract_output_lengths(attention_mask.sum(-1)) if attention_mask is not None else None
    mask = compute_span_mask(batch, frames, 0.5, 4, 2, lengths=lengths)
    return mask, sample_negative_indices(mask, model.config.num_negatives)


def test_parity_with_transformers_eval_mode():
    """Same weights, masks and negatives; eval mode, where both quantizers take the argmax codes (no noise)."""
    torch.manual_seed(3)
    config = tiny_wav2vec_config(num_negatives=12, feature_penalty_weight=0.0)
    ours, reference = _reference_pair(config)
    ours.eval(), reference.eval()
    x = torch.randn(3, RATE)
    attention_mask = torch.ones(3, RATE, dtype=torch.long)
    attention_mask[2, 5000:] = 0
    x[2, 5000:] = 0
    mask, negatives = _masks(ours, 3, RATE, attention_mask)
    with torch.no_grad():
        mine = ours(x, attention_mask, mask_time_indices=mask, sampled_negative_indices=negatives)
        theirs = reference(x, attention_mask, mask_time_indices=mask, sampled_negative_indices=negatives)
    masked = mask.sum()  # transformers sums over masked frames, we average
    torch.testing.assert_close(mine.contrastive_loss * masked, theirs.contrastive_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.diversity_loss * masked, theirs.diversity_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.codevector_perplexity, theirs.codevector_perplexity, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.loss * masked, theirs.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.projected_states, theirs.projected_states, rtol=1e-5, atol=1e-5)
    assert mine.contrastive_loss > 0.5  # not a degenerate comparison


def test_parity_with_transformers_train_mode_same_gumbel_noise():
    """Training mode: no dropout, and the same seed before each forward, so both quantizers draw the same Gumbel
    noise (ours draws it over the same elements in the same order as ``torch.nn.functional.gumbel_softmax``)."""
    torch.manual_seed(4)
    config = tiny_wav2vec_config(
        backbone=NO_DROPOUT, num_codevectors_per_group=64, num_negatives=8, feature_penalty_weight=0.0
    )
    ours, reference = _reference_pair(config)
    ours.train(), reference.train()
    ours.set_gumbel_temperature(1.3)
    reference.set_gumbel_temperature(1.3)
    x = torch.randn(2, RATE)
    mask, negatives = _masks(ours, 2, RATE)
    torch.manual_seed(5)
    mine = ours(x, mask_time_indices=mask, sampled_negative_indices=negatives)
    torch.manual_seed(5)
    theirs = reference(x, mask_time_indices=mask, sampled_negative_indices=negatives)
    masked = mask.sum()
    torch.testing.assert_close(mine.projected_quantized_states, theirs.projected_quantized_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.contrastive_loss * masked, theirs.contrastive_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.diversity_loss * masked, theirs.diversity_loss, rtol=1e-5, atol=1e-5)
    # and the same gradients reach the codebook
    (mine.contrastive_loss * masked + config.diversity_loss_weight * mine.diversity_loss * masked).backward()
    theirs.loss.backward()
    torch.testing.assert_close(
        ours.quantizer.codevectors.grad, reference.quantizer.codevectors.grad, rtol=1e-4, atol=1e-5
    )


def test_contrastive_loss_drops_negatives_equal_to_the_positive():
    predicted = torch.randn(1, 4, 8)
    targets = torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, True, False]])
    negatives = torch.tensor([[[1, 2], [0, 2], [0, 1], [3, 3]]])
    codes = torch.tensor([[[0], [0], [1], [2]]])  # frames 0 and 1 share their code
    loss, _ = wav2vec_contrastive_loss(predicted, targets, mask, negatives, 0.1, target_codes=codes)
    distinct = torch.tensor([[[0], [1], [2], [3]]])
    loss_all, _ = wav2vec_contrastive_loss(predicted, targets, mask, negatives, 0.1, target_codes=distinct)
    assert loss < loss_all  # a dropped distractor can only lower the cross entropy


def test_loss_adds_weighted_diversity_and_feature_penalty():
    config = tiny_wav2vec_config(diversity_loss_weight=0.25, feature_penalty_weight=3.0)
    model = Wav2VecForPreTraining(config).eval()
    x = torch.randn(2, RATE)
    with torch.no_grad():
        out = model(x)  # masks and negatives drawn by the model
        conv = model.backbone.feature_extractor(x)  # (B, C, T) raw conv features, before the layer norm
    torch.testing.assert_close(out.feature_penalty, conv.pow(2).mean())
    torch.testing.assert_close(out.loss, out.contrastive_loss + 0.25 * out.diversity_loss + 3.0 * out.feature_penalty)
    assert 0.0 <= out.contrastive_accuracy <= 1.0
    assert 2.0 <= out.codevector_perplexity <= 2 * 16  # between G and G * V
    assert out.mask_time_indices.any()


def test_given_negatives_must_stay_in_their_utterance():
    model = Wav2VecForPreTraining(tiny_wav2vec_config()).eval()
    mask, negatives = _masks(model, 2, RATE)
    negatives[0, 0, 0] = mask.shape[1]  # frame 0 of utterance 1, offered to utterance 0
    with pytest.raises(ValueError, match="same utterance"):
        model(torch.randn(2, RATE), mask_time_indices=mask, sampled_negative_indices=negatives)


# --- training ------------------------------------------------------------------------------------------------------


def test_every_parameter_gets_a_gradient():
    model = Wav2VecForPreTraining(tiny_wav2vec_config(feat_quantizer_dropout=0.1)).train()
    out = model(torch.randn(2, RATE))
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        if name != "wav2vec.backbone.masked_spec_embed" and "codevectors" not in name:
            assert parameter.grad.abs().sum() > 0, name
    assert model.quantizer.codevectors.grad.abs().sum() > 0  # the chosen entries move


def test_save_load_round_trip(tmp_path):
    model = Wav2VecForPreTraining(tiny_wav2vec_config()).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    x = torch.randn(2, RATE)
    mask, negatives = _masks(model, 2, RATE)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, Wav2VecForPreTraining)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(x, mask_time_indices=mask, sampled_negative_indices=negatives).loss,
            model(x, mask_time_indices=mask, sampled_negative_indices=negatives).loss,
        )
        backbone = AutoModel.from_pretrained(tmp_path).eval()
        assert isinstance(backbone, Wav2VecModel)
        torch.testing.assert_close(backbone(x).last_hidden_state, model.wav2vec(x).last_hidden_state)


FSDD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "audio" / "fsdd" / "train.parquet"


def _audio_rows(source: str, rows: int = 32) -> list[dict]:
    if source == "default":
        from hf_ssl.data.audio import load_default_audio

        ds = load_default_audio("train", sampling_rate=RATE)
    else:
        if not FSDD.exists():
            pytest.skip(f"real data not available: {FSDD} is absent (see ../shared/data/README.md)")
        from datasets import Audio, load_dataset

        ds = load_dataset("parquet", data_files={"train": str(FSDD)}, split="train")
        ds = ds.cast_column("audio", Audio(decode=False))  # decoded by hf_ssl.data.audio (soundfile)
    return [ds[i] for i in range(rows)]


@pytest.mark.parametrize("source", ["default", "fsdd"])
def test_loss_decreases_below_chance(source):
    """24 AdamW steps on 32 clips (synthesised words, or real FSDD recordings at their own 8 kHz), with the Gumbel
    temperature annealed by the callback, take the contrastive loss below chance, ``ln(K + 1)`` (where it lands by
    merely flattening its initial logits), and the accuracy above ``1 / (K + 1)``, without codebook collapse."""
    torch.manual_seed(0)
    config = tiny_wav2vec_config(backbone={"feat_extract_norm": "group"})  # the front end of wav2vec 2.0 BASE
    rows = _audio_rows(source)
    collate = AudioCollator(config, "audio", max_length_samples=RATE)
    model = Wav2VecForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    callback = GumbelTemperatureCallback()
    state, losses, accuracies = TrainerState(), [], []
    for step in range(24):
        state.global_step = step
        callback.on_step_begin(None, state, TrainerControl(), model=model)
        out = model(**collate(rows[(step % 4) * 8 : (step % 4) * 8 + 8]))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.contrastive_loss.item())
        accuracies.append(out.contrastive_accuracy.item())
    chance = math.log(config.num_negatives + 1)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.5 and last < chance - 0.15, losses
    assert sum(accuracies[-4:]) / 4 > 1.5 / (config.num_negatives + 1), accuracies
    assert out.codevector_perplexity > 2 * config.num_codevector_groups  # far from the collapsed floor


def test_perplexity_gradient_is_finite_when_an_entry_is_unused():
    """A codebook entry no frame uses (its softmax underflows to 0) must not turn the diversity gradient into NaN."""
    from hf_ssl.models.wav2vec.loss import codevector_perplexity

    logits = torch.tensor([[[-200.0, 0.0, 0.0]], [[-200.0, 1.0, 0.0]]], requires_grad=True)  # (N=2, G=1, V=3)
    codevector_perplexity(logits.softmax(-1)).backward()
    assert torch.isfinite(logits.grad).all()


# --- callbacks -----------------------------------------------------------------------------------------------------


def test_gumbel_callback_anneals_and_floors():
    config = tiny_wav2vec_config(max_gumbel_temperature=2.0, min_gumbel_temperature=0.5, gumbel_temperature_decay=0.9)
    model = Wav2VecForPreTraining(config)
    callback = GumbelTemperatureCallback()
    state = TrainerState()
    seen = []
    for step in (0, 1, 5, 100):
        state.global_step = step
        callback.on_step_begin(None, state, TrainerControl(), model=model)
        seen.append(model.quantizer.temperature)
    assert seen[:3] == pytest.approx([2.0, 1.8, 2.0 * 0.9**5])
    assert seen[3] == 0.5  # 2 * 0.9 ** 100 is far below the floor
