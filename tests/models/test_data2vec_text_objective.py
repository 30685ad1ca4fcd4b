"""data2vec text as an objective: `hf-ssl pretrain data2vec_text` on the embedded corpus lowers the loss and moves the
teacher, and its export loads with AutoModel and AutoModelForSequenceClassification and fine-tunes with the plain
Trainer, without hf_ssl."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from common import ObjectiveChecks
from transformers import AutoTokenizer

from hf_ssl.cli import main
from hf_ssl.data.text import load_default_text
from hf_ssl.models.data2vec_text.configuration_data2vec_text import Data2VecTextPretrainingConfig
from hf_ssl.models.data2vec_text.modeling_data2vec_text import Data2VecTextForPreTraining
from hf_ssl.objectives import OBJECTIVES

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
    "--average_top_k_layers",
    "2",
    "--max_seq_length",
    "32",
    "--vocab_size",
    "200",
    "--per_device_train_batch_size",
    "8",
    "--learning_rate",
    "1e-3",
    "--logging_steps",
    "1",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
]

_FINE_TUNE_EXPORT = textwrap.dedent(
    """
    import sys, torch
    from datasets import Dataset
    from transformers import (AutoModel, AutoModelForSequenceClassification, AutoTokenizer, Trainer,
                              TrainingArguments)
    folder, out = sys.argv[1], sys.argv[2]
    assert "hf_ssl" not in sys.modules
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    assert type(model).__name__ == "Data2VecTextModel", type(model).__name__
    inputs = tokenizer(["The quick brown fox.", "Lists hold items."], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.save(model(**inputs).last_hidden_state, out)
    texts = ["a short one", "a much longer sentence about many things", "tiny", "another rather long sentence"] * 4
    ds = Dataset.from_dict({"text": texts, "label": [int(len(t) > 12) for t in texts]})
    ds = ds.map(lambda row: tokenizer(row["text"], truncation=True, max_length=16), remove_columns=["text"])
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    assert type(classifier).__name__ == "Data2VecTextForSequenceClassification", type(classifier).__name__
    exported = {k: v.clone() for k, v in classifier.data2vec_text.state_dict().items()}
    torch.testing.assert_close(exported["embeddings.word_embeddings.weight"], model.embeddings.word_embeddings.weight)
    args = TrainingArguments(out + ".ft", max_steps=12, per_device_train_batch_size=4, learning_rate=1e-3,
                             report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=1,
                             seed=0)
    trainer = Trainer(model=classifier, args=args, train_dataset=ds, processing_class=tokenizer)
    before = trainer.evaluate(ds)["eval_loss"]
    result = trainer.train()
    after = trainer.evaluate(ds)["eval_loss"]
    assert result.global_step == 12 and after < before, (before, after)  # the plain Trainer fits the labels
    tuned = classifier.data2vec_text.state_dict()
    changed = [k for k in exported if not torch.equal(exported[k], tuned[k])]
    assert "encoder.layer.0.attention.self.query.weight" in changed, changed  # the pretrained encoder was fine-tuned
    assert "embeddings.word_embeddings.weight" in changed, changed
    print("FINE_TUNED", before, after)
    """
)


class TestData2VecTextObjective(ObjectiveChecks):
    objective = OBJECTIVES["data2vec_text"]

    def tiny_config(self):
        return Data2VecTextPretrainingConfig(
            encoder={**ENCODER, "vocab_size": 100, "pad_token_id": 0}, average_top_k_layers=2
        )

    def pretrain_flags(self):
        return TINY_FLAGS

    def batch(self, config):
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(5, 100, (4, 16), generator=generator)
        labels = torch.full_like(input_ids, -100)
        labels[:, ::4] = input_ids[:, ::4]  # every fourth token predicted, fixed: no randomness left in the forward
        input_ids[:, ::4] = 4
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


@pytest.mark.slow
def test_cli_pretrain_lowers_the_loss_moves_the_teacher_and_exports_for_plain_transformers(tmp_path, capsys):
    out = tmp_path / "run"
    main(["pretrain", "data2vec_text", *TINY_FLAGS, "--max_steps", "12", "--output_dir", str(out)])
    logs = [ast.literal_eval(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{'loss'")]
    losses = [float(row["loss"]) for row in logs]
    momenta = [float(row["teacher/momentum"]) for row in logs]
    assert len(losses) == len(momenta) == 12
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    assert momenta[0] == 0.999 and momenta == sorted(momenta) and momenta[-1] <= 0.9999, momenta
    run = json.loads((out / "hf_ssl_run.json").read_text())
    assert run["objective"] == "data2vec_text" and run["num_examples"] > 100
    model = Data2VecTextForPreTraining.from_pretrained(out)
    assert model.config.encoder.model_type == "data2vec-text"
    assert model.config.encoder.vocab_size == len(AutoTokenizer.from_pretrained(out)) <= 200
    student = dict(model.data2vec_text.named_parameters())
    teacher = dict(model.teacher.data2vec_text.named_parameters())
    assert any(not torch.equal(p, student[k]) for k, p in teacher.items())  # EMA: behind the student, not equal

    # evaluation on a tiny labelled .tsv: the student's pooled features, with the random-init and TF-IDF baselines
    data = tmp_path / "labelled"
    data.mkdir()
    texts = load_default_text("train[:120]")["text"]
    for split, rows in (("train", range(0, 80)), ("dev", range(80, 120))):
        lines = ["text\tlabel"] + [f"{texts[i]}\t{'long' if len(texts[i]) > 80 else 'short'}" for i in rows]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    results_file = out / "eval_results.json"
    main(
        ["evaluate", "--model_name_or_path", str(out), "--dataset_name", str(data), "--split", "validation"]
        + ["--knn_k", "5", "--output_file", str(results_file)]
    )
    results = json.loads(results_file.read_text())
    assert results["modality"] == "text" and results["num_train"] == 80 and results["num_test"] == 40
    assert set(results["baselines"]) == {"random_init", "tfidf"}

    export = tmp_path / "export"
    main(["export", str(out), str(export)])
    assert json.loads((export / "config.json").read_text())["architectures"] == ["Data2VecTextModel"]
    result = subprocess.run(
        [sys.executable, "-c", _FINE_TUNE_EXPORT, str(export), str(tmp_path / "hidden.pt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FINE_TUNED" in result.stdout
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    inputs = tokenizer(["The quick brown fox.", "Lists hold items."], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model.data2vec_text(inputs["input_ids"], inputs["attention_mask"]).last_hidden_state
    torch.testing.assert_close(torch.load(tmp_path / "hidden.pt"), ours)
