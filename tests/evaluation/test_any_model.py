"""``hf-ssl evaluate`` of anyone's model: a timm architecture by name (random or local weights), our MLM and wav2vec
exports, plain transformers text and speech encoders, and sentence-transformers folders; unknown names are one line
naming the flag."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
from datasets import DatasetDict
from safetensors.torch import save_file
from tiny_wav2vec import TINY_BACKBONE
from transformers import (
    BertConfig,
    BertModel,
    Data2VecAudioConfig,
    Data2VecAudioModel,
    GPT2Config,
    GPT2Model,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from hf_ssl import MLMConfig, MLMForPreTraining, UsageError, Wav2VecConfig, Wav2VecForPreTraining
from hf_ssl.cli import main
from hf_ssl.data.loading import load_digits_dataset
from hf_ssl.data.text import load_default_text, train_tokenizer
from hf_ssl.evaluation import EvaluationArguments, load_features
from hf_ssl.evaluation.features import FEATURE_SPECS, mean_of_frames_per_layer, plain_audio_features
from hf_ssl.export import export_backbone
from hf_ssl.export.sentence_transformers import save_sentence_transformer
from hf_ssl.models.wav2vec.export import save_backbone_export

TEXT_ENCODER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
SPEECH = TINY_BACKBONE  # small speech encoders of any of the wav2vec 2.0 family
FAST = ["--probe_max_iter", "20", "--knn_k", "5"]
SLICES = ["--train_split", "train[:120]", "--split", "test[:60]"]  # of the embedded labelled texts


@pytest.fixture(scope="module")
def tokenizer():
    """A trained tokenizer that, as hf_ssl's trained ones do, records a training crop (16) as model_max_length."""
    return train_tokenizer(load_default_text("train")["text"][:2000], vocab_size=200, model_max_length=16)


