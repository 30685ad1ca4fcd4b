"""One update, however the batch is split: 2 real processes (gloo, CPU) through ``SSLTrainer`` take the same optimizer
step as one process with the whole batch of 8 rows.

N=2 processes x A=2 accumulation steps x B=2 rows for the objectives whose loss is a mean over predicted items (MLM
tokens, MAE patches, wav2vec frames): the loss is divided by the step's global item count, so micro-batches with 1 and
with 12 masked tokens a row weigh by their tokens, not as two equal means. N=2 x B=4 for the contrastive objectives
(SimCLR, SimCSE), whose negatives are gathered across processes with gradients. Every random input (MLM masks, MAE
noise, wav2vec masks and distractors, SimCLR views) is a column of the rows, dropout is off, and wav2vec's quantizer
picks its codes without Gumbel noise, so the two ways see the same draws. Plain SGD without clipping (Adam's first
step would hide a gradient's scale).

A mutant that goes back to a mean of per-micro-batch means (the Trainer not passing ``num_items_in_batch``) must give
other weights for MLM and wav2vec. The module launches this file with torchrun once (every objective in one launch)
and as a plain script once for the 1-process runs, each with a wall-clock limit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # subprocesses, several processes or whole CLI runs

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = 8
LAUNCH_TIMEOUT_S = 600
TEXT_ENCODER = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 64,
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
# objective -> (per-device batch, accumulation steps) of the 2-process run
SPLITS = {"mlm": (2, 2), "mae": (2, 2), "wav2vec": (2, 2), "simclr": (4, 1), "simcse": (4, 1)}
MUTANTS = ("mlm", "wav2vec")  # split so that their micro-batches predict different numbers of items


def _rows(name: str, model: torch.nn.Module) -> list[dict[str, np.ndarray]]:
    """The 8 rows of ``name``, every random input included; rows 0-3 predict few items, rows 4-7 many."""
    rng = np.random.default_rng(0)
    if name == "mlm":
        rows = []
        for i in range(ROWS):
            ids = rng.integers(5, 100, 16)
            labels = np.full(16, -100)
            chosen = rng.choice(16, 1 if i < 4 else 12, replace=False)
            labels[chosen], ids[chosen] = ids[chosen], 4
            rows.append({"input_ids": ids, "attention_mask": np.ones(16, dtype=np.int64), "labels": labels})
        return rows
    if name == "mae":
        return [{"pixel_values": rng.standard_normal((3, 32, 32), dtype=np.float32),
                 "noise": rng.random(64, dtype=np.float32)} for _ in range(ROWS)]  # fmt: skip
    if name == "simclr":
        return [{"pixel_values": rng.standard_normal((2, 3, 32, 32), dtype=np.float32)} for _ in range(ROWS)]
    if name == "simcse":  # supervised pairs: (sentence, positive), no dropout needed as noise
        return [{"input_ids": rng.integers(5, 100, (2, 12)), "attention_mask": np.ones((2, 12), dtype=np.int64)}
                for _ in range(ROWS)]  # fmt: skip
    from hf_ssl.models.wav2vec.masking import sample_negative_indices

    frames = int(model._get_feat_extract_output_lengths(torch.tensor(8000)))
    rows = []
    for i in range(ROWS):
        mask = np.zeros(frames, dtype=bool)
        mask[rng.choice(frames, 2 if i < 4 else frames // 2, replace=False)] = True
        generator = torch.Generator().manual_seed(i)
        negatives = sample_negative_indices(torch.from_numpy(mask)[None], 10, generator=generator)[0]  # (T, K)
        rows.append({"input_values": rng.standard_normal(8000, dtype=np.float32), "mask_time_indices": mask,
                     "sampled_negative_indices": negatives.numpy()})  # fmt: skip
    return rows


def _collate(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    batch = {key: torch.as_tensor(np.stack([row[key] for row in rows])) for key in rows[0]}
    if "sampled_negative_indices" in batch:  # a row's frame indices t -> flat indices b * T + t of the batch
        frames = batch["mask_time_indices"].shape[1]
        batch["sampled_negative_indices"] += torch.arange(len(rows))[:, None, None] * frames
    return batch


def _model(name: str) -> torch.nn.Module:
    from tiny_mae import tiny_mae_config
    from tiny_wav2vec import NO_DROPOUT, tiny_wav2vec_config

    from hf_ssl import MLMConfig, SimCLRConfig, SimCSEConfig
    from hf_ssl.objectives import OBJECTIVES

    torch.manual_seed(0)
    config = {
        "mlm": lambda: MLMConfig(encoder=dict(TEXT_ENCODER)),
        "simcse": lambda: SimCSEConfig(encoder=dict(TEXT_ENCODER), pooler_type="mean"),
        "mae": tiny_mae_config,
        # one linear projection: the head's BatchNorm1d would normalise each process' rows by their own statistics
        "simclr": lambda: SimCLRConfig(
            backbone="convnext_atto", small_image_stem=True, image_size=32, projection_layers=1, projection_dim=16
        ),  # fmt: skip
        "wav2vec": lambda: tiny_wav2vec_config(NO_DROPOUT, feat_quantizer_dropout=0.0, feature_penalty_weight=0.0),
    }[name]()
    model = OBJECTIVES[name].model_class(config)
    if name == "wav2vec":  # codes by argmax, no Gumbel noise: a draw that would differ with the split
        model.quantizer.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False),
                                                 model.quantizer)  # fmt: skip
    return model


def _train_one_step(name: str, batch_size: int, accumulation: int, mutant: bool) -> dict[str, torch.Tensor]:
    from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

    model = _model(name)
    args = SSLTrainingArguments(
        output_dir=os.environ["ONE_UPDATE_OUT"],
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = SSLTrainer(model=model, args=args, train_dataset=_rows(name, model), data_collator=_collate)
    if mutant:
        trainer.model_accepts_loss_kwargs = False  # the loss goes back to a mean of per-micro-batch means
    trainer.train()
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


def _worker(out_file: str) -> None:
    """Every objective (and the mutants) on this launch's processes; the main process saves the weights."""
    torch.set_num_threads(1)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    results = {}
    for name, (batch_size, accumulation) in SPLITS.items():
        if distributed:
            results[name] = _train_one_step(name, batch_size, accumulation, mutant=False)
            if name in MUTANTS:
                results[f"{name}/mutant"] = _train_one_step(name, batch_size, accumulation, mutant=True)
        else:
            results[name] = _train_one_step(name, ROWS, 1, mutant=False)
            results[f"{name}/initial"] = _model(name).state_dict()
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, out_file)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _launch(command: list[str], out: Path) -> dict[str, dict[str, torch.Tensor]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ONE_UPDATE_OUT": str(out.parent),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("one_process") / "weights.pt"
    return _launch([sys.executable, __file__, str(out)], out)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("two_processes") / "weights.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    return _launch([*command, str(out)], out)


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].float() - b[key].float()).abs().max().item() for key in a)


@pytest.mark.parametrize("name", list(SPLITS))
def test_two_processes_take_the_one_process_update(name, one_process, two_processes):
    moved = _max_difference(one_process[name], one_process[f"{name}/initial"])
    assert moved > 1e-3, f"{name}: the step barely moved the weights ({moved})"
    for key, expected in one_process[name].items():
        torch.testing.assert_close(two_processes[name][key], expected, atol=1e-5, rtol=0, msg=f"{name} {key}")


@pytest.mark.parametrize("name", MUTANTS)
def test_a_mean_of_micro_batch_means_is_caught(name, one_process, two_processes):
    assert _max_difference(two_processes[f"{name}/mutant"], one_process[name]) > 1e-4


if __name__ == "__main__":
    _worker(sys.argv[1])
