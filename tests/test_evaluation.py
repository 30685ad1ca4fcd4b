"""Evaluation: weighted kNN (hand-computed votes, brute-force parity), linear probe (sklearn parity), feature
extraction, checkpoint loading, and ``evaluate`` / ``hf-ssl evaluate`` end to end on the embedded digits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import DatasetDict, Value
from safetensors.torch import load_file, save_file

from hf_ssl import SimCLRForPreTraining, UsageError
from hf_ssl.backbones import load_backbone
from hf_ssl.cli import main
from hf_ssl.data import load_data, load_digits_dataset, undecoded
from hf_ssl.evaluation import (
    EvaluationArguments,
    FeatureCollator,
    evaluate,
    extract_feature_sets,
    extract_features,
    fit_linear_probe,
    format_markdown_table,
    format_table,
    image_preprocessor,
    knn_accuracy,
    knn_predict,
    linear_probe_accuracy,
    random_init_backbone,
    raw_pixels,
    result_rows,
)

# ---------------------------------------------------------------------------------------------------- kNN


def _reference_knn(train, train_labels, test, num_classes, k, temperature):
    """Wu et al. (2018) written out row by row in float64: cosine similarities, top k, exp(s / T) votes."""
    predictions = []
    for query in test.double():
        sims = [
            (float(query @ row.double()) / (query.norm().item() * row.double().norm().item()), int(label))
            for row, label in zip(train, train_labels, strict=True)
        ]
        sims.sort(key=lambda pair: pair[0], reverse=True)
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / temperature)
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))  # first class on a tie
    return torch.tensor(predictions)


def test_knn_separated_blobs_are_classified_perfectly():
    generator = torch.Generator().manual_seed(0)
    centres = 10 * torch.eye(16)[:4]  # 4 classes in distinct directions
    train_labels = torch.arange(4).repeat_interleave(50)
    test_labels = torch.arange(4).repeat_interleave(25)
    train = centres[train_labels] + torch.randn(200, 16, generator=generator)
    test = centres[test_labels] + torch.randn(100, 16, generator=generator)
    assert knn_accuracy(train, train_labels, test, test_labels) == 1.0
    # and a labelling the features do not support is far from perfect
    assert knn_accuracy(train, train_labels, test, test_labels.roll(25)) == 0.0


def test_knn_temperature_weighting_can_overrule_the_majority():
    """Query (1, 0): one class-0 neighbour at cosine 1.0, two class-1 neighbours at cosine 0.8, k = 3.

    T = 0.07: class 0 scores e^(1/0.07) ~ 1.6e6 > class 1's 2 e^(0.8/0.07) ~ 1.8e5, so class 0 wins although
    class 1 has the majority. T = 1: e^1 ~ 2.72 < 2 e^0.8 ~ 4.45, so class 1 wins, as a plain vote would.
    """
    assert math.exp(1 / 0.07) > 2 * math.exp(0.8 / 0.07) and math.exp(1.0) < 2 * math.exp(0.8)
    train = torch.tensor([[5.0, 0.0], [0.8, 0.6], [0.8, -0.6], [0.0, 1.0], [-1.0, 0.0]])  # row 0 not unit length
    labels = torch.tensor([0, 1, 1, 2, 2])  # class 2 lies outside the top 3 and must not vote
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, labels, query, num_classes=3, k=3, temperature=0.07).tolist() == [0]
    assert knn_predict(train, labels, query, num_classes=3, k=3, temperature=1.0).tolist() == [1]
    assert knn_predict(train, labels, query, num_classes=3, k=1, temperature=1.0).tolist() == [0]
    # k = 5 lets class 2 vote: at T = 1 it gets e^0 + e^-1 ~ 1.37, still below class 1
    assert knn_predict(train, labels, query, num_classes=3, k=5, temperature=1.0).tolist() == [1]


@pytest.mark.parametrize(("k", "temperature", "chunk_size"), [(20, 0.07, None), (5, 0.5, 3), (80, 0.1, 7)])
def test_knn_matches_brute_force_reference(k, temperature, chunk_size):
    generator = torch.Generator().manual_seed(k)
    train = torch.randn(60, 8, generator=generator)
    test = torch.randn(25, 8, generator=generator)
    train_labels = torch.randint(0, 5, (60,), generator=generator)
    test_labels = torch.randint(0, 5, (25,), generator=generator)
    expected = _reference_knn(train, train_labels, test, 5, min(k, 60), temperature)  # k = 80 > N: all vote
    predicted = knn_predict(train, train_labels, test, 5, k=k, temperature=temperature, chunk_size=chunk_size)
    assert predicted.tolist() == expected.tolist()
    accuracy = knn_accuracy(train, train_labels, test, test_labels, k=k, temperature=temperature)
    assert accuracy == pytest.approx((expected == test_labels).float().mean().item())


def test_knn_rejects_unusable_labels_and_shapes():
    train, test = torch.randn(10, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="marked -1"):
        knn_accuracy(train, torch.zeros(10, dtype=torch.long), test, torch.tensor([0, -1, 0]))
    with pytest.raises(ValueError, match="expected"):
        knn_predict(train, torch.zeros(10, dtype=torch.long), torch.randn(3, 5))


# ----------------------------------------------------------------------------------------------- linear probe


def test_linear_probe_separates_linearly_separable_data():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(10, generator=generator)
    points = torch.randn(3000, 10, generator=generator)
    margin = points @ direction
    points = points[margin.abs() > 0.5]  # a margin, so the classes are separable
    labels = (points @ direction > 0).long()
    train, test = points[:800], points[800:]
    assert linear_probe_accuracy(train, labels[:800], test, labels[800:]) >= 0.98


def test_linear_probe_is_near_chance_on_random_labels():
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(1000, 20, generator=generator), torch.randn(4000, 20, generator=generator)
    train_labels = torch.randint(0, 4, (1000,), generator=generator)
    test_labels = torch.randint(0, 4, (4000,), generator=generator)
    probe = fit_linear_probe(train, train_labels, 4)
    assert (probe.predict(train) == train_labels).float().mean() > 0.3  # it does fit the training noise
    assert abs(linear_probe_accuracy(train, train_labels, test, test_labels) - 0.25) < 0.05  # sd ~0.007


def test_linear_probe_matches_sklearn_and_is_deterministic():
    """The same objective as sklearn's multinomial LogisticRegression with C = 1 / (weight_decay * N)."""
    from sklearn.linear_model import LogisticRegression

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=generator)
    features = torch.randn(3, 12, generator=generator)[labels] + 2 * torch.randn(300, 12, generator=generator)
    features = features * torch.logspace(-2, 2, 12)  # badly scaled columns: standardisation must undo this
    test = torch.randn(50, 12, generator=generator) * torch.logspace(-2, 2, 12)
    weight_decay = 1e-2
    probe = fit_linear_probe(features, labels, 3, weight_decay=weight_decay, tolerance=1e-10, max_iter=5000)
    assert probe.converged

    mean, std = features.double().mean(0), features.double().std(0, unbiased=False)
    reference = LogisticRegression(C=1 / (weight_decay * 300), tol=1e-10, max_iter=10000)
    reference.fit(((features.double() - mean) / std).numpy(), labels.numpy())
    expected = torch.from_numpy(reference.predict_proba(((test.double() - mean) / std).numpy()))
    torch.testing.assert_close(probe.logits(test).softmax(dim=1), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(probe.weight, torch.from_numpy(reference.coef_), atol=1e-4, rtol=0)

    again = fit_linear_probe(features, labels, 3, weight_decay=weight_decay, tolerance=1e-10, max_iter=5000)
    assert torch.equal(again.weight, probe.weight) and torch.equal(again.bias, probe.bias)


def test_linear_probe_is_invariant_to_feature_scale():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (400,), generator=generator)
    features = torch.randn(4, 16, generator=generator)[labels] + torch.randn(400, 16, generator=generator)
    test = torch.randn(4, 16, generator=generator)[labels[:100]] + torch.randn(100, 16, generator=generator)
    scale = torch.logspace(-3, 3, 16)
    plain = fit_linear_probe(features, labels, 4).predict(test)
    scaled = fit_linear_probe(features * scale + 7, labels, 4).predict(test * scale + 7)
    assert torch.equal(plain, scaled)


