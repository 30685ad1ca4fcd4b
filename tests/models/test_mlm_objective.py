"""MLM as an objective: the shared checks, data preparation (text rows, tokenizer, vocabulary), starting from an encoder
checkpoint, and the command line end to end (pretrain on the embedded corpus and on a .txt file, evaluate, export
loadable without hf_ssl)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from common import ObjectiveChecks
from datasets import Dataset
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, BertConfig, BertForMaskedLM

from hf_ssl import MLMConfig, MLMForPreTraining, UsageError
from hf_ssl.cli import main
from hf_ssl.data.text import load_default_text, train_tokenizer
from hf_ssl.models.mlm.collator import MLMCollator
from hf_ssl.models.mlm.objective import MLM, MLMDataArguments, prepare_data
from hf_ssl.objectives import RunContext

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BERT_TOKENIZER = SHARED_DATA / "tokenizers" / "bert-base-uncased"
ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TINY_FLAGS = [
    "--encoder",
    json.dumps(ENCODER),
    "--max_seq_length",
    "32",
    "--vocab_size",
    "200",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "1",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]


class TestMLMObjective(ObjectiveChecks):
    objective = MLM

    def tiny_config(self):
        return MLMConfig(encoder={**ENCODER, "vocab_size": 100})

    def pretrain_flags(self):
        return TINY_FLAGS

    def batch(self, config):
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(5, 100, (4, 16), generator=generator)
        labels = torch.full_like(input_ids, -100)
        labels[:, ::4] = input_ids[:, ::4]  # every fourth token predicted, fixed: no randomness left in the forward
        input_ids[:, ::4] = 4
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def _args(**kwargs) -> MLMDataArguments:
    return MLMDataArguments(**{"max_seq_length": 32, "vocab_size": 200, **kwargs})


def test_prepare_data_cleans_trains_a_tokenizer_sizes_the_vocabulary_and_masks_per_batch():
    rows = list(load_default_text("train[:300]")["text"]) + ["", "   ", None, "bad \ufffd bytes"]
    ds = Dataset.from_dict({"sentence": rows, "id": list(range(len(rows)))})
    config = MLMConfig(encoder=ENCODER)
    prepared = prepare_data(ds, config, _args())
    assert prepared.columns == {"text": "sentence"}
    assert prepared.num_skipped == 4  # 3 empty or missing, 1 undecodable
    tokenizer = prepared.processing_class
    assert config.encoder.vocab_size == len(tokenizer) <= 200 and config.encoder.pad_token_id == tokenizer.pad_token_id
    assert all(len(ids) <= 32 for ids in prepared.dataset["input_ids"])
    assert isinstance(prepared.collator, MLMCollator)
    rows = [prepared.dataset[i] for i in range(8)]
    prepared.collator.set_position(seed=0, rank=0, batches_done=5)
    first = prepared.collator(rows)
    prepared.collator.set_position(seed=0, rank=0, batches_done=5)
    assert torch.equal(prepared.collator(rows)["labels"], first["labels"])  # a function of the batch position
    assert not torch.equal(prepared.collator(rows)["labels"], first["labels"])  # the next batch masks anew
    with pytest.raises(UsageError, match=r"row 303 of column .sentence. \(line 304 of a text file\) holds bytes"):
        prepare_data(ds, MLMConfig(encoder=ENCODER), _args(on_bad_example="error"))
    with pytest.raises(UsageError, match=r"column 'nope' not found; the dataset has: sentence \(string\), id"):
        prepare_data(ds, MLMConfig(encoder=ENCODER), _args(text_column="nope"))


def test_line_mode_and_whole_word_masking_keep_word_ids_to_the_collator():
    ds = load_default_text("train[:64]")
    config = MLMConfig(encoder=ENCODER, whole_word_masking=True, mlm_probability=0.5)
    prepared = prepare_data(ds, config, _args(packing=False, vocab_size=120))
    assert {"length", "word_ids"} <= set(prepared.dataset.column_names)
    batch = prepared.collator([prepared.dataset[i] for i in range(16)])
    selected = batch["labels"] != -100
    tokens = prepared.processing_class.convert_ids_to_tokens
    for row in range(16):  # a "##" piece is predicted exactly when the piece before it is (whole words)
        ids = prepared.dataset[row]["input_ids"]
        for position in range(1, len(ids)):
            if tokens(ids[position]).startswith("##"):
                assert selected[row, position] == selected[row, position - 1]


def test_checkpoint_settings_are_checked_before_training(tmp_path):
    big = Dataset.from_dict({"text": list(load_default_text("train[:50]")["text"])})
    with pytest.raises(UsageError, match="--max_seq_length 100 needs 100 position embeddings but the encoder has 64"):
        prepare_data(big, MLMConfig(encoder=ENCODER), _args(max_seq_length=100))
    encoder = BertConfig(vocab_size=50, **ENCODER)
    BertForMaskedLM(encoder).save_pretrained(tmp_path / "bert")
    run = RunContext(model_name_or_path=str(tmp_path / "bert"))
    config = MLM.make_config({}, run.model_name_or_path)
    with pytest.raises(UsageError, match="the tokenizer has .* tokens but the checkpoint's embeddings only 50"):
        prepare_data(big, config, _args(tokenizer_name=_saved_tokenizer(tmp_path, 100)), run)
    with pytest.raises(UsageError, match="has no tokenizer; name one with --tokenizer_name"):
        prepare_data(big, config, _args(), run)
    with pytest.raises(UsageError, match="--train_tokenizer with --model_name_or_path"):
        prepare_data(big, config, _args(train_tokenizer=True), run)
    with pytest.raises(UsageError, match="give --tokenizer_name or --train_tokenizer, not both"):
        _args(train_tokenizer=True, tokenizer_name="x")


def _saved_tokenizer(tmp_path: Path, vocab_size: int) -> str:
    folder = tmp_path / f"tokenizer-{vocab_size}"
    train_tokenizer(load_default_text("train")["text"], vocab_size=vocab_size).save_pretrained(folder)
    return str(folder)


def test_a_start_reads_the_checkpoint_config_once_per_step_and_refuses_other_objectives(tmp_path, monkeypatch):
    """The encoder-objective base: make_config and make_model each read the checkpoint's config once; the flags change
    the checkpoint's encoder; another objective's checkpoint is refused in one line."""
    torch.manual_seed(0)
    source = BertForMaskedLM(BertConfig(vocab_size=50, **ENCODER))
    source.save_pretrained(tmp_path / "bert")
    reads = []
    original = AutoConfig.from_pretrained.__func__
    monkeypatch.setattr(
        AutoConfig, "from_pretrained", classmethod(lambda cls, *a, **k: reads.append(a[0]) or original(cls, *a, **k))
    )
    config = MLM.make_config({"mlm_probability": 0.2, "encoder": {"hidden_dropout_prob": 0.0}}, str(tmp_path / "bert"))
    assert reads == [str(tmp_path / "bert")]
    assert (
        config.mlm_probability == 0.2 and config.encoder.hidden_dropout_prob == 0.0 and config.encoder.vocab_size == 50
    )
    model = MLM.make_model(config, str(tmp_path / "bert"))
    assert len(reads) == 2
    torch.testing.assert_close(model.lm_head.dense.weight, source.cls.predictions.transform.dense.weight)
    monkeypatch.undo()

    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "hf_ssl_simcse"}))
    with pytest.raises(
        UsageError, match=r"is a 'hf_ssl_simcse' checkpoint, not one of mlm \('hf_ssl_mlm'\) nor a text"
    ):
        MLM.make_config({}, str(other))
    with pytest.raises(UsageError, match="--encoder with --model_name_or_path must be a JSON object"):
        MLM.make_config({"encoder": "bert-base-uncased"}, str(tmp_path / "bert"))


@pytest.mark.slow
def test_start_from_an_encoder_checkpoint_with_its_head_and_tokenizer(tmp_path):
    """--model_name_or_path of a plain BertForMaskedLM folder: its encoder AND head start the run (lr 0 keeps them),
    its tokenizer is used and saved, and the run's own checkpoint can be continued."""
    tokenizer = AutoTokenizer.from_pretrained(_saved_tokenizer(tmp_path, 120))
    torch.manual_seed(3)
    source = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **ENCODER))
    source.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    flags = [f for f in TINY_FLAGS if f not in ("--vocab_size", "200")]
    flags = flags[2:]  # no --encoder: the checkpoint's
    out = tmp_path / "run"
    main(
        ["pretrain", "mlm", "--model_name_or_path", str(tmp_path / "bert"), *flags, "--max_steps", "1"]
        + ["--learning_rate", "0", "--output_dir", str(out)]
    )
    model = MLMForPreTraining.from_pretrained(out)
    state = source.state_dict()
    torch.testing.assert_close(
        model.mlm.encoder.embeddings.word_embeddings.weight, state["bert.embeddings.word_embeddings.weight"]
    )
    torch.testing.assert_close(model.lm_head.dense.weight, state["cls.predictions.transform.dense.weight"])
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
    main(
        [
            "pretrain",
            "mlm",
            "--model_name_or_path",
            str(out),
            *flags,
            "--max_steps",
            "1",
            "--output_dir",
            str(tmp_path / "again"),
        ]
    )
    assert MLMForPreTraining.from_pretrained(tmp_path / "again").config.encoder.vocab_size == len(tokenizer)


