"""Benchmark: hf_ssl's wav2vec 2.0 pretraining step vs transformers' ``Wav2Vec2ForPreTraining``, one process.

Both train the same architecture (conv 128 x 7 with the standard kernels and strides, hidden 256, 4 layers, 4 heads,
intermediate 1024, 2 x 160 codevectors, mask_time_prob 0.65, mask_time_length 10, 100 negatives) on the same
1-second 16 kHz batches (FSDD 8 kHz recordings resampled and cut into 1-second windows; random noise when
../shared/data is absent), batch 8, fp32, AdamW. transformers' model is fed masks and negatives made on the CPU with
``_compute_mask_indices`` and ``_sample_negative_indices``, as its example script
``run_wav2vec2_pretraining_no_trainer.py`` does (in its collator); hf_ssl draws them in the model, on the device.
Timed: everything from the batch of waveforms to the optimiser step, masks included. The two alternate, ``--repeats``
times ``--steps`` steps each after a warm-up; the median samples/s of each and their ratio are printed.

    OMP_NUM_THREADS=1 python scripts/benchmark_wav2vec.py --num_threads 1 --steps 5 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining

FSDD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "audio" / "fsdd" / "train.parquet"
RATE = 16000

BACKBONE = dict(
    conv_dim=[128] * 7,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=1024,
)
OBJECTIVE = dict(
    num_codevector_groups=2,
    num_codevectors_per_group=160,
    codevector_dim=256,
    proj_codevector_dim=256,
    mask_time_prob=0.65,
    mask_time_length=10,
    mask_time_min_masks=2,
    num_negatives=100,
    contrastive_logits_temperature=0.1,
    diversity_loss_weight=0.1,
)


def load_batches(batch_size: int, count: int, seed: int = 0) -> tuple[list[torch.Tensor], str]:
    """``count`` batches of ``batch_size`` normalised 1-second 16 kHz windows."""
    rng = np.random.default_rng(seed)
    need = batch_size * count
    if FSDD.exists():
        import soundfile
        from datasets import Audio, load_dataset

        from hf_ssl.data.audio import resample

        ds = load_dataset("parquet", data_files={"train": str(FSDD)}, split="train")
        ds = ds.cast_column("audio", Audio(decode=False))
        stream, total, i = [], 0, 0
        while total < need * RATE:
            wave, rate = soundfile.read(io.BytesIO(ds[i]["audio"]["bytes"]), dtype="float32")
            wave = resample(wave, rate, RATE)
            stream.append(wave)
            total += len(wave)
            i += 1
        windows = np.concatenate(stream)[: need * RATE].reshape(need, RATE)
        source = f"FSDD ({i} clips resampled 8 -> 16 kHz, cut into 1-second windows)"
    else:
        windows = rng.standard_normal((need, RATE)).astype(np.float32)
        source = "random noise (../shared/data absent)"
    windows = (windows - windows.mean(1, keepdims=True)) / np.sqrt(windows.var(1, keepdims=True) + 1e-7)
    tensors = torch.from_numpy(windows.astype(np.float32)).split(batch_size)
    return list(tensors), source


class Ours:
    name = "hf_ssl"

    def __init__(self):
        self.model = Wav2VecForPreTraining(Wav2VecConfig(backbone=BACKBONE, feature_penalty_weight=0.0, **OBJECTIVE))
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def step(self, input_values: torch.Tensor) -> float:
        loss = self.model(input_values).loss  # masks and negatives drawn in the model, with torch
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


class Reference:
    name = "transformers"

    def __init__(self):
        self.model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**BACKBONE, **OBJECTIVE))
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def step(self, input_values: torch.Tensor) -> float:
        # as run_wav2vec2_pretraining_no_trainer.py's DataCollatorForWav2Vec2Pretraining: numpy on the CPU per batch
        batch_size, samples = input_values.shape
        frames = int(self.model._get_feat_extract_output_lengths(samples))
        mask = _compute_mask_indices(
            (batch_size, frames), OBJECTIVE["mask_time_prob"], OBJECTIVE["mask_time_length"], min_masks=2
        )
        negatives = _sample_negative_indices((batch_size, frames), OBJECTIVE["num_negatives"], mask)
        mask = torch.tensor(mask, dtype=torch.long)
        negatives = torch.tensor(negatives, dtype=torch.long)
        out = self.model(input_values, mask_time_indices=mask, sampled_negative_indices=negatives)
        loss = out.loss / mask.sum()  # the example script's normalisation by the number of masked frames
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats (median reported)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation first")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(0)
    np.random.seed(0)
    batches, source = load_batches(args.batch_size, args.steps)
    runners = [Ours(), Reference()]
    print(f"data: {source}; batch {args.batch_size} x 1 s at 16 kHz; fp32; {args.num_threads} thread(s)")
    print(
        f"parameters: hf_ssl {sum(p.numel() for p in runners[0].model.parameters()):,}, "
        f"transformers {sum(p.numel() for p in runners[1].model.parameters()):,}"
    )
    for runner in runners:
        for i in range(args.warmup):
            runner.step(batches[i % len(batches)])
    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    for repeat in range(args.repeats):
        for runner in runners if repeat % 2 == 0 else runners[::-1]:
            start = time.perf_counter()
            for batch in batches:
                runner.step(batch)
            elapsed = time.perf_counter() - start
            rates[runner.name].append(len(batches) * args.batch_size / elapsed)
    ours, reference = statistics.median(rates["hf_ssl"]), statistics.median(rates["transformers"])
    for name, values in rates.items():
        print(
            f"{name:>12}: median {statistics.median(values):7.2f} samples/s  (repeats: "
            + ", ".join(f"{v:.2f}" for v in values)
            + ")"
        )
    print(f"ratio hf_ssl / transformers: {ours / reference:.2f}x")


if __name__ == "__main__":
    main()
