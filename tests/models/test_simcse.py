"""SimCSE: config, the doubled batch in one forward, poolings, the InfoNCE loss against the authors' formula (hard
negatives), alignment / uniformity, starting from an MLM checkpoint, supervised pairs from scored data, STS evaluation
during training with the best checkpoint kept, and the sentence-transformers export (same vectors, without hf_ssl)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from common import ObjectiveChecks
from datasets import Dataset
from tiny_text import STS_PAIRS, TINY_BERT, VOCAB, tokenizer
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, RobertaConfig

from hf_ssl.data.text import load_default_text
from hf_ssl.errors import UsageError
from hf_ssl.health import alignment, uniformity
from hf_ssl.models.mlm.configuration_mlm import MLMConfig
from hf_ssl.models.mlm.modeling_mlm import MLMForPreTraining
from hf_ssl.models.simcse.collator import SimCSECollator
from hf_ssl.models.simcse.configuration_simcse import SimCSEConfig
from hf_ssl.models.simcse.loss import info_nce_loss
from hf_ssl.models.simcse.modeling_simcse import SimCSEForPreTraining, SimCSEModel
from hf_ssl.models.simcse.objective import SIMCSE, SimCSEDataArguments
from hf_ssl.objectives import RunContext

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
STSB = SHARED_DATA / "text" / "stsb"
SENTENCES = [
    "The cat sat on the mat.",
    "A dog runs in the park.",
    "Python is a programming language.",
    "The weather is nice today.",
    "She reads a book in the garden.",
    "Numbers can be added and multiplied.",
]


def tiny_config(**overrides) -> SimCSEConfig:
    return SimCSEConfig(encoder=dict(TINY_BERT), **overrides)


def sentence_batch(sentences=SENTENCES) -> dict[str, torch.Tensor]:
    return dict(tokenizer()(list(sentences), padding=True, return_tensors="pt"))


def write_sts_tsv(path: Path, pairs: list[tuple[float, str, str]]) -> Path:
    """A headerless file in the STS Benchmark's layout, one line with extra trailing columns."""
    lines = [
        f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score:.3f}\t{a}\t{b}" for i, (score, a, b) in enumerate(pairs)
    ]
    lines[0] += "\textra\tcolumns"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


