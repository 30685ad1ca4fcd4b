"""MLM: config, collator (dynamic masking), parity with transformers' masked-LM models, sparse vs dense prediction,
save/load, starting from a checkpoint, export loadable without hf_ssl, and fine-tuning the export."""

import json
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_text import TINY_BERT, VOCAB, tokenizer
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    RobertaConfig,
)

from hf_ssl.data.text import load_default_text, tokenize_dataset
from hf_ssl.errors import UsageError
from hf_ssl.models.mlm.collator import MLMCollator
from hf_ssl.models.mlm.configuration_mlm import MLMConfig
from hf_ssl.models.mlm.export import save_encoder_export
from hf_ssl.models.mlm.modeling_mlm import MLMForPreTraining, MLMModel

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SUPERSENSE = SHARED_DATA / "text" / "wordnet_supersense"
TINY = {
    "bert": TINY_BERT,
    "roberta": {
        "model_type": "roberta",
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "vocab_size": VOCAB,
        "max_position_embeddings": 80,
        "pad_token_id": 0,  # our tokenizer's [PAD]; RoBERTa counts positions from it
    },
    "distilbert": {
        "model_type": "distilbert",
        "dim": 32,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dim": 64,
        "vocab_size": VOCAB,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
    },
}
TINY["roberta-prelayernorm"] = {**TINY["roberta"], "model_type": "roberta-prelayernorm"}  # pre-LN (Xiong et al.)
FAMILIES = list(TINY)


@cache
def packed_blocks(max_seq_length: int = 32):
    return tokenize_dataset(
        load_default_text("train").select(range(200)), tokenizer(), "text", max_seq_length, keep_word_ids=True
    )


def masked_batch(batch_size: int = 8, seed: int = 0, **collator_kwargs) -> dict[str, torch.Tensor]:
    """Real sentences, packed into blocks of 32 and masked with a seeded generator."""
    blocks = packed_blocks()
    collate = MLMCollator(tokenizer(), generator=torch.Generator().manual_seed(seed), **collator_kwargs)
    return collate([blocks[i] for i in range(batch_size)])


def tiny_model(family: str = "bert", **overrides) -> MLMForPreTraining:
    return MLMForPreTraining(MLMConfig(encoder=dict(TINY[family]), **overrides))


def perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Move every weight off its initial value (LayerNorm ones, zero biases), so copies and mappings are tested."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def test_config_defaults_and_round_trip_of_the_encoder_sub_config(tmp_path):
    default = MLMConfig()
    assert isinstance(default.encoder, BertConfig) and default.encoder.hidden_size == 256
    assert (default.mlm_probability, default.mask_replace_prob, default.random_replace_prob) == (0.15, 0.8, 0.1)
    assert default.whole_word_masking is False

    config = MLMConfig(encoder=TINY["roberta"], mlm_probability=0.2, whole_word_masking=True)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "hf_ssl_mlm" and saved["encoder"]["model_type"] == "roberta"
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, MLMConfig) and isinstance(again.encoder, RobertaConfig)
    assert again.encoder.to_dict() == config.encoder.to_dict()
    assert (again.mlm_probability, again.whole_word_masking) == (0.2, True)


