"""The text evaluation task: the checkpoint's tokenizer, the TF-IDF baseline, the embedded labelled default, and the
real probe data (WordNet supersenses) through the shared loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, RobertaConfig, RobertaPreLayerNormConfig

from hf_ssl import MLMConfig, MLMForPreTraining, UsageError
from hf_ssl.data import load_data
from hf_ssl.data.text import load_default_text, load_default_text_classification, train_tokenizer
from hf_ssl.evaluation import evaluate
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.tasks import get_task
from hf_ssl.evaluation.tasks.text_classification import text_max_length, text_preprocessor, tfidf_baseline

SUPERSENSE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text" / "wordnet_supersense"
ENCODER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny MLM checkpoint folder with its tokenizer, as ``hf-ssl pretrain mlm`` leaves it."""
    folder = tmp_path_factory.mktemp("mlm")
    tokenizer = train_tokenizer(load_default_text("train")["text"], vocab_size=200, model_max_length=24)
    torch.manual_seed(0)
    model = MLMForPreTraining(
        MLMConfig(encoder={**ENCODER, "vocab_size": len(tokenizer), "max_position_embeddings": 64})
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_text_task_tokenises_with_the_checkpoint_tokenizer(checkpoint, tmp_path):
    config = MLMConfig.from_pretrained(checkpoint)
    preprocess = get_task("text").preprocessor(str(checkpoint), config)
    inputs = preprocess(["a short one", "a much longer sentence " * 20, None])
    assert set(inputs) >= {"input_ids", "attention_mask"}
    assert inputs["input_ids"].shape == (3, 64)  # padded to the longest, which is cut at the encoder's 64 positions
    assert inputs["attention_mask"][0].sum() < 24 and inputs["attention_mask"][2].sum() == 2  # None: [CLS] [SEP]
    with pytest.raises(UsageError, match="no tokenizer saved with the checkpoint"):
        text_preprocessor(str(tmp_path), config)


def test_rows_are_sorted_by_length_with_their_labels():
    ds = Dataset.from_dict({"text": ["a longer one", "a", None, "mid"], "label": [0, 1, 2, 3]})
    ordered = get_task("text").prepare(ds, "text")
    assert ordered["text"] == [None, "a", "mid", "a longer one"] and ordered["label"] == [2, 1, 3, 0]
    assert ordered.column_names == ["text", "label"]


def test_max_length_is_what_the_encoder_reads_capped_by_512(checkpoint, tmp_path):
    """The encoder's positions (less RoBERTa-style offsets), at most 512; a tokenizer's model_max_length (a trained
    one records the pretraining crop: 24 in the fixture) is not a limit; a sentence-transformers folder's
    max_seq_length is."""
    assert text_max_length(BertConfig(max_position_embeddings=4096)) == 512
    assert text_max_length(MLMConfig(encoder={**ENCODER, "max_position_embeddings": 100})) == 100
    roberta = RobertaConfig(max_position_embeddings=130, pad_token_id=1)
    assert text_max_length(roberta) == 128  # positions start after the padding index
    pre_ln = RobertaPreLayerNormConfig(max_position_embeddings=130, pad_token_id=1)
    assert text_max_length(pre_ln) == 128  # so do pre-LN RoBERTa's

    config = MLMConfig.from_pretrained(checkpoint)
    preprocess = text_preprocessor(str(checkpoint), config)
    assert preprocess.tokenizer.model_max_length == 24 and preprocess.max_length == 64
    assert preprocess([" ".join(["word"] * 200)])["input_ids"].shape[1] == 64

    from transformers import BertModel

    from hf_ssl.export.sentence_transformers import save_sentence_transformer

    encoder = BertModel(BertConfig(**ENCODER, vocab_size=len(preprocess.tokenizer), max_position_embeddings=64))
    save_sentence_transformer(encoder, preprocess.tokenizer, tmp_path, pooling="mean", max_seq_length=40)
    assert text_max_length(encoder.config, str(tmp_path)) == 40


def test_tfidf_baseline_is_fitted_on_the_training_texts_only():
    train = ["the cat sat on the mat", "a dog chased the cat", "stocks fell on monday", "the market rallied"] * 20
    test = ["the cat and the dog", "zebra quokka axolotl"]  # the second shares no word with training
    train_features, test_features = tfidf_baseline(train, test, components=3)
    assert train_features.shape == (80, 3) and test_features.shape == (2, 3)
    assert train_features.dtype == torch.float32
    assert torch.allclose(train_features.norm(dim=1), torch.ones(80), atol=1e-5)
    assert test_features[1].abs().sum() == 0  # unseen words carry no weight: nothing was fitted on the test texts
    animals, markets = train_features[0] @ test_features[0], train_features[2] @ test_features[0]
    assert animals > markets


def test_default_labelled_text_is_fixed_and_holds_every_class_in_both_splits():
    train, test = load_default_text_classification("train"), load_default_text_classification("test")
    names = train.features["label"].names
    assert len(names) >= 8 and set(train["label"]) == set(test["label"]) == set(range(len(names)))
    assert not set(train["text"]) & set(test["text"])
    assert load_default_text_classification("test")["text"] == test["text"]
    assert len(load_default_text_classification("train[:10]")) == 10


def test_evaluate_an_mlm_checkpoint_on_the_embedded_default(checkpoint):
    results = evaluate(EvaluationArguments(model_name_or_path=str(checkpoint), knn_k=5, probe_max_iter=20))
    assert results["dataset"] == "pydoc-topics-classification" and results["modality"] == "text"
    assert results["num_classes"] == len(load_default_text_classification("train").features["label"].names)
    for entry in (results, results["baselines"]["random_init"], results["baselines"]["tfidf"]):
        assert 0 <= entry["knn"]["accuracy"] <= 1 and 0 <= entry["linear_probe"]["accuracy"] <= 1
    # TF-IDF is a strong baseline for topic labels; a random tiny encoder is not
    assert results["baselines"]["tfidf"]["linear_probe"]["accuracy"] > 0.5
    assert results["mlm"]["num_predicted"] > 100 and results["mlm"]["perplexity"] > 1


def test_the_real_supersense_probe_loads_through_the_shared_loader():
    if not (SUPERSENSE / "dev.tsv").exists():
        pytest.skip(f"real data not available: {SUPERSENSE} is absent (see ../shared/data/README.md)")
    dev = load_data(str(SUPERSENSE), "validation[:50]")  # datasets names dev.tsv's split "validation"
    assert set(dev.column_names) == {"text", "label"} and len(dev) == 50
    assert all(isinstance(t, str) and t for t in dev["text"]) and "." in dev["label"][0]  # noun.animal, ...
    assert load_data(str(SUPERSENSE), "dev[:50]")["text"] == dev["text"]  # --split dev reads the dev file too