class TestSimCSEObjective(ObjectiveChecks):
    objective = SIMCSE
    learning_rate = 1e-3

    def tiny_config(self):
        return tiny_config()

    def pretrain_flags(self):
        encoder = {key: value for key, value in TINY_BERT.items() if key != "vocab_size"}
        return ["--encoder", json.dumps(encoder), "--vocab_size", "200", "--max_seq_length", "32",
                "--per_device_train_batch_size", "8"]  # fmt: skip

    def batch(self, config):
        return sentence_batch()

    def test_export_loads_without_hf_ssl(self, tmp_path):
        """Overridden: a sentence encoder's export needs the tokenizer saved with the checkpoint (see
        test_sentence_transformers_export_gives_the_same_vectors_without_hf_ssl for the full check)."""
        from hf_ssl.export import export_backbone

        self._model(self.tiny_config()).save_pretrained(tmp_path / "ckpt")
        with pytest.raises(UsageError, match="no tokenizer"):
            export_backbone(tmp_path / "ckpt", tmp_path / "export")


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def test_config_defaults_round_trip_and_other_families(tmp_path):
    default = SimCSEConfig()
    assert isinstance(default.encoder, BertConfig) and default.encoder.hidden_size == 256
    assert (default.pooler_type, default.loss_temperature, default.hard_negative_weight) == ("cls", 0.05, 1.0)
    roberta = {**TINY_BERT, "model_type": "roberta", "max_position_embeddings": 80, "pad_token_id": 0}
    config = SimCSEConfig(encoder=roberta, pooler_type="mean", loss_temperature=0.1)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["encoder"]["model_type"] == "roberta"
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, SimCSEConfig) and isinstance(again.encoder, RobertaConfig)
    assert (again.pooler_type, again.loss_temperature) == ("mean", 0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pooler_type": "max"}, "pooler_type must be one of"),
        ({"loss_temperature": 0.0}, "loss_temperature must be > 0"),
        ({"hard_negative_weight": -1.0}, "hard_negative_weight must be >= 0"),
        ({"gather_distributed": "yes"}, "gather_distributed must be one of"),
        ({"length_buckets": 0}, "length_buckets must be an integer >= 1, got 0"),
        ({"length_buckets": 2.5}, "length_buckets must be an integer"),
        ({"encoder": 3}, "encoder must be a config dict"),
        ({"encoder": {"model_type": "bert", "is_decoder": True}}, "encoder.is_decoder must be False"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(UsageError, match=message):
        SimCSEConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Loss: the authors' formula, hard negatives, alignment and uniformity
# ---------------------------------------------------------------------------------------------------------------------


def simcse_reference_loss(z1, z2, z3=None, temp=0.05, hard_negative_weight_logit=0.0):
    """princeton-nlp/SimCSE models.py cl_forward: cos_sim / temp, hard negatives' block appended, the own hard
    negative's logit raised by ``hard_negative_weight`` (= log alpha), cross entropy with labels arange(N)."""
    cos_sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / temp
    if z3 is not None:
        z1_z3_cos = F.cosine_similarity(z1.unsqueeze(1), z3.unsqueeze(0), dim=-1) / temp
        cos_sim = torch.cat([cos_sim, z1_z3_cos], 1)
        n = z1_z3_cos.size(-1)
        weights = torch.tensor(
            [
                [0.0] * (cos_sim.size(-1) - n) + [0.0] * i + [hard_negative_weight_logit] + [0.0] * (n - i - 1)
                for i in range(n)
            ]
        )
        cos_sim = cos_sim + weights
    return F.cross_entropy(cos_sim, torch.arange(cos_sim.size(0)))


def test_info_nce_equals_the_authors_formula_with_and_without_hard_negatives():
    z1, z2, z3 = (torch.randn(5, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(
        info_nce_loss(z1, z2, temperature=0.05).double(), simcse_reference_loss(z1, z2), rtol=1e-5, atol=1e-5
    )
    for alpha in (1.0, 0.5, 3.0):
        ours = info_nce_loss(z1, z2, z3, temperature=0.05, hard_negative_weight=alpha).double()
        torch.testing.assert_close(ours, simcse_reference_loss(z1, z2, z3, 0.05, math.log(alpha)), rtol=1e-5, atol=1e-5)


def test_a_hard_negative_changes_the_loss_as_the_formula_says():
    """Gao et al. (2021) eq. 5, written out term by term: alpha multiplies only the anchor's own hard negative."""
    z1, z2, z3 = (F.normalize(torch.randn(4, 6, dtype=torch.float64), dim=1) for _ in range(3))
    tau = 0.1
    without = info_nce_loss(z1, z2, temperature=tau).double()
    for alpha in (1.0, 2.0, 0.0):
        expected = 0.0
        for i in range(4):
            positive = math.exp(float(z1[i] @ z2[i]) / tau)
            denominator = sum(
                math.exp(float(z1[i] @ z2[j]) / tau) + (alpha if i == j else 1.0) * math.exp(float(z1[i] @ z3[j]) / tau)
                for j in range(4)
            )
            expected += -math.log(positive / denominator) / 4
        ours = info_nce_loss(z1, z2, z3, temperature=tau, hard_negative_weight=alpha).double()
        assert ours.item() == pytest.approx(expected, rel=1e-6)
        assert ours.item() > without.item()  # extra negatives in every denominator can only raise the loss


def test_info_nce_is_multiple_negatives_ranking_loss_with_scale_one_over_tau():
    """sentence-transformers' MultipleNegativesRankingLoss: cos_sim(anchors, positives) * scale, cross entropy."""
    from sentence_transformers.util import cos_sim

    a, p = torch.randn(6, 16), torch.randn(6, 16)
    reference = F.cross_entropy(cos_sim(a, p) * 20.0, torch.arange(6))
    torch.testing.assert_close(info_nce_loss(a, p, temperature=0.05), reference, rtol=1e-5, atol=1e-5)


def test_alignment_and_uniformity_closed_forms():
    x = F.normalize(torch.randn(5, 4), dim=1)
    assert alignment(x, x).item() == pytest.approx(0.0, abs=1e-7)
    assert alignment(x, -x).item() == pytest.approx(4.0, rel=1e-6)  # ||x - (-x)||^2 = 4 on the unit sphere
    antipodal = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert uniformity(antipodal).item() == pytest.approx(-8.0, rel=1e-6)  # log exp(-2 * 4)
    assert uniformity(torch.ones(3, 2)).item() == pytest.approx(0.0, abs=1e-7)  # collapse


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def test_unsupervised_encodes_the_doubled_batch_in_one_forward_and_dropout_is_the_only_noise():
    torch.manual_seed(0)
    model = SimCSEForPreTraining(tiny_config(length_buckets=1))
    calls = []
    model.simcse.encoder.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
    batch = sentence_batch()
    out = model.train()(**batch)
    assert len(calls) == 1 and calls[0]["input_ids"].shape[0] == 2 * len(SENTENCES)
    assert out.embeddings.shape == (len(SENTENCES), 2, 32)
    assert not torch.allclose(out.embeddings[:, 0], out.embeddings[:, 1])  # two dropout masks
    with torch.no_grad():
        still = model.eval()(**batch)
    torch.testing.assert_close(still.embeddings[:, 0], still.embeddings[:, 1])  # no dropout: the same vector
    assert set(out.keys()) == {"loss", "embeddings"}  # alignment and uniformity are health's (health/alignment)


@pytest.mark.parametrize("pooler_type", ["cls", "mean"])
def test_length_buckets_skip_padding_and_give_the_one_pass_loss_and_gradients(pooler_type):
    sentences = [*SENTENCES, "Short.", "A much longer sentence than the others, with many more words in it than any."]
    batch = sentence_batch(sentences)
    torch.manual_seed(0)
    one_pass = SimCSEForPreTraining(tiny_config(pooler_type=pooler_type, length_buckets=1)).eval()
    bucketed = SimCSEForPreTraining(tiny_config(pooler_type=pooler_type, length_buckets=3)).eval()
    bucketed.load_state_dict(one_pass.state_dict())
    widths = []
    bucketed.simcse.encoder.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    outputs = {}
    for name, model in (("one_pass", one_pass), ("bucketed", bucketed)):
        out = model(**batch)
        out.loss.backward()
        outputs[name] = (out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    (out_a, grads_a), (out_b, grads_b) = outputs.values()
    torch.testing.assert_close(out_b.embeddings, out_a.embeddings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_b.loss, out_a.loss, atol=1e-5, rtol=1e-5)
    assert grads_b.keys() == grads_a.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], atol=1e-5, rtol=1e-4)
    # 2 x 8 sequences in 3 groups (6, 5, 5 rows), longest first; each trimmed to its own longest sequence
    lengths = sorted(batch["attention_mask"].sum(1).tolist() * 2, reverse=True)
    assert widths == [(6, lengths[0]), (5, lengths[6]), (5, lengths[11])]
    assert lengths[11] < lengths[0] == batch["input_ids"].shape[1]
    # left padding: one pass, as before
    widths.clear()
    flipped = {k: v.flip(1) for k, v in batch.items()}
    bucketed(**flipped)
    assert widths == [(2 * len(sentences), batch["input_ids"].shape[1])]


@pytest.mark.parametrize("pooler_type", ["cls", "cls_before_pooler", "mean"])
def test_pooling_and_the_training_only_mlp(pooler_type):
    torch.manual_seed(0)
    model = SimCSEForPreTraining(tiny_config(pooler_type=pooler_type)).eval()
    batch = sentence_batch()
    with torch.no_grad():
        sentence = model.simcse(**batch)
        hidden, mask = sentence.last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
        expected = hidden[:, 0] if pooler_type != "mean" else (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(sentence.pooler_output, expected)
        z = model.mlp(sentence.pooler_output) if pooler_type == "cls" else sentence.pooler_output
        torch.testing.assert_close(model(**batch).loss, info_nce_loss(z, z, temperature=0.05))
    assert (model.mlp is not None) == (pooler_type == "cls")


def test_supervised_triplets_loss_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = SimCSEForPreTraining(tiny_config(hard_negative_weight=2.0))
    collate = SimCSECollator(tokenizer().pad_token_id)
    rows = [
        {"input_ids": [tokenizer()(s)["input_ids"] for s in (SENTENCES[i], SENTENCES[i - 1], SENTENCES[i - 2])]}
        for i in range(4)
    ]
    batch = collate(rows)
    assert batch["input_ids"].shape[:2] == (4, 3)
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss
        views = [
            model.mlp(model.simcse(batch["input_ids"][:, s], batch["attention_mask"][:, s]).pooler_output)
            for s in range(3)
        ]
    torch.testing.assert_close(loss, info_nce_loss(*views, temperature=0.05, hard_negative_weight=2.0))
    model.train()
    model(**batch).loss.backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None and "pooler" not in name]
    assert not no_grad, no_grad


def test_batches_too_small_or_misshapen_are_refused():
    model = SimCSEForPreTraining(tiny_config()).train()
    with pytest.raises(ValueError, match="at least 2 examples"):
        model(input_ids=torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="S in"):
        model(input_ids=torch.ones(2, 4, 5, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------------
# Starting points, data
# ---------------------------------------------------------------------------------------------------------------------


def test_starts_from_an_mlm_checkpoint_and_from_a_plain_encoder_folder(tmp_path):
    torch.manual_seed(0)
    mlm = MLMForPreTraining(MLMConfig(encoder=dict(TINY_BERT)))
    mlm.save_pretrained(tmp_path / "mlm")
    tokenizer().save_pretrained(tmp_path / "mlm")
    config = SIMCSE.make_config({"pooler_type": "mean"}, str(tmp_path / "mlm"))
    assert isinstance(config, SimCSEConfig) and config.encoder.hidden_size == 32
    assert config.starting_encoder == str((tmp_path / "mlm").resolve())
    model = SIMCSE.make_model(config, str(tmp_path / "mlm"))
    for name, value in mlm.mlm.encoder.state_dict().items():
        torch.testing.assert_close(model.simcse.encoder.state_dict()[name], value, msg=name)

    plain = BertModel(BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"}))
    plain.save_pretrained(tmp_path / "bert")
    model = SIMCSE.make_model(SIMCSE.make_config({}, str(tmp_path / "bert")), str(tmp_path / "bert"))
    torch.testing.assert_close(
        model.simcse.encoder.embeddings.word_embeddings.weight, plain.embeddings.word_embeddings.weight
    )
    with pytest.raises(UsageError, match="cannot read its config"):
        SIMCSE.make_config({}, str(tmp_path / "missing"))


def test_unsupervised_refuses_an_encoder_without_dropout_and_says_how_to_add_it(tmp_path):
    # an MLM pretrained without dropout: as a SimCSE start, its two views of a sentence would be the same vector
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0}
    mlm = MLMForPreTraining(MLMConfig(encoder={**TINY_BERT, **no_dropout}))
    mlm.save_pretrained(tmp_path / "mlm")
    tokenizer().save_pretrained(tmp_path / "mlm")
    rows = load_default_text("train").select(range(32))
    args = SimCSEDataArguments(max_seq_length=32)
    run = RunContext(model_name_or_path=str(tmp_path / "mlm"))
    config = SIMCSE.make_config({}, run.model_name_or_path)
    with pytest.raises(UsageError, match="only noise.*hidden_dropout_prob=0.0.*--encoder") as refused:
        SIMCSE.prepare_data(rows, config, args, run)
    fix = json.loads(str(refused.value).split("--encoder '")[1].split("'")[0])
    assert fix == {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    config = SIMCSE.make_config({"encoder": fix}, run.model_name_or_path)  # what the message says to pass
    prepared = SIMCSE.prepare_data(rows, config, args, run)
    model = SIMCSE.make_model(config, str(tmp_path / "mlm")).train()
    out = model(**prepared.collator([prepared.dataset[i] for i in range(8)]))
    assert alignment(out.embeddings[:, 0].detach(), out.embeddings[:, 1].detach()) > 1e-6  # the dropout views differ


def test_supervised_pairs_from_scored_data_keep_the_positives():
    rows = Dataset.from_dict(
        {
            "sentence1": [a for _, a, _ in STS_PAIRS],
            "sentence2": [b for _, _, b in STS_PAIRS],
            "score": [s for s, _, _ in STS_PAIRS],
        }
    )
    config = tiny_config()
    args = SimCSEDataArguments(min_positive_score=4.0, tokenizer_name=None, train_tokenizer=True, vocab_size=120)
    prepared = SIMCSE.prepare_data(rows, config, args)
    assert len(prepared.dataset) == sum(score >= 4.0 for score, _, _ in STS_PAIRS) == 3
    batch = prepared.collator([prepared.dataset[i] for i in range(3)])
    assert batch["input_ids"].shape[:2] == (3, 2)
    assert prepared.columns == {"sentence": "sentence1", "positive": "sentence2"}
    with pytest.raises(UsageError, match="not found"):
        SIMCSE.prepare_data(
            rows, config, SimCSEDataArguments(text_column="sentence1", positive_column="nope", train_tokenizer=True)
        )


def test_pairs_from_stsb_train_scored_4_or_more():
    if not (STSB / "train.tsv").exists():
        pytest.skip(f"real data not available: {STSB} is absent (see ../shared/data/README.md)")
    from hf_ssl.evaluation.sts import load_sts

    train = load_sts(str(STSB), "train")
    expected = sum(1 for line in (STSB / "train.tsv").read_text().splitlines() if float(line.split("\t")[4]) >= 4)
    args = SimCSEDataArguments(
        min_positive_score=4.0, tokenizer_name=str(SHARED_DATA / "tokenizers" / "bert-base-uncased")
    )
    prepared = SIMCSE.prepare_data(train, SimCSEConfig(encoder={**TINY_BERT, "vocab_size": 30522}), args)
    assert len(prepared.dataset) == expected > 1000


# ---------------------------------------------------------------------------------------------------------------------
# STS during training: the Trainer's evaluation hooks keep the best checkpoint
# ---------------------------------------------------------------------------------------------------------------------


def test_sts_evaluation_during_training_keeps_the_best_checkpoint(tmp_path):
    from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

    sts_file = write_sts_tsv(tmp_path / "sts" / "dev.tsv", STS_PAIRS)
    args = SimCSEDataArguments(train_tokenizer=True, vocab_size=VOCAB, sts_eval_dataset=str(sts_file.parent))
    config = tiny_config()
    prepared = SIMCSE.prepare_data(load_default_text("train").select(range(64)), config, args)
    assert len(prepared.eval_dataset) == len(STS_PAIRS)
    torch.manual_seed(0)
    training = SSLTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=4,  # 8 pairs in 2 full batches (the shared dataloader_drop_last drops a partial one)
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        metric_for_best_model="sts_spearman",
        load_best_model_at_end=True,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SSLTrainer(
        model=SimCSEForPreTraining(config),
        args=training,
        train_dataset=prepared.dataset,
        eval_dataset=prepared.eval_dataset,
        data_collator=prepared.collator,
        compute_metrics=prepared.compute_metrics,
        processing_class=prepared.processing_class,
    )
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_sts_spearman" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4]
    best = max(evaluations, key=lambda entry: entry["eval_sts_spearman"])
    assert trainer.state.best_metric == pytest.approx(best["eval_sts_spearman"])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    assert -1.0 <= best["eval_sts_pearson"] <= 1.0 and best["eval_sts_num_pairs"] == len(STS_PAIRS)


# ---------------------------------------------------------------------------------------------------------------------
# Export: a sentence-transformers folder with our vectors, loaded without hf_ssl
# ---------------------------------------------------------------------------------------------------------------------

_ENCODE_WITHOUT_HF_SSL = textwrap.dedent(
    """
    import json, sys
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    sentences = json.loads(sys.argv[1])
    results = {}
    for folder in sys.argv[3:]:
        model = SentenceTransformer(folder, device="cpu")
        embeddings = model.encode(sentences, convert_to_tensor=True, batch_size=3)
        plain = AutoModel.from_pretrained(folder)
        results[folder] = {"embeddings": embeddings, "max_seq_length": model.max_seq_length,
                           "plain": type(plain).__name__}
    leaked = sorted(name for name in sys.modules if name == "hf_ssl" or name.startswith("hf_ssl."))
    assert not leaked, leaked
    torch.save(results, sys.argv[2])
    """
)


def test_training_follows_sentence_transformers_mnrl_step_for_step_when_dropout_is_off(tmp_path):
    """Parity with sentence-transformers, the part that need not be statistical: with dropout switched off (its draws
    are the only thing the two may differ in), hf_ssl's trainer and sentence-transformers' (MultipleNegativesRankingLoss
    over (sentence, sentence) pairs, scale 1 / tau) see the same batches, take the same steps and end at the same
    weights.
    hf_ssl encodes the doubled batch in length buckets, sentence-transformers anchors and positives apart."""
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
        models,
    )

    from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

    start = tmp_path / "start"
    torch.manual_seed(0)
    BertModel(BertConfig(**TINY_BERT), add_pooling_layer=False).save_pretrained(start)
    tokenizer().save_pretrained(start)
    texts = [line for line in load_default_text("train")["text"] if line.strip()][:24]

    def args(name: str) -> dict:
        return {
            "output_dir": str(tmp_path / name),
            "per_device_train_batch_size": 8,
            "max_steps": 3,
            "learning_rate": 1e-3,
            "lr_scheduler_type": "constant",
            "weight_decay": 0.0,
            "save_strategy": "no",
            "seed": 3,
            "report_to": "none",
            "use_cpu": True,
            "disable_tqdm": True,
        }

    def no_dropout(module: torch.nn.Module) -> None:
        for child in module.modules():
            if isinstance(child, torch.nn.Dropout):
                child.p = 0.0

    config = SIMCSE.make_config({"pooler_type": "mean", "length_buckets": 3}, str(start))
    data_args = SimCSEDataArguments(max_seq_length=16)
    prepared = SIMCSE.prepare_data(Dataset.from_dict({"text": texts}), config, data_args, RunContext(str(start)))
    ours = SIMCSE.make_model(config, str(start))
    no_dropout(ours)
    SSLTrainer(
        model=ours,
        args=SSLTrainingArguments(**args("hf_ssl")),
        train_dataset=prepared.dataset,
        data_collator=prepared.collator,
    ).train()

    transformer = models.Transformer(str(start), max_seq_length=16)
    reference = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean")], device="cpu")
    no_dropout(reference)
    SentenceTransformerTrainer(
        model=reference,
        args=SentenceTransformerTrainingArguments(**args("st")),
        train_dataset=Dataset.from_dict({"anchor": texts, "positive": texts}),
        loss=losses.MultipleNegativesRankingLoss(reference, scale=1.0 / config.loss_temperature),
    ).train()

    theirs, initial = transformer.auto_model.state_dict(), BertModel.from_pretrained(start).state_dict()
    moved = 0
    for name, weight in ours.simcse.encoder.state_dict().items():
        torch.testing.assert_close(weight, theirs[name], rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(weight, initial[name])
    assert moved > 10  # the three steps did train


@pytest.mark.slow
def test_sentence_transformers_export_gives_the_same_vectors_without_hf_ssl(tmp_path):
    """SentenceTransformer(export) encodes SimCSEModel's vectors (to 1e-5), in a fresh
    interpreter that never imports hf_ssl; the folder is also a plain AutoModel folder."""
    from hf_ssl.export import export_backbone

    sentences = [*SENTENCES, "a much longer sentence " * 12]  # longer than max_seq_length: truncated alike
    tok = tokenizer()
    tok.model_max_length = 16
    exports = {}
    for pooler_type in ("cls", "mean"):
        torch.manual_seed(0)
        model = SimCSEForPreTraining(tiny_config(pooler_type=pooler_type))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        checkpoint, out = tmp_path / f"ckpt-{pooler_type}", tmp_path / f"export-{pooler_type}"
        model.save_pretrained(checkpoint)
        tok.save_pretrained(checkpoint)
        export_backbone(checkpoint, out)
        assert (out / "modules.json").is_file() and (out / "README.md").is_file()
        exports[pooler_type] = (model.eval(), checkpoint, out)
    run = subprocess.run(
        [sys.executable, "-c", _ENCODE_WITHOUT_HF_SSL, json.dumps(sentences), str(tmp_path / "e.pt")]
        + [str(out) for _, _, out in exports.values()],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = torch.load(tmp_path / "e.pt")
    limit = model.config.encoder.max_position_embeddings  # the export reads what the encoder can, not the crop
    inputs = tok(sentences, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    for pooler_type, (model, checkpoint, out) in exports.items():
        theirs = results[str(out)]
        assert theirs["max_seq_length"] == limit and theirs["plain"] == "BertModel"
        sentence_model = AutoModel.from_pretrained(checkpoint).eval()
        assert isinstance(sentence_model, SimCSEModel)
        with torch.no_grad():
            ours = sentence_model(**inputs).pooler_output
        torch.testing.assert_close(theirs["embeddings"], ours, rtol=0, atol=1e-5)
        if pooler_type == "cls":  # the MLP became BERT's pooler: AutoModel loads every weight, pooler_output = MLP
            plain, info = AutoModel.from_pretrained(out, output_loading_info=True)
            assert not info["missing_keys"]
            with torch.no_grad():
                torch.testing.assert_close(plain(**inputs).pooler_output, model.mlp(ours), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_resume_uses_the_tokenizer_saved_in_the_checkpoint(tmp_path, monkeypatch):
    """--resume_from_checkpoint true with the default tokenizer (trained on the text): the resumed run loads the one
    saved in the checkpoint and trains none, so the checkpoint's embeddings fit its vocabulary."""
    from transformers import AutoTokenizer

    import hf_ssl.data.text
    from hf_ssl.cli import main

    encoder = {key: value for key, value in TINY_BERT.items() if key != "vocab_size"}
    out = tmp_path / "run"
    run = ["pretrain", "simcse", "--encoder", json.dumps(encoder), "--max_seq_length", "32"]
    run += ["--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true"]
    run += ["--save_strategy", "steps", "--save_steps", "1", "--output_dir", str(out)]
    main([*run, "--max_steps", "1"])
    saved = AutoTokenizer.from_pretrained(out / "checkpoint-1")

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run trained a new tokenizer")

    monkeypatch.setattr(hf_ssl.data.text, "train_tokenizer", no_training)
    main([*run, "--max_steps", "2", "--resume_from_checkpoint", "true"])
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    resumed = AutoTokenizer.from_pretrained(out)
    assert resumed.get_vocab() == saved.get_vocab() and resumed.model_max_length == 32
    assert SimCSEConfig.from_pretrained(out).encoder.vocab_size == len(saved)