def test_config_reads_the_encoder_config_of_a_path(tmp_path):
    BertConfig(**{k: v for k, v in TINY["bert"].items() if k != "model_type"}).save_pretrained(tmp_path / "enc")
    config = MLMConfig(encoder=str(tmp_path / "enc"))
    assert isinstance(config.encoder, BertConfig) and config.encoder.hidden_size == 32
    with pytest.raises(UsageError, match="could not read the config of"):
        MLMConfig(encoder=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mlm_probability": 0.0}, r"mlm_probability must be in \(0, 1\]"),
        ({"mlm_probability": 1.5}, r"mlm_probability must be in \(0, 1\]"),
        ({"mask_replace_prob": -0.1}, r"mask_replace_prob must be in \[0, 1\]"),
        ({"random_replace_prob": 2}, r"random_replace_prob must be in \[0, 1\]"),
        ({"mask_replace_prob": 0.8, "random_replace_prob": 0.3}, "mask_replace_prob \\+ random_replace_prob"),
        ({"whole_word_masking": "yes"}, "whole_word_masking must be one of True, False"),
        ({"encoder": 3}, "encoder must be a config dict"),
        ({"encoder": {"model_type": "bert", "is_decoder": True}}, "encoder.is_decoder must be False"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(UsageError, match=message):
        MLMConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------------


def random_examples(n: int, low: int = 5, seed: int = 0) -> list[dict[str, list[int]]]:
    """Variable-length [CLS] ... [SEP] rows of non-special ids, so padding is exercised."""
    g = torch.Generator().manual_seed(seed)
    tok = tokenizer()
    rows = []
    for i in range(n):
        length = 10 + (i * 7) % 50
        body = torch.randint(low, len(tok), (length,), generator=g).tolist()
        rows.append({"input_ids": [tok.cls_token_id, *body, tok.sep_token_id], "length": length + 2})
    return rows


def test_collator_pads_to_the_longest_and_never_masks_special_or_pad_tokens():
    tok = tokenizer()
    examples = random_examples(16)
    collate = MLMCollator(tok, mlm_probability=0.9, generator=torch.Generator().manual_seed(1))
    special = torch.tensor(tok.all_special_ids)
    for _ in range(20):
        batch = collate(examples)
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        assert batch["input_ids"].shape == (16, max(len(e["input_ids"]) for e in examples))
        original = collate._pad([e["input_ids"] for e in examples], batch["input_ids"].shape[1], tok.pad_token_id)
        protected = torch.isin(original, special) | (batch["attention_mask"] == 0)
        assert (batch["labels"][protected] == -100).all()
        assert torch.equal(batch["input_ids"][protected], original[protected])
        assert (batch["labels"][~protected] != -100).float().mean() > 0.8  # it does mask, where allowed
    assert MLMCollator(tok, pad_to_multiple_of=8)(examples[:3])["input_ids"].shape[1] % 8 == 0


def test_collator_masks_15_percent_split_80_10_10():
    tok = tokenizer()
    examples = random_examples(64)
    collate = MLMCollator(tok, generator=torch.Generator().manual_seed(2))
    selected = masked = randomised = kept = candidates = 0
    for _ in range(20):
        batch = collate(examples)
        original = collate._pad([e["input_ids"] for e in examples], batch["input_ids"].shape[1], tok.pad_token_id)
        chosen = batch["labels"] != -100
        assert torch.equal(batch["labels"][chosen], original[chosen])
        candidates += ((batch["attention_mask"] == 1) & ~torch.isin(original, torch.tensor(tok.all_special_ids))).sum()
        selected += chosen.sum()
        now = batch["input_ids"][chosen]
        masked += (now == tok.mask_token_id).sum()
        kept += (now == original[chosen]).sum()
        randomised += ((now != tok.mask_token_id) & (now != original[chosen])).sum()
        assert not torch.isin(now[now != tok.mask_token_id], torch.tensor(tok.all_special_ids)).any()
    assert abs(selected / candidates - 0.15) < 0.01
    assert abs(masked / selected - 0.8) < 0.02
    assert abs(randomised / selected - 0.1) < 0.02
    assert abs(kept / selected - 0.1) < 0.02


def test_collator_is_reproducible_with_a_generator_and_dynamic_across_calls():
    first = masked_batch(seed=5)
    assert torch.equal(first["labels"], masked_batch(seed=5)["labels"])
    assert not torch.equal(first["labels"], masked_batch(seed=6)["labels"])


def test_whole_word_masking_masks_every_piece_of_a_word():
    blocks = packed_blocks()
    examples = [blocks[i] for i in range(32)]
    collate = MLMCollator(tokenizer(), whole_word_masking=True, generator=torch.Generator().manual_seed(3))
    multi_piece_words_masked = 0
    for _ in range(5):
        batch = collate(examples)
        assert "word_ids" not in batch
        chosen = batch["labels"] != -100
        for row, example in enumerate(examples):
            words: dict[int, set[bool]] = {}
            for position, word in enumerate(example["word_ids"]):
                if word is None:
                    assert not chosen[row, position]
                else:
                    words.setdefault(word, set()).add(bool(chosen[row, position]))
            assert all(len(fates) == 1 for fates in words.values())  # all pieces of a word share its fate
            counts = torch.bincount(torch.tensor([w for w in example["word_ids"] if w is not None]))
            multi_piece_words_masked += sum(1 for w, fates in words.items() if fates == {True} and counts[w] > 1)
    assert multi_piece_words_masked > 20  # words of several pieces were masked whole, not just single pieces
    with pytest.raises(UsageError, match="needs a 'word_ids' column"):
        collate([{"input_ids": [2, 10, 3]}])


def test_collator_rejects_bad_settings():
    with pytest.raises(UsageError, match="mlm_probability must be"):
        MLMCollator(tokenizer(), mlm_probability=0)
    with pytest.raises(UsageError, match="mask_replace_prob \\+ random_replace_prob must be <= 1"):
        MLMCollator(tokenizer(), mask_replace_prob=0.9, random_replace_prob=0.2)


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def test_auto_classes_and_sdpa_attention():
    config = MLMConfig(encoder=TINY["bert"])
    assert isinstance(AutoModel.from_config(config), MLMModel)
    model = AutoModelForPreTraining.from_config(config)
    assert isinstance(model, MLMForPreTraining)
    assert model.mlm.encoder.config._attn_implementation == "sdpa"
    assert model.mlm.encoder.pooler is None  # add_pooling_layer=False: nothing untrained in the checkpoint


def test_outputs_are_the_masked_positions_only():
    batch = masked_batch()
    model = tiny_model().eval()
    out = model(**batch)
    n_masked = int((batch["labels"] != -100).sum())
    assert out.logits.shape == (n_masked, VOCAB)
    assert out.loss.ndim == 0 and out.accuracy.ndim == 0 and 0 <= out.accuracy <= 1
    full = model(batch["input_ids"], batch["attention_mask"]).logits  # no labels: every position
    assert full.shape == (*batch["input_ids"].shape, VOCAB)
    torch.testing.assert_close(out.logits, full[batch["labels"] != -100])
    expected_accuracy = (out.logits.argmax(-1) == batch["labels"][batch["labels"] != -100]).float().mean()
    torch.testing.assert_close(out.accuracy, expected_accuracy)


def test_parity_with_bert_for_masked_lm_both_ways():
    """Same weights and masked inputs: our loss is BertForMaskedLM's (Devlin et al.'s head, transformers' code)."""
    batch = masked_batch()
    bert_config = BertConfig(**{k: v for k, v in TINY["bert"].items() if k != "model_type"})
    reference = perturb(BertForMaskedLM(bert_config)).eval()
    ours = tiny_model().eval()
    ours.load_masked_lm(reference)  # theirs -> ours
    with torch.no_grad():
        expected = reference(**batch)
        got = ours(**batch)
    chosen = batch["labels"] != -100
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.logits, expected.logits[chosen], atol=1e-5, rtol=1e-5)

    perturb(ours)  # ours -> theirs
    mapped = ours.to_masked_lm().eval()
    assert isinstance(mapped, BertForMaskedLM)
    assert mapped.cls.predictions.decoder.weight.data_ptr() == mapped.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).loss, mapped(**batch).loss, atol=1e-5, rtol=0)