# ------------------------------------------------------------------------------------------ features, loading


@pytest.fixture
def digits_rows():
    dataset = undecoded(load_digits_dataset("test").select(range(20)), "image")
    return dataset


def test_extract_features_matches_a_direct_forward_pass(tiny_simclr_config, digits_rows):
    model = SimCLRForPreTraining(tiny_simclr_config).simclr  # left in training mode on purpose
    collator = FeatureCollator(image_preprocessor("unused", tiny_simclr_config), "image", "label")
    features, labels = extract_features(model, digits_rows, collator, batch_size=7)  # 7 does not divide 20
    assert model.training, "the model's mode must be restored"

    batch = collator([digits_rows[i] for i in range(20)])
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=batch["pixel_values"]).pooler_output
    assert features.shape == (20, model.num_features) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-4)
    assert labels.tolist() == digits_rows["label"]

    def per_layer(inputs):  # a pooler reporting two feature sets, by layer index
        return {0: raw_pixels(inputs), 1: 2 * raw_pixels(inputs)}

    encoders = {"pixels": raw_pixels, "model": model, "layers": per_layer}
    sets, same_labels = extract_feature_sets(encoders, digits_rows, collator, 8)
    torch.testing.assert_close(sets["pixels"], batch["pixel_values"].flatten(1))
    torch.testing.assert_close(sets["model"], features)
    assert list(sets) == ["pixels", "model", "layers"] and list(sets["layers"]) == [0, 1]
    torch.testing.assert_close(sets["layers"][1], 2 * sets["pixels"])
    assert torch.equal(same_labels, labels)


