"""Training throughput of hf_ssl's MLM against transformers' reference MLM recipe, in one process.

Ours: ``MLMForPreTraining`` (vocabulary projection on the masked rows only) fed by ``MLMCollator`` (masks seeded per
batch, as in ``hf-ssl pretrain mlm``) over blocks from ``hf_ssl.data.text.tokenize_dataset(mode="pack")``. Reference:
``BertForMaskedLM`` (projection on every position) fed by ``DataCollatorForLanguageModeling`` over the blocks of
transformers' ``examples/pytorch/language-modeling/run_mlm.py`` (``group_texts``: lines tokenised with their special
tokens, concatenated, cut into blocks, remainder dropped). Same encoder config and initial weights, same sentences in
the same order, fp32, AdamW, dropout on; the two alternate (the order flips every repeat) so that both see the same
machine load. A step is collate + forward + backward + optimiser step; "real tokens" are the non-padding tokens of
the batch.

Example (from the project root; the data sit in ../shared/data)::

    OMP_NUM_THREADS=1 python scripts/benchmark_mlm.py --num_threads 1 --steps 5 --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling

from hf_ssl.data.text import clean_text_column, load_tokenizer, read_text_lines, tokenize_dataset
from hf_ssl.models.mlm.collator import MLMCollator
from hf_ssl.models.mlm.configuration_mlm import MLMConfig
from hf_ssl.models.mlm.modeling_mlm import MLMForPreTraining

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ENCODER = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "max_position_embeddings": 512,
}


def reference_blocks(ds: Dataset, tokenizer, block_size: int) -> Dataset:
    """run_mlm.py's preprocessing without ``--line_by_line``: tokenise, then ``group_texts``."""

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total_length = (len(concatenated["input_ids"]) // block_size) * block_size  # the remainder is dropped
        return {k: [t[i : i + block_size] for i in range(0, total_length, block_size)] for k, t in concatenated.items()}

    tokenized = ds.map(tokenize_function, batched=True, remove_columns=ds.column_names)
    return tokenized.map(group_texts, batched=True)


def batches(blocks: Dataset, collate, batch_size: int):
    """Endless batches of consecutive blocks (the same stream for both sides), collated on demand."""
    rows = blocks.with_format(None)
    for start in itertools.cycle(range(0, len(rows) - batch_size + 1, batch_size)):
        yield collate([rows[i] for i in range(start, start + batch_size)])


def train_steps(model, optimizer, stream, steps: int) -> tuple[float, int]:
    """Run ``steps`` optimiser steps; returns (seconds, real tokens)."""
    tokens = 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(stream)  # collation is part of the step
        tokens += int(batch["attention_mask"].sum())
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side first")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--max_lines", type=int, default=6000, help="sentences to read (enough for the steps)")
    parser.add_argument("--text", type=Path, default=SHARED_DATA / "text" / "enwiki_sentences.txt")
    parser.add_argument("--tokenizer", type=Path, default=SHARED_DATA / "tokenizers" / "bert-base-uncased")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(0)

    tokenizer = load_tokenizer(args.tokenizer)
    ds, _ = clean_text_column(Dataset.from_dict({"text": read_text_lines(args.text)[: args.max_lines]}), "text")
    ours_blocks = tokenize_dataset(ds, tokenizer, "text", args.block_size, mode="pack")
    ours_blocks = ours_blocks.filter(lambda b: [len(x) == args.block_size for x in b["input_ids"]], batched=True)
    ref_blocks = reference_blocks(ds, tokenizer, args.block_size)

    encoder = {**ENCODER, "vocab_size": len(tokenizer)}
    reference = BertForMaskedLM(BertConfig(**encoder)).train()
    ours = MLMForPreTraining(MLMConfig(encoder={"model_type": "bert", **encoder})).train()
    ours.load_masked_lm(reference)  # the same initial weights
    print(
        f"attention: ours={ours.mlm.encoder.config._attn_implementation} "
        f"reference={reference.config._attn_implementation}; threads={torch.get_num_threads()}; "
        f"batch {args.batch_size} x {args.block_size}; blocks ours={len(ours_blocks)} reference={len(ref_blocks)}"
    )
    # the collator as `hf-ssl pretrain mlm` builds it: masks drawn per batch from a generator seeded by the batch's
    # position in the run (hf_ssl.data.collators.SeededCollator), as a resumed run needs
    ours_collator = MLMCollator.from_config(tokenizer, ours.config)
    ours_collator.set_position(seed=0, rank=0, batches_done=0)
    sides = {
        "hf_ssl": (
            ours,
            batches(ours_blocks, ours_collator, args.batch_size),
        ),
        "reference": (
            reference,
            batches(ref_blocks, DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15), args.batch_size),
        ),
    }
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in sides.items()}
    for name, (model, stream) in sides.items():
        train_steps(model, optimizers[name], stream, args.warmup)

    rates: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
        for name in order:
            model, stream = sides[name]
            seconds, tokens = train_steps(model, optimizers[name], stream, args.steps)
            rates[name].append(tokens / seconds)
        print(f"repeat {repeat}: " + ", ".join(f"{n} {rates[n][-1]:,.0f} tok/s" for n in sides))
    ours_rate, ref_rate = statistics.median(rates["hf_ssl"]), statistics.median(rates["reference"])
    print(
        f"median real tokens/s: hf_ssl {ours_rate:,.0f}, reference {ref_rate:,.0f}; ratio {ours_rate / ref_rate:.2f}x"
    )


if __name__ == "__main__":
    main()