def _evaluate(model: str | Path, tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "results.json"
    main(["evaluate", "--model_name_or_path", str(model), "--output_file", str(out), *FAST, *flags])
    return json.loads(out.read_text())


def _assert_sane(results: dict, modality: str) -> None:
    """Accuracies in [0, 1], the random-init baseline present, the data kind the model reads."""
    assert results["modality"] == modality
    for entry in (results, results["baselines"]["random_init"]):
        for protocol in ("knn", "linear_probe"):
            assert 0.0 <= entry[protocol]["accuracy"] <= 1.0


def _perturb_(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


# ------------------------------------------------------------------------------------------------------------ timm


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("digits")
    DatasetDict(
        train=load_digits_dataset("train").select(range(60)), test=load_digits_dataset("test").select(range(30))
    ).save_to_disk(folder)
    return str(folder)


@pytest.mark.slow
def test_a_timm_name_is_evaluated_at_random_init_with_timms_preprocessing_and_says_so(small_images, tmp_path):
    results = _evaluate("timm:test_resnet", tmp_path, "--dataset_name", small_images)
    _assert_sane(results, "image")
    assert results["model"] == "timm:test_resnet" and "random initialisation" in results["features"]
    assert results["num_features"] == timm.create_model("test_resnet", num_classes=0).num_features
    assert "raw_pixels" in results["baselines"]
    # its weights are the seeded random init that the baseline (seed 0 as well) also is: the same features
    for protocol in ("knn", "linear_probe"):
        assert results[protocol]["accuracy"] == results["baselines"]["random_init"][protocol]["accuracy"]
    # raw pixels are timm's data config for the model: 3 x 160 x 160 for test_resnet
    assert results["baselines"]["raw_pixels"]["num_features"] == 3 * 160 * 160


def test_a_timm_name_with_local_weights_and_a_timm_folder_give_timms_own_features(tmp_path):
    """Weights from a file or a folder, the classifier dropped, or timm's own Hub folder: the features are timm's
    pooled pre-logits."""
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", num_classes=7).eval()  # a checkpoint with its classifier
    _perturb_(source)
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    (tmp_path / "folder").mkdir()
    save_file(source.state_dict(), tmp_path / "folder" / "model.safetensors")
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(images), pre_logits=True)
        for checkpoint in (tmp_path / "weights.safetensors", tmp_path / "folder"):
            model, spec = load_features("timm:test_resnet", timm_checkpoint=str(checkpoint))
            assert f"with the weights of {checkpoint}" in spec.description
            torch.testing.assert_close(spec.pool(model(pixel_values=images), {}), expected)
        # a timm folder as timm itself saves it (its model_args name num_classes, which TimmWrapperModel also passes)
        timm.models.save_for_hf(source, tmp_path / "hub", safe_serialization=True)
        model, spec = load_features(str(tmp_path / "hub"))
        torch.testing.assert_close(spec.pool(model(pixel_values=images), {}), expected)

    other = timm.create_model("resnet10t", num_classes=0)
    save_file(other.state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(UsageError, match=r"--timm_checkpoint .*other.safetensors: its weights do not fit"):
        load_features("timm:test_resnet", timm_checkpoint=str(tmp_path / "other.safetensors"))
    with pytest.raises(UsageError, match="--timm_checkpoint .*: no such file"):
        load_features("timm:test_resnet", timm_checkpoint=str(tmp_path / "absent.safetensors"))
    with pytest.raises(UsageError, match="--timm_checkpoint needs --model_name_or_path timm:"):
        EvaluationArguments(model_name_or_path=str(tmp_path / "folder"), timm_checkpoint="weights.safetensors")


# ------------------------------------------------------------------------------------------------------------ text


@pytest.mark.slow
def test_an_exported_mlm_folder_is_evaluated(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = MLMForPreTraining(
        MLMConfig(encoder={**TEXT_ENCODER, "vocab_size": len(tokenizer), "max_position_embeddings": 64})
    )
    model.save_pretrained(tmp_path / "run")
    tokenizer.save_pretrained(tmp_path / "run")
    export_backbone(tmp_path / "run", tmp_path / "export")
    results = _evaluate(tmp_path / "export", tmp_path, *SLICES)
    _assert_sane(results, "text")
    assert results["features"] == "mean of the token states" and "tfidf" in results["baselines"]
    # the run and its export read the same texts in full (not cut at the tokenizer's crop of 16): the same features
    run = _evaluate(tmp_path / "run", tmp_path, "--no_baselines", *SLICES)
    for protocol in ("knn", "linear_probe"):
        assert run[protocol]["accuracy"] == pytest.approx(results[protocol]["accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("form", ["transformers", "sentence-transformers"])
def test_a_plain_bert_folder_and_a_sentence_transformers_folder_are_evaluated(form, tokenizer, tmp_path):
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(**TEXT_ENCODER, vocab_size=len(tokenizer), max_position_embeddings=64)).eval()
    if form == "transformers":
        encoder.save_pretrained(tmp_path / "model")
        tokenizer.save_pretrained(tmp_path / "model")
    else:
        save_sentence_transformer(encoder, tokenizer, tmp_path / "model", pooling="cls", max_seq_length=64)
    results = _evaluate(tmp_path / "model", tmp_path, *SLICES)
    _assert_sane(results, "text")
    pooled = "the first token's state ([CLS])" if form == "sentence-transformers" else "mean of the token states"
    assert results["features"] == pooled


# ----------------------------------------------------------------------------------------------------------- audio


@pytest.mark.slow
def test_an_exported_wav2vec_folder_is_evaluated_and_pooled_like_the_objective(tmp_path):
    torch.manual_seed(0)
    config = Wav2VecConfig(
        backbone=SPEECH, num_codevectors_per_group=16, codevector_dim=16, proj_codevector_dim=16, sampling_rate=8000
    )
    save_backbone_export(Wav2VecForPreTraining(config), tmp_path / "export")
    results = _evaluate(tmp_path / "export", tmp_path)
    _assert_sane(results, "audio")
    assert list(results["layers"]) == ["layer_0", "layer_1", "layer_2"] and "log_mel_stats" in results["baselines"]

    # the plain-audio reader (for speech encoders no objective registered) pools as the wav2vec objective does
    model, spec = load_features(str(tmp_path / "export"))
    assert FEATURE_SPECS["wav2vec2"] is spec is FEATURE_SPECS["hf_ssl_wav2vec"] is plain_audio_features(model.config)
    assert spec.pool is mean_of_frames_per_layer


@pytest.mark.parametrize("model_class", [Wav2Vec2Model, HubertModel])
def test_speech_features_of_padded_clips_are_the_mean_over_the_models_own_unpadded_frames(model_class):
    torch.manual_seed(0)
    config_class = Wav2Vec2Config if model_class is Wav2Vec2Model else HubertConfig
    model = model_class(config_class(**SPEECH)).eval()
    lengths = [4000, 2570, 1203, 400]  # samples; frames of a clip: floor((n - 80) / 40) + 1, e.g. 63 for 2570
    values = torch.randn(len(lengths), max(lengths))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    inputs = {"input_values": values * mask, "attention_mask": mask}
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True)
        pooled = mean_of_frames_per_layer(outputs, inputs, model)
    assert list(pooled) == list(range(len(outputs.hidden_states)))
    frames = model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
    assert frames == [(n - 80) // 40 + 1 for n in lengths]  # the front end's receptive field and stride
    for layer, states in enumerate(outputs.hidden_states):
        for row, count in enumerate(frames):
            torch.testing.assert_close(pooled[layer][row], states[row, :count].mean(0))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config_class", "model_class"), [(HubertConfig, HubertModel), (Data2VecAudioConfig, Data2VecAudioModel)]
)
def test_a_plain_speech_encoder_folder_is_evaluated_by_frame_means_per_layer(config_class, model_class, tmp_path):
    torch.manual_seed(0)
    config = config_class(**SPEECH, **({"conv_pos_kernel_size": 5} if config_class is Data2VecAudioConfig else {}))
    model_class(config).save_pretrained(tmp_path / "model")
    Wav2Vec2FeatureExtractor(sampling_rate=8000, return_attention_mask=True).save_pretrained(tmp_path / "model")
    results = _evaluate(tmp_path / "model", tmp_path)
    _assert_sane(results, "audio")
    assert list(results["layers"]) == ["layer_0", "layer_1", "layer_2"]
    assert results["features"].startswith("mean over unpadded frames")


# ----------------------------------------------------------------------------------------------------------- names


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm:not_a_model", "--model_name_or_path timm:not_a_model: 'not_a_model' is not a timm architecture"),
        ("timm:resnet18.no_such_tag", "--model_name_or_path timm:resnet18.no_such_tag: Invalid pretrained tag"),
        ("/no/such/folder", "--model_name_or_path /no/such/folder: no such checkpoint folder"),
        ("gpt2-folder", "--model_name_or_path .*gpt2-folder: cannot evaluate a 'gpt2' checkpoint"),
    ],
)
def test_unknown_models_are_one_line_naming_the_flag(name, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2-folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model_name_or_path", name])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hf-ssl: error: ")
    assert re.search(message, error), error