def test_load_backbone_returns_the_saved_weights_and_refuses_incomplete_ones(tiny_simclr_config, tmp_path):
    torch.manual_seed(3)
    model = SimCLRForPreTraining(tiny_simclr_config)
    model.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert not loaded.training
    expected = model.simclr.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    weights = load_file(tmp_path / "model.safetensors")
    dropped = [name for name in weights if name.startswith("simclr.backbone.stem")]
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, tmp_path / "model.safetensors", {"format": "pt"})
    with pytest.raises(UsageError, match=rf"{len(dropped)} backbone weights are missing.*stem"):
        load_backbone(str(tmp_path))
    with pytest.raises(UsageError, match="/nonexistent: no such checkpoint folder"):
        load_backbone("/nonexistent")
    with pytest.raises(UsageError, match="not a checkpoint folder"):
        load_backbone(str(tmp_path / ".."))


def test_plain_text_encoders_are_read_without_their_pooler_and_other_families_are_refused(tmp_path):
    """A BERT saved without its pooler (our MLM export) evaluates by the mean of its tokens; a family that is no text
    encoder and that no objective registered is refused by name, as is a missing encoder weight."""
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2Model

    from hf_ssl.evaluation import load_features

    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    BertForMaskedLM(BertConfig(vocab_size=50, **small)).save_pretrained(tmp_path / "bert")
    model, spec = load_features(str(tmp_path / "bert"))
    assert spec.modality == "text" and type(model).__name__ == "BertModel" and not model.training
    inputs = {"input_ids": torch.tensor([[2, 5, 7, 0]]), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state[:, :3].mean(dim=1)
        torch.testing.assert_close(spec.pool(model(**inputs), inputs), expected)

    weights = load_file(tmp_path / "bert" / "model.safetensors")
    kept = {k: v for k, v in weights.items() if "layer.0.output.dense" not in k}
    save_file(kept, tmp_path / "bert" / "model.safetensors", {"format": "pt"})
    with pytest.raises(UsageError, match="2 backbone weights are missing"):
        load_features(str(tmp_path / "bert"))

    GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UsageError, match="cannot evaluate a 'gpt2' checkpoint"):
        load_features(str(tmp_path / "gpt2"))


