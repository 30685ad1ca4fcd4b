"""One update, however the batch is split: 2 real processes (gloo, CPU) through ``SSLTrainer`` take the same optimizer
step as one process with the whole batch of 8 rows.

N=2 processes x A=2 accumulation steps x B=2 rows for the objectives whose loss is a mean over predicted items (MLM
and data2vec text tokens, MAE patches, wav2vec and data2vec audio frames): the loss is divided by the step's global
item count, so micro-batches with 1 and with 12 masked tokens a row weigh by their tokens, not as two equal means. N=2
x B=4 for the contrastive objectives (SimCLR, SimCSE), whose negatives are gathered across processes with gradients.
Every random input (MLM and data2vec masks, MAE noise, wav2vec masks and distractors, SimCLR views, DINO's global and
local crops) is a column of the rows, dropout is off, and wav2vec's quantizer picks its codes without Gumbel noise, so
the two ways see the same draws. Plain SGD without clipping (Adam's first step would hide a gradient's scale).

The momentum-teacher objectives (DINO, data2vec text and audio) train 2 optimizer steps with their objective's
callbacks (the teacher's EMA after each step, ``hf_ssl.teachers.MomentumTeacherCallback``; DINO's schedules), from a
low base momentum (0.5) so that the teacher moves well away from both its start and the student, and the second
step's loss reads a teacher that the first step's EMA made. Every rank saves its own weights: the teacher (and DINO's
center, averaged over processes, ``hf_ssl.models.dino.loss.teacher_batch_center``) must be the same on both ranks
and equal to the 1-process run's. DINO runs N=2 x A=2 x B=2 like the others: its center takes one EMA step per
optimizer step from the teacher outputs of every micro-batch, averaged over processes; a mutant whose center skips
the all-reduce must end with another center than one process (not necessarily other than its other rank's: DDP
broadcasts rank 0's buffers, the center among them, before every forward).

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
SPLITS = {
    "mlm": (2, 2),
    "mae": (2, 2),
    "wav2vec": (2, 2),
    "simclr": (4, 1),
    "simcse": (4, 1),
    "dino": (2, 2),  # its center takes one EMA step per optimizer step, from every micro-batch (DINOScheduleCallback)
    "data2vec_text": (2, 2),
    "data2vec_audio": (2, 2),
}
MUTANTS = ("mlm", "wav2vec")  # split so that their micro-batches predict different numbers of items
TEACHERS = ("dino", "data2vec_text", "data2vec_audio")  # 2 optimizer steps with their objective's callbacks
LEARNING_RATES = {"dino": 0.005}  # 0.5 elsewhere; DINO's sharpened targets (temperatures 0.1 / 0.04) give large grads
WORLD_SIZE = 2


def _rows(name: str, model: torch.nn.Module) -> list[dict[str, np.ndarray]]:
    """The 8 rows of ``name``, every random input included; rows 0-3 predict few items, rows 4-7 many."""
    rng = np.random.default_rng(0)
    if name in ("mlm", "data2vec_text"):
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
    if name == "dino":  # 2 global crops and 2 local ones, as the multi-crop collator gives them; each image has its
        # own colour (a per-channel offset shared by its crops), so the teacher's outputs differ between images and a
        # process' mean of them is not the global one
        colours = rng.normal(0.0, 2.0, (ROWS, 1, 3, 1, 1)).astype(np.float32)
        return [{"pixel_values": rng.standard_normal((2, 3, 32, 32), dtype=np.float32) + colour,
                 "local_pixel_values": rng.standard_normal((2, 3, 16, 16), dtype=np.float32) + colour}
                for colour in colours]  # fmt: skip
    if name == "simcse":  # supervised pairs: (sentence, positive), no dropout needed as noise
        return [{"input_ids": rng.integers(5, 100, (2, 12)), "attention_mask": np.ones((2, 12), dtype=np.int64)}
                for _ in range(ROWS)]  # fmt: skip
    from hf_ssl.models.wav2vec.masking import sample_negative_indices

    backbone = model.backbone if name == "data2vec_audio" else model
    frames = int(backbone._get_feat_extract_output_lengths(torch.tensor(8000)))
    rows = []
    for i in range(ROWS):
        mask = np.zeros(frames, dtype=bool)
        mask[rng.choice(frames, 2 if i < 4 else frames // 2, replace=False)] = True
        if name == "data2vec_audio":
            rows.append({"input_values": rng.standard_normal(8000, dtype=np.float32), "mask_time_indices": mask})
            continue
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
    from tiny_wav2vec import NO_DROPOUT, TINY_BACKBONE, tiny_wav2vec_config

    from hf_ssl import MLMConfig, SimCLRConfig, SimCSEConfig
    from hf_ssl.models.data2vec_audio.configuration_data2vec_audio import Data2VecAudioPretrainingConfig
    from hf_ssl.models.data2vec_text.configuration_data2vec_text import Data2VecTextPretrainingConfig
    from hf_ssl.models.dino.configuration_dino import DINOConfig
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
        # a tiny LayerNorm backbone (ConvNeXt, 1 block a stage, stem of stride 1) and a head without BatchNorm;
        # the prototypes trained from the first step
        "dino": lambda: DINOConfig(
            backbone="convnext_atto",
            backbone_kwargs={"depths": [1, 1, 1, 1], "dims": [16, 16, 32, 32], "patch_size": 1},  # 16 px -> 2 x 2
            image_size=32,
            out_dim=32,
            head_hidden_dim=32,
            head_bottleneck_dim=16,
            num_local_crops=2,
            local_crop_size=16,
            freeze_last_layer_epochs=0.0,
            teacher_momentum=0.5,
        ),
        "data2vec_text": lambda: Data2VecTextPretrainingConfig(
            encoder={**TEXT_ENCODER, "model_type": "data2vec-text", "pad_token_id": 0},
            average_top_k_layers=2,
            teacher_momentum=0.5,
            teacher_momentum_final=1.0,
        ),
        # wav2vec's tiny CNN; 2 positional convolutions of kernel 5 (data2vec's own positional encoder)
        "data2vec_audio": lambda: Data2VecAudioPretrainingConfig(
            backbone={**TINY_BACKBONE, **NO_DROPOUT, "num_conv_pos_embeddings": 2, "conv_pos_kernel_size": 5},
            average_top_k_layers=2,
            teacher_momentum=0.5,
            teacher_momentum_final=1.0,
            sampling_rate=8000,
            max_duration_seconds=1.0,
        ),
    }[name]()
    model = OBJECTIVES[name].model_class(config)
    if name == "wav2vec":  # codes by argmax, no Gumbel noise: a draw that would differ with the split
        model.quantizer.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False),
                                                 model.quantizer)  # fmt: skip
    return model


def _train(name: str, batch_size: int, accumulation: int, mutant: bool) -> dict[str, torch.Tensor]:
    """One optimizer step (two for the momentum teachers, with their objective's callbacks); the model's weights."""
    from hf_ssl.objectives import OBJECTIVES
    from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

    model = _model(name)
    callbacks = OBJECTIVES[name].callbacks(model.config) if name in TEACHERS else []
    args = SSLTrainingArguments(
        output_dir=os.environ["ONE_UPDATE_OUT"],
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=2 if name in TEACHERS else 1,
        optim="sgd",
        learning_rate=LEARNING_RATES.get(name, 0.5),
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
    trainer = SSLTrainer(
        model=model, args=args, train_dataset=_rows(name, model), data_collator=_collate, callbacks=callbacks
    )
    if mutant and name == "dino":  # the center from this process' teacher outputs only, not averaged over processes
        model.criterion.update_center = types.MethodType(_center_of_this_process, model.criterion)
    elif mutant:
        trainer.model_accepts_loss_kwargs = False  # the loss goes back to a mean of per-micro-batch means
    trainer.train()
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}


@torch.no_grad()
def _center_of_this_process(criterion: torch.nn.Module, teacher_logits: torch.Tensor) -> None:
    """DINO's center update without the all-reduce (the mutant): each process follows its own rows."""
    batch_center = teacher_logits.detach().float().flatten(0, -2).mean(dim=0)
    criterion.center.mul_(criterion.center_momentum).add_(batch_center, alpha=1.0 - criterion.center_momentum)


def _rank_file(out_file: str | Path, rank: int) -> Path:
    return Path(out_file).with_suffix(f".rank{rank}.pt")


def _worker(out_file: str) -> None:
    """Every objective (and the mutants) on this launch's processes; every process saves its own weights."""
    torch.set_num_threads(1)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    results = {}
    for name, (batch_size, accumulation) in SPLITS.items():
        if distributed:
            results[name] = _train(name, batch_size, accumulation, mutant=False)
            if name in (*MUTANTS, "dino"):
                results[f"{name}/mutant"] = _train(name, batch_size, accumulation, mutant=True)
        else:
            results[name] = _train(name, ROWS, 1, mutant=False)
            results[f"{name}/initial"] = _model(name).state_dict()
    torch.save(results, _rank_file(out_file, int(os.environ.get("RANK", "0"))))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _launch(command: list[str], out: Path, ranks: int) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Run ``command`` (which ends with ``out``); the weights each of its ``ranks`` processes saved."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ONE_UPDATE_OUT": str(out.parent),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return [torch.load(_rank_file(out, rank)) for rank in range(ranks)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("one_process") / "weights.pt"
    return _launch([sys.executable, __file__, str(out)], out, ranks=1)[0]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict[str, dict[str, torch.Tensor]]]:
    """Rank 0's weights, then rank 1's."""
    out = tmp_path_factory.mktemp("two_processes") / "weights.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE)]
    return _launch([*command, __file__, str(out)], out, ranks=WORLD_SIZE)


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key].float() - b[key].float()).abs().max().item() for key in a)