def test_sparse_and_dense_prediction_give_the_same_loss_and_gradients():
    batch = masked_batch()
    sparse = perturb(tiny_model()).eval()  # eval: no dropout, so both see the same function
    dense = tiny_model(sparse_prediction=False).eval()
    dense.load_state_dict(sparse.state_dict())
    sparse_out, dense_out = sparse(**batch), dense(**batch)
    assert dense_out.logits.shape == (*batch["input_ids"].shape, VOCAB)
    torch.testing.assert_close(sparse_out.loss, dense_out.loss, atol=1e-6, rtol=0)
    sparse_out.loss.backward()
    dense_out.loss.backward()
    dense_params = dict(dense.named_parameters())
    for name, p in sparse.named_parameters():
        torch.testing.assert_close(p.grad, dense_params[name].grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gets_a_gradient(family):
    model = tiny_model(family).train()
    model(**masked_batch()).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_masked_token_gives_a_zero_loss_that_reaches_every_parameter():
    batch = masked_batch()
    batch["labels"].fill_(-100)
    model = tiny_model()
    out = model(**batch)
    assert out.loss.item() == 0.0 and out.logits.shape == (0, VOCAB)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_goes_down_on_real_text(family):
    batch = masked_batch(batch_size=8)
    model = tiny_model(family).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("family", ["roberta", "roberta-prelayernorm", "distilbert"])
def test_other_families_map_onto_their_masked_lm_model(family):
    batch = masked_batch()
    batch.pop("token_type_ids", None)
    ours = perturb(tiny_model(family)).eval()
    mapped = ours.to_masked_lm().eval()
    expected = {
        "roberta": "RobertaForMaskedLM",
        "roberta-prelayernorm": "RobertaPreLayerNormForMaskedLM",
        "distilbert": "DistilBertForMaskedLM",
    }
    assert type(mapped).__name__ == expected[family]
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).loss, mapped(**batch).loss, atol=1e-5, rtol=0)
        back = tiny_model(family).eval()
        back.load_masked_lm(mapped)
        torch.testing.assert_close(back(**batch).loss, ours(**batch).loss, atol=1e-6, rtol=0)


