"""``hf-ssl evaluate --protocol finetune``: a tiny image (SimCLR), text (MLM) and audio (wav2vec) export fine-tuned end
to end with its ecosystem's classifier next to the random-init baseline; the backbone's weights move; a pretraining
run folder fine-tunes a copy of its backbone through the probe's pooling; a timm model by name through a saved copy;
the global generators are left alone; bad flags and STS data are one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from safetensors.torch import load_file
from transformers import Wav2Vec2FeatureExtractor

from hf_ssl import MLMConfig, MLMForPreTraining, SimCLRForPreTraining, UsageError, Wav2VecConfig, Wav2VecForPreTraining
from hf_ssl.cli import main
from hf_ssl.data import load_data, load_default_audio
from hf_ssl.data.text import load_default_text, train_tokenizer
from hf_ssl.evaluation import EvaluationArguments, evaluate, format_table
from hf_ssl.evaluation.features import load_features
from hf_ssl.evaluation.finetune import (
    FinetuneSettings,
    build_classifier,
    classifier_folder,
    finetune,
    pooled_classifier,
)
from hf_ssl.evaluation.tasks import FeatureCollator, get_task

BUDGET = ["--finetune_steps", "3", "--finetune_batch_size", "8", "--batch_size", "32"]
ENCODER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
RATE = 8000
WAV2VEC_BACKBONE = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [16, 16, 16],
    "conv_kernel": [10, 3, 3],
    "conv_stride": [5, 2, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "feat_extract_norm": "layer",
}


def _export(model: torch.nn.Module, root: Path, extra=None) -> tuple[Path, Path]:
    """``model`` saved as ``hf-ssl pretrain`` leaves a run folder (plus ``extra(folder)``), and its export."""
    run, out = root / "run", root / "export"
    model.save_pretrained(run)
    if extra is not None:
        extra(run)
    main(["export", str(run), str(out)])
    return run, out


@pytest.fixture(scope="module")
def image_export(tmp_path_factory) -> tuple[Path, Path]:
    from hf_ssl import SimCLRConfig

    torch.manual_seed(0)
    config = SimCLRConfig(
        backbone="convnext_atto", small_image_stem=True, image_size=32, projection_hidden_dim=32, projection_dim=16
    )
    return _export(SimCLRForPreTraining(config), tmp_path_factory.mktemp("simclr"))


@pytest.fixture(scope="module")
def text_export(tmp_path_factory) -> tuple[Path, Path]:
    tokenizer = train_tokenizer(load_default_text("train")["text"], vocab_size=200, model_max_length=24)
    torch.manual_seed(0)
    model = MLMForPreTraining(
        MLMConfig(encoder={**ENCODER, "vocab_size": len(tokenizer), "max_position_embeddings": 64})
    )
    return _export(model, tmp_path_factory.mktemp("mlm"), tokenizer.save_pretrained)


@pytest.fixture(scope="module")
def audio_export(tmp_path_factory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    config = Wav2VecConfig(
        backbone=WAV2VEC_BACKBONE,
        num_codevectors_per_group=16,
        codevector_dim=16,
        proj_codevector_dim=16,
        sampling_rate=RATE,
        max_duration_seconds=1.0,
    )
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=True, return_attention_mask=True)
    return _export(Wav2VecForPreTraining(config), tmp_path_factory.mktemp("wav2vec"), extractor.save_pretrained)


SPLITS = ["--train_split", "train[:48]", "--split", "test[:32]"]  # a few rows of each embedded default


@pytest.fixture(scope="module")
def audio_data(tmp_path_factory) -> list[str]:
    """Every fifth clip of the embedded synthetic words (which take no slices), saved as a dataset folder."""
    folder = tmp_path_factory.mktemp("words")
    splits = {split: load_default_audio(split) for split in ("train", "test")}
    DatasetDict({split: ds.select(range(0, len(ds), 5)) for split, ds in splits.items()}).save_to_disk(folder)
    return ["--dataset_name", str(folder)]


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_finetune_protocol_on_each_kind_of_export(modality, request, tmp_path, capsys):
    _, export = request.getfixturevalue(f"{modality}_export")
    output = tmp_path / "eval.json"
    data = request.getfixturevalue("audio_data") if modality == "audio" else SPLITS
    main(["evaluate", "--model_name_or_path", str(export), "--protocol", "finetune", *data, *BUDGET]
         + ["--output_file", str(output)])  # fmt: skip
    results = json.loads(output.read_text())
    assert results["modality"] == modality and set(results["baselines"]) == {"random_init"}
    assert "knn" not in results and "linear_probe" not in results  # finetune alone: no frozen features
    tuned, scratch = results["finetune"], results["baselines"]["random_init"]["finetune"]
    for entry in (tuned, scratch):
        assert entry["steps"] == 3 and entry["batch_size"] == 8 and entry["learning_rate"] == 1e-4
        assert 0 <= entry["accuracy"] <= 1 and np.isfinite(entry["train_loss"])
        assert entry["accuracy"] * results["num_test"] == pytest.approx(round(entry["accuracy"] * results["num_test"]))
    assert tuned["train_loss"] != scratch["train_loss"]  # two different starting points
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("features"))
    assert "fine-tune accuracy" in header and "kNN" not in header
    rows = {line.split("  ")[0].strip(): line for line in table.splitlines()}
    assert rows["pretrained"].endswith(f"{100 * tuned['accuracy']:.1f}%")
    assert rows["random init"].endswith(f"{100 * scratch['accuracy']:.1f}%")


@pytest.mark.slow
def test_a_run_folder_fine_tunes_beside_the_frozen_protocols(image_export):
    run, _ = image_export
    flags = dict(train_split="train[:24]", split="test[:16]", finetune_steps=1, finetune_batch_size=8, knn_k=5)
    results = evaluate(EvaluationArguments(model_name_or_path=str(run), protocol="all", **flags))
    assert {"knn", "linear_probe", "finetune"} <= set(results)
    assert {"knn", "linear_probe", "finetune"} <= set(results["baselines"]["random_init"])
    assert "finetune" not in results["baselines"]["raw_pixels"]
    assert results["finetune"]["classifier"] == "SimCLRModel + a linear head on the probe's features"
    header = format_table(results).splitlines()[1]
    assert header.index("kNN") < header.index("linear probe") < header.index("fine-tune")


@pytest.mark.slow
def test_a_run_folder_trains_a_copy_of_its_backbone_through_the_probes_pooling(image_export):
    run, _ = image_export
    backbone, spec = load_features(str(run))
    original = {name: value.clone() for name, value in backbone.state_dict().items()}
    task = get_task("image")
    train = task.prepare(load_data(None, "train[:32]", default=task.default_dataset), "image")
    collator = FeatureCollator(task.preprocessor(str(run), backbone.config), "image", "label")
    pixels = collator(list(train))["pixel_values"]
    model = pooled_classifier(backbone, spec, {"pixel_values": pixels[:1]}, num_classes=10, seed=0)
    with torch.no_grad():  # the features the probe reads
        torch.testing.assert_close(model.features(pixel_values=pixels), backbone(pixel_values=pixels).pooler_output)
    finetune(model, train, train, collator, FinetuneSettings(1.0, 2, 1e-3, 8, 32, seed=0))
    trained = model.backbone.state_dict()
    weights = [name for name in original if name.endswith("weight")]
    moved = [name for name in weights if not torch.equal(trained[name], original[name])]
    assert len(moved) >= 0.9 * len(weights)  # the whole backbone trains ...
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, original[name])  # ... as a copy: evaluation's backbone is left as it was


@pytest.mark.slow
def test_fine_tuning_moves_the_backbone_weights(image_export):
    _, export = image_export
    task = get_task("image")
    train = task.prepare(load_data(None, "train[:32]", default=task.default_dataset), "image")
    python, numpy, torch_state = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    model = build_classifier(str(export), "image", num_classes=10, pretrained=True, seed=0)
    exported = load_file(export / "model.safetensors")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    matched = {name: key for name in before for key in exported if name.endswith("." + key)}
    assert len(matched) == len(exported)  # every exported weight is in the classifier ...
    for name, key in matched.items():
        torch.testing.assert_close(before[name], exported[key])  # ... as exported
    collator = FeatureCollator(task.preprocessor(str(export), model.config), "image", "label")
    result = finetune(model, train, train, collator, FinetuneSettings(1.0, 2, 1e-3, 8, 32, seed=0))
    batch = collator(list(train))
    with torch.no_grad():  # the reported accuracy is the trained model's, in eval mode, on the scored rows
        predicted = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    assert result["accuracy"] == pytest.approx((predicted == batch["labels"]).float().mean().item())
    assert result["steps"] == 2 and not model.training
    assert random.getstate() == python and torch.equal(torch.get_rng_state(), torch_state)  # the generators are
    assert np.array_equal(np.random.get_state()[1], numpy)  # left as they were (the Trainer seeds them all)
    after = model.state_dict()
    moved = [name for name in matched if name.endswith("weight") and not torch.equal(after[name], before[name])]
    assert len(moved) >= 0.9 * sum(name.endswith("weight") for name in matched)  # the whole backbone trains
    head = [name for name in after if name not in matched]
    assert head and all(not torch.equal(after[name], before[name]) for name in head if name.endswith("weight"))


def test_a_timm_model_by_name_is_fine_tuned_from_the_weights_evaluation_loaded():
    backbone, spec = load_features("timm:test_convnext")
    with classifier_folder("timm:test_convnext", backbone) as folder:
        model = build_classifier(folder, spec.modality, num_classes=3, pretrained=True, seed=0)
    assert not Path(folder).exists()  # the saved copy is gone
    weights = model.state_dict()
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=0)
    assert model.config.num_labels == 3 and model(torch.zeros(1, 3, 32, 32)).logits.shape == (1, 3)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--protocol", "linear", "--protocol must be one of 'frozen', 'finetune', 'all'"),
        ("--finetune_steps", "0", "--finetune_steps must be -1"),
        ("--finetune_epochs", "0", "--finetune_epochs must be > 0"),
        ("--finetune_learning_rate", "0", "--finetune_learning_rate must be > 0"),
        ("--finetune_batch_size", "0", "--finetune_batch_size must be >= 1"),
        ("--task", "sts", "--protocol finetune fine-tunes a classifier"),
    ],
)
def test_bad_flag_values_are_one_line_errors(flag, value, message, tmp_path, capsys):
    argv = ["evaluate", "--model_name_or_path", str(tmp_path), "--protocol", "finetune", flag, value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-ssl: error: ") and message in err[0], err
    with pytest.raises(UsageError, match="steps"):
        FinetuneSettings(1.0, 0, 1e-4, 8, 32, seed=0)
    with pytest.raises(UsageError, match="no classification model for point-cloud data"):
        build_classifier(str(tmp_path), "point-cloud", 2, pretrained=False, seed=0)


def test_scored_sentence_pairs_are_refused_before_anything_is_loaded(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("sentence1,sentence2,score\na cat,a kitten,4.5\na cat,the stock market,0.2\n")
    args = EvaluationArguments(model_name_or_path=str(tmp_path), dataset_name=str(pairs), split="train", protocol="all")
    with pytest.raises(UsageError, match="--protocol all: split 'train' holds STS sentence pairs"):
        evaluate(args)


@pytest.mark.slow
def test_an_export_and_its_run_have_the_same_random_init_baseline(image_export):
    """transformers' TimmWrapper re-initialises timm's layers its own way; the baseline is timm's own init, so the
    random-init rows of a run folder and of its export are the same network (frozen and fine-tuned)."""
    from transformers import AutoConfig

    from hf_ssl.backbones import random_init_backbone
    from hf_ssl.evaluation.finetune import build_classifier

    run, out = image_export
    ours = random_init_backbone(AutoConfig.from_pretrained(run), seed=3).state_dict()
    exported = random_init_backbone(AutoConfig.from_pretrained(out), seed=3).state_dict()
    ours = {key.removeprefix("backbone."): value for key, value in ours.items()}
    exported = {key.removeprefix("timm_model."): value for key, value in exported.items()}
    assert ours.keys() == exported.keys()
    for key, value in ours.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    classifier = build_classifier(str(out), "image", num_classes=4, pretrained=False, seed=3).state_dict()
    for key, value in ours.items():
        torch.testing.assert_close(classifier[f"timm_model.{key}"], value, rtol=0, atol=0, msg=key)
