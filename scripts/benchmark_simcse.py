"""Unsupervised SimCSE, one process: hf_ssl against sentence-transformers' MultipleNegativesRankingLoss.

Both train the same encoder (the same initial weights: an MLM checkpoint given by ``--model_name_or_path``, or a
seeded random BERT of hidden 256, 4 layers) on the same sentences for the same number of steps, with the same
optimiser (AdamW, constant learning rate, no weight decay), batch size, maximum length (32), temperature (0.05, i.e.
MNRL's ``scale`` 20), pooling (mean of the token states: sentence-transformers' default; hf_ssl
``pooler_type=mean``), fp32, dropout on, each through its own trainer:

- hf_ssl: ``hf-ssl pretrain simcse`` (``SSLTrainer``): sentences tokenised once with ``datasets.map``, each batch of
  ``B`` sentences encoded twice (the two dropout masks are the views) as ``2B`` sequences, in ``length_buckets`` (4)
  groups of similar length each padded only to its own longest (``--length_buckets 1``: one pass of the whole
  batch, padded to its longest sentence). The batches, and so the negatives, are the same as the reference's.
- sentence-transformers: ``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` over (sentence,
  sentence) pairs, the recipe of its SimCSE example: tokenised in the collator, anchors and positives encoded in two
  forward passes of ``B`` sequences.

Throughput is sentences per second of training (``train_runtime`` of each trainer; tokenisation before training is
timed and printed apart). Both are then scored on STS-B dev (Spearman x 100 of the cosine similarity, the same
evaluator and the same mean pooling for both). The two alternate, the order flipping every repeat, so they see the
same machine load on average. Repeat ``r`` trains both sides with seed ``--seed + r``: the same batches for both, but
dropout draws that differ between the two (one pass of 2B against two of B), so the Spearmans are compared as a mean
and spread over the repeats. With dropout off the two trainers end at the same weights
(``tests/models/test_simcse.py``).

Example (from the project root; the data sit in ../shared/data)::

    OMP_NUM_THREADS=1 python scripts/benchmark_simcse.py --model_name_or_path runs/mlm-enwiki-wordnet --steps 100 \
        --repeats 6 --num_threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ENCODER = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 512,
}


def sentences(limit: int, seed: int) -> list[str]:
    from hf_ssl.data.text import read_text_lines

    lines = [
        line.strip()
        for name in ("enwiki_sentences.txt", "wordnet_examples.txt")
        for line in read_text_lines(SHARED_DATA / "text" / name)
        if line.strip()
    ]
    order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(seed)).tolist()
    return [lines[i] for i in order[:limit]]


def starting_encoder(args: argparse.Namespace, folder: Path) -> Path:
    """A plain encoder folder (weights + tokenizer, dropout rates set to ``--dropout``) both sides start from."""
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

    from hf_ssl.backbones.transformers import inner_encoder_config
    from hf_ssl.models.simcse.objective import dropout_rates

    if args.model_name_or_path:
        model = AutoModel.from_pretrained(args.model_name_or_path)
        if inner_encoder_config(model.config) is not model.config:
            model = model.encoder  # an hf_ssl MLM run: its encoder
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(SHARED_DATA / "tokenizers" / "bert-base-uncased")
        torch.manual_seed(args.seed)
        model = BertModel(BertConfig(vocab_size=len(tokenizer), **ENCODER), add_pooling_layer=False)
    for name in dropout_rates(model.config):  # dropout is unsupervised SimCSE's noise, on both sides
        setattr(model.config, name, args.dropout)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sts_spearman(model: torch.nn.Module, tokenizer, dev: Dataset) -> float:
    from hf_ssl.evaluation.features import mean_of_tokens, model_encoder
    from hf_ssl.evaluation.sts import encode_sentences, sts_metrics

    model.eval()
    encode = model_encoder(model, mean_of_tokens)
    a, b = (encode_sentences(encode, tokenizer, dev[c], 128, 256) for c in ("sentence1", "sentence2"))
    return 100 * sts_metrics(a, b, dev["score"])["spearman"]


def common_args(args: argparse.Namespace, output_dir: Path, seed: int) -> dict:
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.steps,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "logging_steps": max(1, args.steps // 5),
        "save_strategy": "no",
        "seed": seed,
        "dataloader_drop_last": True,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": not torch.cuda.is_available(),
    }


def run_hf_ssl(
    args, start: Path, texts: list[str], dev: Dataset, work: Path, seed: int, group_by_length: bool = False
) -> dict:
    from transformers import AutoModel

    from hf_ssl.models.simcse.objective import SIMCSE, SimCSEDataArguments
    from hf_ssl.objectives import RunContext
    from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

    started = time.perf_counter()
    overrides = {"pooler_type": "mean", "loss_temperature": args.temperature, "gather_distributed": False}
    config = SIMCSE.make_config({**overrides, "length_buckets": args.length_buckets}, str(start))
    data = SimCSEDataArguments(max_seq_length=args.max_seq_length)
    prepared = SIMCSE.prepare_data(Dataset.from_dict({"text": texts}), config, data, RunContext(str(start)))
    preprocessing = time.perf_counter() - started
    torch.manual_seed(seed)
    model = SIMCSE.make_model(config, str(start))
    strategy = "group_by_length" if group_by_length else "random"
    trainer = SSLTrainer(
        model=model,
        args=SSLTrainingArguments(**common_args(args, work / "hf_ssl", seed), train_sampling_strategy=strategy),
        train_dataset=prepared.dataset,
        data_collator=prepared.collator,
        processing_class=prepared.processing_class,
    )
    metrics = trainer.train().metrics
    trainer.save_model()
    encoder = AutoModel.from_pretrained(work / "hf_ssl").encoder  # SimCSEModel's encoder
    return {
        "train_runtime": metrics["train_runtime"],
        "preprocessing_s": preprocessing,
        "spearman": sts_spearman(encoder, prepared.processing_class, dev),
        "loss": metrics["train_loss"],
    }


def run_sentence_transformers(args, start: Path, texts: list[str], dev: Dataset, work: Path, seed: int) -> dict:
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
        models,
    )

    started = time.perf_counter()
    transformer = models.Transformer(str(start), max_seq_length=args.max_seq_length)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    torch.manual_seed(seed)
    model = SentenceTransformer(modules=[transformer, pooling], device="cuda" if torch.cuda.is_available() else "cpu")
    pairs = Dataset.from_dict({"anchor": texts, "positive": texts})
    preprocessing = time.perf_counter() - started
    trainer = SentenceTransformerTrainer(
        model=model,
        args=SentenceTransformerTrainingArguments(**common_args(args, work / "st", seed)),
        train_dataset=pairs,
        loss=losses.MultipleNegativesRankingLoss(model, scale=1.0 / args.temperature),
    )
    metrics = trainer.train().metrics
    return {
        "train_runtime": metrics["train_runtime"],
        "preprocessing_s": preprocessing,
        "spearman": sts_spearman(model[0].auto_model, model.tokenizer, dev),
        "loss": metrics["train_loss"],
    }


def spread(values: list[float]) -> str:
    """``mean +- standard deviation (n runs)``; the deviation needs two runs."""
    deviation = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{deviation} ({len(values)} run{'s' if len(values) > 1 else ''})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", help="Starting encoder (an MLM run); default a random small BERT.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_seq_length", type=int, default=32)
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=5e-4,
        help="Constant; 5e-4 as in scripts/configs/simcse_unsup.yaml (at 5e-5 both sides lower STS-B in 100 steps).",
    )
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument(
        "--dropout", type=float, default=0.1, help="The encoder's dropout rates (the noise; 0.1 as in the paper)."
    )
    parser.add_argument(
        "--length_buckets",
        type=int,
        default=4,
        help="hf_ssl's length_buckets: encode each batch in this many groups of similar length (1: one padded pass)",
    )
    parser.add_argument(
        "--group_by_length",
        action="store_true",
        help="Also run hf_ssl with batches of sentences of similar length (--train_sampling_strategy "
        "group_by_length: less padding, other negatives in each batch); sentence-transformers has no such sampler.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Runs of each side, alternating which goes first; repeat r trains with seed --seed + r (other dropout "
        "draws and batch order, the same sentences).",
    )
    parser.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--seed", type=int, default=0, help="Picks the sentences, and seeds the first repeat.")
    parser.add_argument("--output_file", help="Write the measurements here as JSON.")
    args = parser.parse_args()
    for flag in ("steps", "batch_size", "repeats", "length_buckets"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    import hf_ssl  # noqa: F401  (registers the objectives)
    from hf_ssl.evaluation.sts import load_sts

    texts = sentences(args.steps * args.batch_size, args.seed)
    dev = load_sts(str(SHARED_DATA / "text" / "stsb"), "dev")
    sides = {"hf_ssl": run_hf_ssl, "sentence_transformers": run_sentence_transformers}
    if args.group_by_length:
        sides["hf_ssl_group_by_length"] = lambda *a: run_hf_ssl(*a, group_by_length=True)
    results: dict[str, list[dict]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = starting_encoder(args, work / "start")
        print(f"start: {args.model_name_or_path or 'random BERT'}; starting encoder STS-B dev Spearman: ", end="")
        from transformers import AutoModel, AutoTokenizer

        print(f"{sts_spearman(AutoModel.from_pretrained(start), AutoTokenizer.from_pretrained(start), dev):.1f}")
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))  # same average load for each
            for name in order:
                result = sides[name](args, start, texts, dev, work / f"{name}-{repeat}", args.seed + repeat)
                result["sentences_per_s"] = args.steps * args.batch_size / result["train_runtime"]
                results[name].append(result)
                print(
                    f"repeat {repeat} {name:24s} {result['sentences_per_s']:8.1f} sentences/s  "
                    f"STS-B dev Spearman {result['spearman']:.1f}  (tokenisation before training "
                    f"{result['preprocessing_s']:.1f} s, mean loss {result['loss']:.3f})",
                    flush=True,
                )
    speed = {name: statistics.median(r["sentences_per_s"] for r in runs) for name, runs in results.items()}
    print(
        f"\n{args.repeats} run(s) each (speed: median; STS-B dev Spearman: mean +- standard deviation over the seeds): "
        f"{args.steps} steps of {args.batch_size} sentences, "
        f"max length {args.max_seq_length}, fp32, "
        f"{torch.get_num_threads()} thread(s), {'CUDA' if torch.cuda.is_available() else 'CPU'}"
    )
    for name, runs in results.items():
        print(f"{name:24s} {speed[name]:8.1f} sentences/s   STS-B dev Spearman {spread([r['spearman'] for r in runs])}")
    for name in (n for n in sides if n != "sentence_transformers"):
        print(f"speed ratio {name} / sentence_transformers: {speed[name] / speed['sentence_transformers']:.2f}x")
        pairs = zip(results[name], results["sentence_transformers"], strict=True)
        gaps = [ours["spearman"] - theirs["spearman"] for ours, theirs in pairs]
        print(f"Spearman {name} - sentence_transformers, the same seed: {spread(gaps)}")
    if args.output_file:
        Path(args.output_file).write_text(json.dumps({"args": vars(args), "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