def test_token_type_ids_are_padded_passed_to_bert_and_dropped_for_distilbert():
    examples = [{"input_ids": [2, 10, 11, 3, 12, 3], "token_type_ids": [0, 0, 0, 0, 1, 1]}, {"input_ids": [2, 13, 3]}]
    examples[1]["token_type_ids"] = [0, 0, 0]
    batch = MLMCollator(tokenizer(), generator=torch.Generator().manual_seed(0))(examples)
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]]
    bert = tiny_model("bert").eval()
    with torch.no_grad():
        with_types = bert(**batch).last_hidden_state
        without = bert(**{k: v for k, v in batch.items() if k != "token_type_ids"}).last_hidden_state
        assert not torch.allclose(with_types[0, 4:], without[0, 4:])  # segment B is seen as segment B
        assert tiny_model("distilbert")(**batch).loss.isfinite()  # DistilBERT has no segments: ignored


def test_save_load_round_trip_and_encoder_alone_with_masked_mean_pooling(tmp_path):
    batch = masked_batch()
    model = perturb(tiny_model()).eval()
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("lm_head.") for k in keys) and any(k.startswith("mlm.encoder.") for k in keys)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MLMForPreTraining) and isinstance(encoder, MLMModel)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).loss, model(**batch).loss)
        out = encoder(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(out.last_hidden_state, model(**batch).last_hidden_state)
        # pooler_output is the mean over real tokens: padding a sequence does not change it
        ids = batch["input_ids"][:1, :20]
        alone = encoder(ids, torch.ones_like(ids)).pooler_output
        padded = torch.cat([ids, torch.zeros(1, 12, dtype=torch.long)], dim=1)
        mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 12, dtype=torch.long)], dim=1)
        torch.testing.assert_close(encoder(padded, mask).pooler_output, alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alone, encoder(ids).last_hidden_state.mean(1))


def test_from_encoder_starts_from_a_checkpoint_with_or_without_its_head(tmp_path):
    batch = masked_batch()
    bert_config = BertConfig(**{k: v for k, v in TINY["bert"].items() if k != "model_type"})
    reference = perturb(BertForMaskedLM(bert_config)).eval()
    reference.save_pretrained(tmp_path / "with_head")
    model = MLMForPreTraining.from_encoder(str(tmp_path / "with_head"), mlm_probability=0.25).eval()
    assert model.config.mlm_probability == 0.25 and model.config.encoder.hidden_size == 32
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).loss, reference(**batch).loss, atol=1e-5, rtol=0)

    bare = perturb(BertModel(bert_config)).eval()  # a checkpoint without an MLM head (and with a pooler)
    bare.save_pretrained(tmp_path / "bare")
    model = MLMForPreTraining.from_encoder(str(tmp_path / "bare")).eval()
    assert torch.all(model.lm_head.bias == 0)  # a fresh head
    with torch.no_grad():
        torch.testing.assert_close(
            model.mlm(batch["input_ids"], batch["attention_mask"]).last_hidden_state,
            bare(batch["input_ids"], batch["attention_mask"]).last_hidden_state,
        )

    model.save_pretrained(tmp_path / "ours")  # an hf_ssl_mlm checkpoint is loaded as it is
    again = MLMForPreTraining.from_encoder(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).loss, model(**batch).loss)


# ---------------------------------------------------------------------------------------------------------------------
# Export: loads without hf_ssl
# ---------------------------------------------------------------------------------------------------------------------