_LOAD_EXPORT = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    folder = sys.argv[1]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["the import statement binds names", "a class"], padding=True, return_tensors="pt")
    encoder = AutoModel.from_pretrained(folder).eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    masked_lm = AutoModelForMaskedLM.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = encoder(**inputs).last_hidden_state
        assert classifier(**inputs).logits.shape == (2, 3)
        assert masked_lm(**inputs).logits.shape[-1] == len(tokenizer)
    torch.save(hidden, sys.argv[2])
    assert not [name for name in sys.modules if name.startswith("hf_ssl")]
    print(type(encoder).__name__, type(masked_lm).__name__)
    """
)


@pytest.mark.slow
def test_cli_pretrain_evaluate_export_on_the_embedded_corpus(tmp_path, capsys):
    out = tmp_path / "run"
    main(["pretrain", "mlm", *TINY_FLAGS, "--max_steps", "3", "--output_dir", str(out)])
    run = json.loads((out / "hf_ssl_run.json").read_text())
    assert run["objective"] == "mlm" and run["columns"] == {"text": "text"} and run["num_examples"] > 100
    assert (out / "tokenizer.json").is_file()
    config = MLMConfig.from_pretrained(out)
    assert config.encoder.vocab_size == len(AutoTokenizer.from_pretrained(out)) <= 200

    # evaluation on a tiny labelled .tsv with a header: pooled features, baselines, masked-token metrics
    data = tmp_path / "labelled"
    data.mkdir()
    texts = load_default_text("train[:120]")["text"]
    for split, rows in (("train", range(0, 80)), ("dev", range(80, 120))):
        lines = ["text\tlabel"] + [f"{texts[i]}\t{'long' if len(texts[i]) > 80 else 'short'}" for i in rows]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    results_file = out / "eval_results.json"  # datasets names the split of a folder's dev.tsv "validation"
    main(
        ["evaluate", "--model_name_or_path", str(out), "--dataset_name", str(data), "--split", "validation"]
        + ["--knn_k", "5", "--output_file", str(results_file)]
    )
    results = json.loads(results_file.read_text())
    assert results["modality"] == "text" and results["num_train"] == 80 and results["num_test"] == 40
    assert results["num_classes"] == 2 and results["input_column"] == "text"
    assert set(results["baselines"]) == {"random_init", "tfidf"}
    assert 0 <= results["baselines"]["tfidf"]["linear_probe"]["accuracy"] <= 1
    mlm = results["mlm"]
    assert 0 <= mlm["accuracy"] <= 1 and mlm["num_predicted"] > 0
    assert mlm["perplexity"] == pytest.approx(torch.tensor(mlm["loss"]).exp().item(), rel=1e-5)
    assert "tfidf" in capsys.readouterr().out

    export = tmp_path / "export"
    main(["export", str(out), str(export)])
    assert json.loads((export / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    card = ModelCard.load(export / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
    assert card.data.eval_results and {r.metric_type for r in card.data.eval_results} == {"accuracy"}
    assert "masked-token accuracy" in card.text
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_EXPORT, str(export), str(tmp_path / "hidden.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BertModel BertForMaskedLM" in result.stdout
    ours = MLMForPreTraining.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer(["the import statement binds names", "a class"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "hidden.pt"), ours.mlm(**inputs).last_hidden_state)

    # the export (a BertForMaskedLM folder without BERT's pooler) evaluates like the run: the same mean-pooled features
    exported_file = tmp_path / "export_eval.json"
    main(
        ["evaluate", "--model_name_or_path", str(export), "--dataset_name", str(data), "--split", "validation"]
        + ["--knn_k", "5", "--baselines", "false", "--output_file", str(exported_file)]
    )
    exported = json.loads(exported_file.read_text())
    assert exported["modality"] == "text" and exported["features"] == "mean of the token states"
    for protocol in ("knn", "linear_probe"):
        assert exported[protocol]["accuracy"] == pytest.approx(results[protocol]["accuracy"])


@pytest.mark.slow
def test_cli_on_a_text_file_skips_and_counts_empty_lines_with_a_trained_tokenizer(tmp_path):
    lines = list(load_default_text("train[:200]")["text"])
    lines[10:10] = ["", "   ", ""]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    main(
        ["pretrain", "mlm", "--dataset_name", str(corpus), *TINY_FLAGS, "--train_tokenizer", "--vocab_size", "300"]
        + ["--tokenizer_kind", "bpe", "--max_steps", "2", "--output_dir", str(out)]
    )
    run = json.loads((out / "hf_ssl_run.json").read_text())
    assert run["num_skipped"] == 3
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert 261 < len(tokenizer) <= 300 and tokenizer.mask_token == "[MASK]"
    assert load_file(out / "model.safetensors")["mlm.encoder.embeddings.word_embeddings.weight"].shape[0] == len(
        tokenizer
    )


@pytest.mark.slow
def test_cli_mistakes_end_as_one_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("id,body\n1,hello there\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "mlm", "--dataset_name", str(corpus), *TINY_FLAGS, "--output_dir", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "no text column found among: id (int64), body (" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "mlm", *TINY_FLAGS, "--on_bad_example", "drop", "--output_dir", str(tmp_path / "o")])
    assert "on_bad_example" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_names_or_skips_an_undecodable_line_of_a_text_file(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(("\n".join(load_default_text("train[:100]")["text"]) + "\n").encode() + b"caf\xe9 au lait\n")
    with pytest.raises(SystemExit):
        main(
            ["pretrain", "mlm", "--dataset_name", str(corpus), *TINY_FLAGS, "--on_bad_example", "error"]
            + ["--max_steps", "1", "--output_dir", str(tmp_path / "o")]
        )
    error = capsys.readouterr().err
    assert "line 101" in error or "row 100" in error
    main(
        ["pretrain", "mlm", "--dataset_name", str(corpus), *TINY_FLAGS, "--max_steps", "1"]
        + ["--output_dir", str(tmp_path / "skip")]
    )
    assert json.loads((tmp_path / "skip" / "hf_ssl_run.json").read_text())["num_skipped"] == 1


# --------------------------------------------------------------------------------------------------------------------
# The trained tokenizer: deterministic, and reused by a resumed run
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "vocab_size"), [("wordpiece", 8000), ("wordpiece", 200), ("bpe", 400)])
def test_trained_tokenizer_is_the_same_every_time(kind, vocab_size):
    """The same text gives the same vocabulary, ids included. The tokenizers library numbers WordPiece's ``##``
    pieces in the order of a hash map that Rust seeds anew for every map, so unaided, repeated trainings (and two
    processes) disagreed: 2,980 to 2,982 pieces on the default corpus at --vocab_size 8000."""
    texts = load_default_text("train")["text"]
    vocabularies = [train_tokenizer(texts, vocab_size, kind=kind).get_vocab() for _ in range(3)]
    assert vocabularies[0] == vocabularies[1] == vocabularies[2]
    tokenizer = train_tokenizer(iter(texts), vocab_size, kind=kind)  # an iterator, read once by the caller
    assert tokenizer.get_vocab() == vocabularies[0]
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert set(tokenizer.all_special_tokens) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    if kind == "wordpiece":  # the ## pieces are ordinary vocabulary, not special tokens split out of the text
        encoded = tokenizer("the statements are executed")
        pieces = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
        assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and "[UNK]" not in pieces
        assert tokenizer.decode(encoded["input_ids"], skip_special_tokens=True) == "the statements are executed"
        assert tokenizer.tokenize("##s") != ["##s"]


@pytest.mark.slow
def test_resume_uses_the_tokenizer_saved_in_the_checkpoint(tmp_path, monkeypatch):
    """--resume_from_checkpoint (true, then a folder) with the default trained tokenizer: the run loads the tokenizer
    saved in the checkpoint and trains none, so the checkpoint's embeddings fit its vocabulary."""
    import hf_ssl.data.text

    out = tmp_path / "run"
    flags = [f for f in TINY_FLAGS if f not in ("--vocab_size", "200")]  # the default: a tokenizer trained on the text
    run = ["pretrain", "mlm", *flags, "--save_strategy", "steps", "--save_steps", "1", "--output_dir", str(out)]
    main([*run, "--max_steps", "1"])
    saved = AutoTokenizer.from_pretrained(out / "checkpoint-1").get_vocab()

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run trained a new tokenizer")

    monkeypatch.setattr(hf_ssl.data.text, "train_tokenizer", no_training)
    main([*run, "--max_steps", "2", "--resume_from_checkpoint", "true"])
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert AutoTokenizer.from_pretrained(out).get_vocab() == saved
    main([*run, "--max_steps", "3", "--resume_from_checkpoint", str(out / "checkpoint-2")])
    assert AutoTokenizer.from_pretrained(out / "checkpoint-3").get_vocab() == saved
    assert MLMForPreTraining.from_pretrained(out).config.encoder.vocab_size == len(saved)