def _teacher(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher's parameters and buffers (``teacher.*``) and, for DINO, the center of its outputs."""
    return {key: value for key, value in state.items() if key.startswith("teacher.") or key == "criterion.center"}


def _student_of_teacher(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student's tensors that the teacher copies (``teacher.dino.x`` -> ``dino.x``), under the teacher's keys."""
    return {key: state[key.removeprefix("teacher.")] for key in _teacher(state) if key.startswith("teacher.")}


@pytest.mark.parametrize("name", list(SPLITS))
def test_two_processes_take_the_one_process_update(name, one_process, two_processes):
    moved = _max_difference(one_process[name], one_process[f"{name}/initial"])
    assert moved > 1e-3, f"{name}: the step barely moved the weights ({moved})"
    for rank, weights in enumerate(two_processes):
        for key, expected in one_process[name].items():
            torch.testing.assert_close(weights[name][key], expected, atol=1e-5, rtol=0, msg=f"{name} rank {rank} {key}")


@pytest.mark.parametrize("name", list(SPLITS))
def test_every_rank_ends_with_the_same_weights(name, two_processes):
    first, second = (weights[name] for weights in two_processes)
    assert first.keys() == second.keys()
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, atol=1e-6, rtol=0, msg=f"{name} {key}: rank 1 vs rank 0")


@pytest.mark.parametrize("name", TEACHERS)
def test_the_teacher_moved_from_its_start_and_from_the_student(name, one_process, two_processes):
    trained, initial = _teacher(one_process[name]), _teacher(one_process[f"{name}/initial"])
    assert any(key.startswith("teacher.") for key in trained), f"{name}: no teacher.* weights in the state dict"
    assert _max_difference(trained, initial) > 1e-3, f"{name}: the teacher did not move from its start"
    teacher_only = {key: value for key, value in trained.items() if key.startswith("teacher.")}
    student = _student_of_teacher(one_process[name])
    assert _max_difference(teacher_only, student) > 1e-3, f"{name}: the teacher is the student (momentum 0?)"
    for rank, weights in enumerate(two_processes):  # already checked with every weight; named here for the teacher
        for key, expected in trained.items():
            torch.testing.assert_close(weights[name][key], expected, atol=1e-5, rtol=0, msg=f"{name} rank {rank} {key}")
    if name == "dino":
        assert trained["criterion.center"].abs().max() > 1e-3, "DINO's center never moved"


@pytest.mark.parametrize("name", MUTANTS)
def test_a_mean_of_micro_batch_means_is_caught(name, one_process, two_processes):
    assert _max_difference(two_processes[0][f"{name}/mutant"], one_process[name]) > 1e-4


def test_a_center_not_averaged_over_processes_is_caught(one_process, two_processes):
    # DDP broadcasts rank 0's buffers before every forward, so the mutant's ranks end near each other; it is the
    # 1-process center (and the student that the second step's loss trained with it) that they miss
    center = two_processes[0]["dino/mutant"]["criterion.center"]
    assert (center - one_process["dino"]["criterion.center"]).abs().max() > 1e-4
    assert _max_difference(two_processes[0]["dino/mutant"], one_process["dino"]) > 1e-4


if __name__ == "__main__":
    _worker(sys.argv[1])