_CHECK_EXPORTS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    for folder in sys.argv[1:]:
        folder = Path(folder)
        expected = load_file(folder.parent / (folder.name + "_expected.safetensors"))
        inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
        family = json.loads((folder / "config.json").read_text())["model_type"]
        encoder = AutoModel.from_pretrained(folder).eval()
        masked_lm = AutoModelForMaskedLM.from_pretrained(folder).eval()
        classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer("The import statement.")["input_ids"] == expected["tokenized"].tolist()
        with torch.no_grad():
            hidden = encoder(**inputs).last_hidden_state
            torch.testing.assert_close(hidden, expected["hidden"], atol=1e-5, rtol=0)
            logits = masked_lm(**inputs).logits[expected["labels"] != -100]
            torch.testing.assert_close(logits, expected["masked_logits"], atol=1e-5, rtol=0)
            assert classifier(**inputs).logits.shape == (inputs["input_ids"].shape[0], 3)
        print(family, type(encoder).__name__, type(masked_lm).__name__, "ok")
    assert "hf_ssl" not in sys.modules, "the export needed hf_ssl"
    """
)


def run_without_hf_ssl(script: str, *args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_export_loads_in_plain_transformers_with_our_hidden_states_and_predictions(tmp_path):
    batch = masked_batch()
    folders = []
    for family in FAMILIES:
        model = perturb(tiny_model(family)).eval()
        folder = tmp_path / family
        save_encoder_export(model, tokenizer(), folder)
        assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == family and "hf_ssl" not in json.dumps(config)
        with torch.no_grad():
            out = model(**batch)
        save_file(
            {
                "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"],
                "labels": batch["labels"],
                "hidden": out.last_hidden_state.contiguous(),
                "masked_logits": out.logits.contiguous(),
                "tokenized": torch.tensor(tokenizer()("The import statement.")["input_ids"]),
            },
            tmp_path / f"{family}_expected.safetensors",
        )
        folders.append(str(folder))
        # and back: an export is a checkpoint MLM can start from, head included
        again = MLMForPreTraining.from_encoder(str(folder)).eval()
        with torch.no_grad():
            torch.testing.assert_close(again(**batch).loss, out.loss, atol=1e-5, rtol=0)
    stdout = run_without_hf_ssl(_CHECK_EXPORTS, *folders, cwd=tmp_path)
    assert stdout.count(" ok") == len(FAMILIES), stdout


_FINE_TUNE = textwrap.dedent(
    """
    import sys
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    folder, data_dir, out_dir = sys.argv[1:]
    data = load_dataset("csv", data_files=f"{data_dir}/train.tsv", delimiter="\\t")["train"].select(range(256))
    labels = sorted(set(data["label"]))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True)
    data = data.map(lambda b: {"labels": [labels.index(x) for x in b["label"]]}, batched=True)
    data = data.remove_columns(["text", "label"])
    model, info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(labels), output_loading_info=True
    )
    assert not [k for k in info["missing_keys"] if not k.startswith(("classifier", "bert.pooler"))], info
    before = model.bert.encoder.layer[0].attention.self.query.weight.clone()
    args = TrainingArguments(
        out_dir, per_device_train_batch_size=32, max_steps=12, learning_rate=3e-3, logging_steps=1,
        report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 12 and all(l == l for l in losses), losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert not torch.equal(before, model.bert.encoder.layer[0].attention.self.query.weight)
    assert "hf_ssl" not in sys.modules
    print("fine-tuned", losses[0], losses[-1])
    """
)


@pytest.mark.slow
def test_export_fine_tunes_with_the_plain_transformers_trainer(tmp_path):
    if not (SUPERSENSE / "train.tsv").exists():
        pytest.skip(f"real data not available: {SUPERSENSE} is absent (see ../shared/data/README.md)")
    folder = tmp_path / "export"
    save_encoder_export(perturb(tiny_model()), tokenizer(), folder)
    stdout = run_without_hf_ssl(_FINE_TUNE, str(folder), str(SUPERSENSE), str(tmp_path / "run"), cwd=tmp_path)
    assert "fine-tuned" in stdout


# ---------------------------------------------------------------------------------------------------------------------
# The head's decoder, tied to the input embeddings (transformers' tying): training, checkpoints, resizing
# ---------------------------------------------------------------------------------------------------------------------

# the head's tensors in every checkpoint, those written before the head had a decoder module included
SAVED_HEAD_KEYS = {
    "lm_head.dense.weight",
    "lm_head.dense.bias",
    "lm_head.layer_norm.weight",
    "lm_head.layer_norm.bias",
    "lm_head.bias",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_decoder_is_the_input_embedding_matrix(family):
    model = tiny_model(family)
    embeddings = model.get_input_embeddings()
    assert model.get_output_embeddings() is model.lm_head.decoder
    assert model.lm_head.decoder.weight is embeddings.weight
    assert model.all_tied_weights_keys == {"lm_head.decoder.weight": "mlm.encoder.embeddings.word_embeddings.weight"}
    assert len(list(model.parameters())) == len(dict(model.named_parameters(remove_duplicate=False))) - 1


def test_training_steps_match_bert_for_masked_lm_step_for_step():
    """Same weights, same masked batches, AdamW on both: the losses and the weights stay BertForMaskedLM's, so the
    embedding matrix gets the same gradient through its two uses (input lookup and output projection)."""
    bert_config = BertConfig(**{k: v for k, v in TINY["bert"].items() if k != "model_type"})
    reference = perturb(BertForMaskedLM(bert_config)).eval()  # eval: no dropout, both compute the same function
    ours = tiny_model().eval()
    ours.load_masked_lm(reference)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (reference, ours)]
    for step in range(4):
        batch = masked_batch(seed=step)
        losses = [model(**batch).loss for model in (reference, ours)]
        torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=0, msg=f"step {step}")
        for loss, optimizer in zip(losses, optimizers, strict=True):
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    state = reference.state_dict()
    assert not torch.equal(ours.lm_head.bias, torch.zeros_like(ours.lm_head.bias))  # the steps moved the weights
    for name, value in ours.mlm.encoder.state_dict().items():
        torch.testing.assert_close(value, state[f"bert.{name}"], atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(ours.lm_head.bias, state["cls.predictions.bias"], atol=1e-5, rtol=0)
    torch.testing.assert_close(
        ours.lm_head.dense.weight, state["cls.predictions.transform.dense.weight"], atol=1e-5, rtol=0
    )


def test_checkpoints_hold_the_tied_matrix_once_and_older_checkpoints_still_load(tmp_path):
    batch = masked_batch()
    model = perturb(tiny_model()).eval()
    model.save_pretrained(tmp_path / "new")
    saved = load_file(tmp_path / "new" / "model.safetensors")
    assert {k for k in saved if k.startswith("lm_head.")} == SAVED_HEAD_KEYS  # no decoder: the embeddings hold it
    assert set(saved) == set(model.state_dict()) - {"lm_head.decoder.weight"}

    # a checkpoint as the head wrote them before it had a decoder: the same config, these tensors and names only
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("lm_head.decoder.")}
    model.config.save_pretrained(tmp_path / "old")
    save_file(tensors, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    loaded, info = MLMForPreTraining.from_pretrained(tmp_path / "old", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert loaded.lm_head.decoder.weight is loaded.get_input_embeddings().weight
    # and through torch's load_state_dict (the Trainer's resume), strict: the decoder is read from the embeddings
    fresh = tiny_model()
    fresh.load_state_dict(load_file(tmp_path / "old" / "model.safetensors"))
    assert fresh.lm_head.decoder.weight is fresh.get_input_embeddings().weight
    with torch.no_grad():
        expected = model(**batch).loss
        torch.testing.assert_close(loaded.eval()(**batch).loss, expected)
        torch.testing.assert_close(fresh.eval()(**batch).loss, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_resize_token_embeddings_for_a_larger_tokenizer_the_head_follows(family, tmp_path):
    model = perturb(tiny_model(family)).eval()
    bias = model.lm_head.bias.detach().clone()
    size = VOCAB + 13
    model.resize_token_embeddings(size, mean_resizing=False)
    assert model.get_input_embeddings().weight.shape[0] == size == model.config.encoder.vocab_size
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight
    assert model.lm_head.decoder.out_features == size and model.lm_head.bias.shape == (size,)
    torch.testing.assert_close(model.lm_head.bias[:VOCAB], bias)  # the old tokens keep their bias, new ones start at 0
    assert torch.all(model.lm_head.bias[VOCAB:] == 0)
    assert "vocab_size" not in model.config.to_dict()  # only the encoder config has one

    batch = masked_batch()
    batch.pop("token_type_ids", None)
    batch["input_ids"][:, 1] = VOCAB + 4  # a new token in the input ...
    batch["labels"][:, 2] = VOCAB + 7  # ... and one to predict
    out = model(**batch)
    assert out.logits.shape == (int((batch["labels"] != -100).sum()), size)
    out.loss.backward()
    new_rows = model.get_input_embeddings().weight.grad[VOCAB:]
    assert new_rows.abs().sum(dim=1).gt(0).all()  # every new row is learnt (as an output at least)

    model.save_pretrained(tmp_path)
    with torch.no_grad():
        again = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(again(**batch).loss, out.loss)
        torch.testing.assert_close(model.to_masked_lm().eval()(**batch).loss, out.loss, atol=1e-5, rtol=0)

    encoder = AutoModel.from_config(MLMConfig(encoder=dict(TINY[family])))
    encoder.resize_token_embeddings(size)
    assert encoder.config.encoder.vocab_size == size and encoder.get_output_embeddings() is None
