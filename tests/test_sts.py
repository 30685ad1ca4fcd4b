"""STS evaluation: reading (sentence1, sentence2, score) data (the STS Benchmark's headerless TSV included),
correlations, the TF-IDF baseline, and ``hf-ssl evaluate`` end to end with its baselines and JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from tiny_text import STS_PAIRS

from hf_ssl.errors import UsageError
from hf_ssl.evaluation import EvaluationArguments
from hf_ssl.evaluation.report import format_table, result_rows
from hf_ssl.evaluation.sts import correlations, load_sts, read_sts_tsv, sts_metrics, tfidf_cosine
from hf_ssl.evaluation.tasks import choose_task

STSB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "stsb"
PAIRS = STS_PAIRS[:6]


def write_tsv(path: Path, pairs=PAIRS) -> Path:
    lines = [f"genre\tfile\t2012\t{i:04d}\t{s:.3f}\t{a}\t{b}" for i, (s, a, b) in enumerate(pairs)]
    lines[1] += "\tan extra\tcolumn"  # as a few STS-B lines
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def auto_task(dataset_name: str, split: str) -> str:
    """The task ``--task auto`` chooses on ``split`` of ``dataset_name``, from the data alone."""
    args = EvaluationArguments(model_name_or_path="unused", dataset_name=dataset_name, split=split)
    return choose_task(args)[0]


def test_reads_the_headerless_stsb_layout_with_extra_columns_and_quotes(tmp_path):
    pairs = [*PAIRS, (2.0, 'He said "hi".', "She said 'bye'.")]
    ds = read_sts_tsv(write_tsv(tmp_path / "dev.tsv", pairs))
    assert ds.column_names == ["sentence1", "sentence2", "score"] and len(ds) == len(pairs)
    assert ds[1] == {"sentence1": PAIRS[1][1], "sentence2": PAIRS[1][2], "score": pytest.approx(0.4)}
    assert ds[-1]["sentence1"] == 'He said "hi".'
    # a folder and a split, or the file itself
    assert len(load_sts(str(tmp_path), "dev")) == len(pairs) == len(load_sts(str(tmp_path / "dev.tsv")))
    with pytest.raises(UsageError, match="no split 'test'"):
        load_sts(str(tmp_path), "test")
    assert auto_task(str(tmp_path), "dev") == "sts"
    (tmp_path / "bad.tsv").write_text("a\tb\tc\td\tnot-a-score\tx\ty\n")
    with pytest.raises(UsageError, match="line 1"):
        read_sts_tsv(tmp_path / "bad.tsv")


def test_reads_named_columns_of_other_data(tmp_path):
    rows = [{"text1": a, "text2": b, "similarity_score": s} for s, a, b in PAIRS]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_sts(str(tmp_path / "pairs.jsonl"), "train")
    assert ds["score"] == [s for s, _, _ in PAIRS] and ds["sentence2"][0] == PAIRS[0][2]
    with pytest.raises(UsageError, match="two sentence columns"):
        load_sts(str(tmp_path / "pairs.jsonl"), "train", sentence_columns=["text1", "missing"])
    assert auto_task(str(tmp_path / "pairs.jsonl"), "train") == "sts"
    (tmp_path / "labelled.csv").write_text("text,label\na sentence,1\nanother one,0\n")
    assert auto_task(str(tmp_path / "labelled.csv"), "train") == "classification"  # classification data


def test_real_stsb_files():
    if not (STSB / "dev.tsv").exists():
        pytest.skip(f"real data not available: {STSB} is absent (see ../shared/data/README.md)")
    dev, train = load_sts(str(STSB), "dev"), load_sts(str(STSB), "train")
    assert (len(dev), len(train)) == (1500, 5749)
    assert min(dev["score"]) >= 0.0 and max(dev["score"]) <= 5.0


def test_correlations_and_metrics_match_scipy_and_wang_isola():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 8, generator=generator), torch.randn(20, 8, generator=generator)
    scores = torch.rand(20, generator=generator) * 5
    cosine = torch.nn.functional.cosine_similarity(a, b).double()
    measured = sts_metrics(a, b, scores)
    assert measured["spearman"] == pytest.approx(spearmanr(cosine, scores).statistic, abs=1e-9)
    assert measured["pearson"] == pytest.approx(pearsonr(cosine, scores)[0], abs=1e-6)
    assert measured["num_pairs"] == 20 and "alignment" in measured and measured["uniformity"] < 0
    assert correlations([1, 2, 3], [10, 20, 35])["spearman"] == pytest.approx(1.0)


def test_tfidf_cosine_baseline():
    similarity = tfidf_cosine(["the cat sat", "red blue"], ["the cat sat", "green yellow"])
    assert similarity[0].item() == pytest.approx(1.0) and similarity[1].item() == pytest.approx(0.0)


@pytest.mark.slow
def test_evaluate_sts_command_end_to_end_with_baselines(tmp_path, capsys):
    """A SimCSE checkpoint started from a plain encoder: the JSON has the shape of the other protocols (``sts``,
    ``baselines.<name>.sts``), the starting encoder is a baseline, and the report reads it."""
    from transformers import BertConfig, BertModel

    from hf_ssl.cli import main
    from hf_ssl.data.text import load_default_text, train_tokenizer
    from hf_ssl.models.simcse import SIMCSE

    tokenizer = train_tokenizer(load_default_text("train")["text"], vocab_size=300)
    start = tmp_path / "start"
    BertModel(
        BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(start)
    tokenizer.save_pretrained(start)
    config = SIMCSE.make_config({"pooler_type": "mean"}, str(start))
    model = SIMCSE.make_model(config, str(start))
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    write_tsv(tmp_path / "sts" / "dev.tsv")
    out = tmp_path / "eval.json"
    main(
        [
            "evaluate",
            "--model_name_or_path",
            str(tmp_path / "ckpt"),
            "--dataset_name",
            str(tmp_path / "sts"),
            "--split",
            "dev",
            "--output_file",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    assert results["task"] == "sts" and results["num_test"] == len(PAIRS)
    assert set(results["baselines"]) == {"tfidf", "starting_encoder", "random_init"}
    for entry in (results, *results["baselines"].values()):
        assert -1.0 <= entry["sts"]["spearman"] <= 1.0
    # the SimCSE model was not trained: mean-pooled, it is its starting encoder, to the last digit
    assert results["sts"]["spearman"] == pytest.approx(results["baselines"]["starting_encoder"]["sts"]["spearman"])
    names = [row["name"] for row in result_rows(results)]
    assert names == ["pretrained", "tfidf", "starting encoder", "random init"]
    table = format_table(results)
    assert "STS Spearman" in table and "STS Spearman" in capsys.readouterr().out
    assert f"{len(PAIRS)} pairs of 'dev'" in table.splitlines()[0] and "None" not in table  # nothing was fitted
    with pytest.raises(SystemExit):
        main(["evaluate", "--task", "sts", "--model_name_or_path", str(tmp_path / "ckpt")])  # no data: an error


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_a_sentence_transformers_folder_is_pooled_as_its_config_says(tmp_path, pooling):
    from transformers import BertConfig, BertModel

    from hf_ssl.backbones.sentence_transformers import read_pooling
    from hf_ssl.data.text import load_default_text, train_tokenizer
    from hf_ssl.evaluation.features import load_features, model_encoder
    from hf_ssl.export.sentence_transformers import save_sentence_transformer

    tokenizer = train_tokenizer(load_default_text("train")["text"][:500], vocab_size=200)
    encoder = BertModel(
        BertConfig(vocab_size=200, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).eval()
    save_sentence_transformer(encoder, tokenizer, tmp_path, pooling=pooling, max_seq_length=16)
    assert read_pooling(tmp_path) == pooling
    model, spec = load_features(str(tmp_path))
    encode, description = model_encoder(model, spec.pool), spec.description
    inputs = dict(tokenizer(["a short one", "a somewhat longer sentence here"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        hidden = encoder(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        expected = hidden[:, 0] if pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(encode(inputs), expected)
    assert ("first token" in description) == (pooling == "cls")