def test_a_checkpoint_config_is_read_once_per_load(tmp_path, monkeypatch):
    from transformers import AutoConfig, BertConfig, BertModel

    from hf_ssl.evaluation import load_features

    small = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    BertModel(BertConfig(vocab_size=50, **small)).save_pretrained(tmp_path)
    reads = []
    read = AutoConfig.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        reads.append(args[0] if args else kwargs)
        return read(cls, *args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", classmethod(counted))
    model, _ = load_features(str(tmp_path))
    assert len(reads) == 1 and model.config.hidden_size == 16


def test_held_out_probe_accuracy_uses_only_the_fit_rows():
    """The best layer's score: a probe fitted on four fifths of the fit split, scored on the other fifth."""
    from hf_ssl.evaluation.arguments import EvaluationArguments
    from hf_ssl.evaluation.tasks.classification import held_out_probe_accuracy

    labels = torch.arange(100) % 4
    informative = torch.nn.functional.one_hot(labels, 4).float() + 0.01 * torch.randn(100, 4)
    noise = torch.randn(100, 4)
    args = EvaluationArguments(model_name_or_path="unused", seed=0, probe_max_iter=200)
    assert held_out_probe_accuracy(informative, labels, 4, args, torch.device("cpu")) == 1.0
    assert held_out_probe_accuracy(noise, labels, 4, args, torch.device("cpu")) < 0.6


def test_random_init_backbone_is_seeded_and_leaves_the_global_rng_alone(tiny_simclr_config):
    state = torch.get_rng_state()
    first, again = random_init_backbone(tiny_simclr_config, 0), random_init_backbone(tiny_simclr_config, 0)
    other = random_init_backbone(tiny_simclr_config, 1)
    assert torch.equal(torch.get_rng_state(), state)
    pairs = list(
        zip(first.state_dict().values(), again.state_dict().values(), other.state_dict().values(), strict=True)
    )
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


# ------------------------------------------------------------------------------------------ evaluate, CLI


@pytest.fixture
def checkpoint(tiny_simclr_config, tmp_path):
    torch.manual_seed(1)  # not the baseline's seed, so "pretrained" and "random init" differ
    SimCLRForPreTraining(tiny_simclr_config).save_pretrained(tmp_path / "ckpt")
    return str(tmp_path / "ckpt")


def _assert_protocols(entry, num_features):
    assert entry["num_features"] == num_features
    assert entry["knn"]["k"] == 20 and entry["knn"]["temperature"] == 0.07
    for protocol in ("knn", "linear_probe"):
        assert 0.0 <= entry[protocol]["accuracy"] <= 1.0


def test_evaluate_end_to_end_on_digits(checkpoint, tmp_path, tiny_simclr_config):
    output_file = tmp_path / "new" / "folder" / "eval.json"
    results = evaluate(EvaluationArguments(model_name_or_path=checkpoint, output_file=str(output_file)))

    assert json.loads(output_file.read_text()) == results  # JSON-able, and written where asked
    assert results["model"] == checkpoint and results["dataset"] == "digits" and results["modality"] == "image"
    assert (results["split"], results["train_split"]) == ("test", "train")
    assert (results["num_train"], results["num_test"], results["num_classes"]) == (1500, 297, 10)
    backbone_features = SimCLRForPreTraining(tiny_simclr_config).simclr.num_features
    _assert_protocols(results, backbone_features)
    _assert_protocols(results["baselines"]["random_init"], backbone_features)
    _assert_protocols(results["baselines"]["raw_pixels"], 3 * 32 * 32)  # RGB, resized to image_size 32
    assert results["baselines"]["raw_pixels"]["knn"]["accuracy"] > 0.8  # digits are easy; chance is 0.1
    assert results["baselines"]["raw_pixels"]["linear_probe"]["accuracy"] > 0.8

    table = format_table(results).splitlines()
    assert checkpoint in table[0]
    rows = {line.split("  ")[0].strip(): line.split() for line in table[3:]}
    assert list(rows) == ["pretrained", "random init", "raw pixels"]
    assert rows["raw pixels"][-2] == f"{100 * results['baselines']['raw_pixels']['knn']['accuracy']:.1f}%"
    assert rows["pretrained"][-1] == f"{100 * results['linear_probe']['accuracy']:.1f}%"


@pytest.fixture
def small_digits():
    return DatasetDict(
        train=load_digits_dataset("train").select(range(120)), test=load_digits_dataset("test").select(range(40))
    )


@pytest.mark.slow
def test_cli_evaluate_writes_json_and_prints_the_table(checkpoint, tmp_path, capsys, small_digits):
    small_digits.save_to_disk(tmp_path / "small")  # the full digits run is tested above; this is the CLI path
    output_file = tmp_path / "cli.json"
    main(
        ["evaluate", "--model_name_or_path", checkpoint, "--dataset_name", str(tmp_path / "small")]
        + ["--output_file", str(output_file), "--no_baselines", "--knn_k", "5", "--probe_max_iter", "7"]
    )
    results = json.loads(output_file.read_text())
    assert "baselines" not in results and results["num_train"] == 120 and results["num_test"] == 40
    assert results["knn"]["k"] == 5 and 0.0 <= results["knn"]["accuracy"] <= 1.0
    assert results["linear_probe"]["max_iter"] == 7
    printed = capsys.readouterr().out
    assert "pretrained" in printed and "raw pixels" not in printed and "k=5" in printed
    assert f"{100 * results['knn']['accuracy']:.1f}%" in printed


def test_evaluate_accepts_class_names_as_labels(checkpoint, tmp_path, small_digits):
    names = [f"digit {d}" for d in range(10)]  # sorted like the ids, so the two runs must agree exactly
    as_names = small_digits.cast_column("label", Value("int64")).map(lambda row: {"label": names[row["label"]]})
    as_names = as_names.cast_column("label", Value("string"))
    small_digits.save_to_disk(tmp_path / "ids")
    as_names.save_to_disk(tmp_path / "names")
    by_id, by_name = (
        evaluate(EvaluationArguments(model_name_or_path=checkpoint, dataset_name=str(tmp_path / d), baselines=False))
        for d in ("ids", "names")
    )
    assert by_name["num_classes"] == by_id["num_classes"] == 10
    assert by_name["knn"] == by_id["knn"] and by_name["linear_probe"] == by_id["linear_probe"]


def test_evaluate_names_the_columns_when_the_label_is_missing(checkpoint, tmp_path, small_digits):
    small_digits.remove_columns("label").save_to_disk(tmp_path / "unlabelled")
    args = EvaluationArguments(model_name_or_path=checkpoint, dataset_name=str(tmp_path / "unlabelled"))
    with pytest.raises(ValueError, match=r"split 'train': no label column found among \['image'\]"):
        evaluate(args)
    args = EvaluationArguments(model_name_or_path=checkpoint, label_column="digit")
    with pytest.raises(ValueError, match=r"label column 'digit' not found; the dataset has: \['image', 'label'\]"):
        evaluate(args)


def test_evaluate_refuses_unlabelled_rows_and_missing_splits(checkpoint, tmp_path, small_digits):
    unlabelled_test = small_digits["test"].cast_column("label", Value("int64")).map(lambda _: {"label": -1})
    DatasetDict(train=small_digits["train"].cast_column("label", Value("int64")), test=unlabelled_test).save_to_disk(
        tmp_path / "minus_one"
    )
    args = EvaluationArguments(model_name_or_path=checkpoint, dataset_name=str(tmp_path / "minus_one"))
    with pytest.raises(ValueError, match="split 'test': 40 of 40 rows have a negative label"):
        evaluate(args)
    with pytest.raises(ValueError, match="validation"):
        evaluate(EvaluationArguments(model_name_or_path=checkpoint, split="validation"))


# ------------------------------------------------------------------------------------------------- report


def test_tables_show_each_evaluated_feature_set_in_percent():
    entry = {"knn": {"accuracy": 0.9734, "k": 20, "temperature": 0.07}, "linear_probe": {"accuracy": 0.5}}
    results = {**entry, "baselines": {"raw_pixels": {"knn": {"accuracy": 0.12}, "linear_probe": {"accuracy": 1.0}}}}
    assert result_rows(results) == [
        {"name": "pretrained", "cells": {"knn": "97.3%", "linear_probe": "50.0%"}},
        {"name": "raw pixels", "cells": {"knn": "12.0%", "linear_probe": "100.0%"}},
    ]
    lines = format_table(results).splitlines()
    assert len({len(line) for line in lines}) == 1  # aligned: every line as wide as the dashes
    assert lines[0].split("  ")[0].strip() == "features" and set(lines[1]) == {"-", " "}
    assert lines[2].split()[1:] == ["97.3%", "50.0%"] and lines[3].split()[2:] == ["12.0%", "100.0%"]
    markdown = format_markdown_table(results).splitlines()
    assert markdown[0].startswith("| features | kNN accuracy (k=20, T=0.07) |") and markdown[1].startswith("|---|")
    assert markdown[2:] == ["| pretrained | 97.3% | 50.0% |", "| raw pixels | 12.0% | 100.0% |"]


def test_tables_name_the_best_layer_and_the_objectives_own_measures():
    last = {"knn": {"accuracy": 0.5}, "linear_probe": {"accuracy": 0.6}}
    best = {"knn": {"accuracy": 0.7}, "linear_probe": {"accuracy": 0.72}}
    results = {**last, "layer": "layer_4", "best_layer": "layer_0", "layers": {"layer_0": best, "layer_4": last}}
    results |= {"mlm": {"accuracy": 0.41234, "perplexity": 123.4}, "extra_metrics": ["mlm"]}
    lines = format_table(results).splitlines()
    assert lines[-2] == "pretrained: rows show layer_4; best layer layer_0 (kNN 70.0%, linear probe 72.0%)"
    assert lines[-1] == "mlm: accuracy 0.4123, perplexity 123.4"
    sts = {"sts": {"spearman": 0.7512, "pearson": 0.7}, "baselines": {"tfidf": {"sts": {"spearman": 0.6}}}}
    assert format_markdown_table(sts).splitlines()[2:] == ["| pretrained | 75.1 |", "| tfidf | 60.0 |"]


def test_tasks_are_chosen_from_the_registry_by_name_or_by_the_data_they_claim(tmp_path, monkeypatch):
    """A registered task runs for its ``--task`` name; with ``--task auto`` it is chosen when it claims the evaluated
    split, which is loaded once and handed on (to classification too when no task claims it)."""
    from hf_ssl.evaluation.tasks import CLASSIFICATION, TASKS, choose_task, register_task

    class ToyTask:
        name, modality = "toy", "text"

        def check(self, args):
            if args.protocol != "frozen":
                raise UsageError("toy data has no classes")

        def load(self, args):
            loads.append(args.split)
            return load_data(args.dataset_name, args.split, default=None)

        def claims(self, evaluated):
            return "toy_score" in evaluated.column_names

    loads = []
    monkeypatch.setattr("hf_ssl.evaluation.tasks.base.TASKS", {**TASKS})
    register_task(ToyTask())
    (tmp_path / "toy.csv").write_text("text,toy_score\na,1\nb,2\n")
    (tmp_path / "labelled.csv").write_text("text,label\na,1\nb,0\n")

    def choose(name, **kwargs):
        return choose_task(EvaluationArguments(model_name_or_path="unused", dataset_name=name, split="train", **kwargs))

    name, evaluated = choose(str(tmp_path / "toy.csv"))
    assert name == "toy" and evaluated.column_names == ["text", "toy_score"] and loads == ["train"]
    name, evaluated = choose(str(tmp_path / "labelled.csv"))
    assert name == CLASSIFICATION and evaluated.column_names == ["text", "label"] and len(loads) == 2
    assert choose(str(tmp_path / "labelled.csv"), task="sts")[0] == "sts"  # named: nothing loaded to decide
    assert len(loads) == 2
    with pytest.raises(UsageError, match="toy data has no classes"):
        choose(str(tmp_path / "toy.csv"), protocol="all")
