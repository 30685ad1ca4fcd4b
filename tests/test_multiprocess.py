"""Every objective in a real 2-process run (gloo on CPU: the code path NCCL takes on GPUs), launched as users launch
it: ``torchrun --nproc_per_node 2 -m hf_ssl.cli pretrain ...`` or ``accelerate launch`` with the repository's
``scripts/accelerate/multi_gpu.yaml`` (``--multi_gpu``: on a machine without GPUs its processes use gloo on CPU).

Each run must exit 0 within a wall-clock limit (a stuck collective fails the test instead of hanging it), save one
``model.safetensors`` and one run record with ``world_size`` 2, and say it saved the model once; ``hf-ssl evaluate``
and ``hf-ssl export`` then work on what MLM and SimCLR saved. MLM and SimCSE use the default tokenizer, trained on the
text: every process must end up with the same one (were each to train its own, DDP's parameter check would fail on
their different vocabularies).

FSDP: ``accelerate launch --use_fsdp`` (or ``scripts/accelerate/fsdp.yaml``) does not shard on CPU: Accelerate turns
its FSDP plugin on only for GPU-like devices and otherwise runs DistributedDataParallel, so an FSDP run on CPU would
test nothing FSDP does. What can be tested here is the wrapping: the module runs itself as a 2-process worker that
shards SimCSE and MLM with Accelerate's own FSDP2 preparation (``fsdp2_prepare_model``, transformer-layer wrapping as
in ``fsdp.yaml``), takes one optimiser step, gathers the full state dict as ``FULL_STATE_DICT`` saving does, and checks
it against one process on the concatenated batch. MLM's head projects through a decoder tied to the input embeddings,
which Accelerate puts in one FSDP unit with them, so the projection runs on the gathered matrix.

Tiny models and 2 optimisation steps: a run is mostly interpreter and library start-up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_wav2vec import tiny_wav2vec_flags
from transformers import AutoModel, AutoTokenizer

from hf_ssl.cli import main

pytestmark = pytest.mark.slow  # subprocesses, several processes or whole CLI runs

REPO_ROOT = Path(__file__).resolve().parents[1]
MULTI_GPU_CONFIG = REPO_ROOT / "scripts" / "accelerate" / "multi_gpu.yaml"
LAUNCH_TIMEOUT_S = 300
WORLD_SIZE = 2

TEXT_ENCODER = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
# per objective: its launcher and the flags of a tiny model (the default data of each: no download)
RUNS = {
    "mlm": ("torchrun", ["--encoder", json.dumps(TEXT_ENCODER), "--max_seq_length", "32"]),
    "simcse": ("accelerate", ["--encoder", json.dumps(TEXT_ENCODER), "--max_seq_length", "32"]),
    "simclr": (
        "torchrun",
        ["--backbone", "convnext_atto", "--small_image_stem", "--image_size", "32", "--projection_hidden_dim", "32",
         "--projection_dim", "16"],
    ),
    "mae": (
        "torchrun",
        ["--image_size", "32", "--patch_size", "4", "--hidden_size", "32", "--num_hidden_layers", "2",
         "--num_attention_heads", "2", "--intermediate_size", "64", "--decoder_hidden_size", "16",
         "--decoder_num_hidden_layers", "1", "--decoder_num_attention_heads", "2", "--decoder_intermediate_size", "32"],
    ),
    "wav2vec": ("accelerate", tiny_wav2vec_flags()),
}  # fmt: skip
COMMON = ["--per_device_train_batch_size", "8", "--max_steps", "2", "--logging_steps", "1", "--report_to", "none",
          "--save_strategy", "no", "--disable_tqdm", "true"]  # fmt: skip
SAVED_LINE = "saved the model to"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher(kind: str) -> list[str]:
    """The command that starts ``WORLD_SIZE`` processes of a Python module (the module and its arguments follow)."""
    if kind == "torchrun":  # --standalone: a free rendezvous port, so concurrent test runs do not collide
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE)]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTI_GPU_CONFIG),
        "--num_processes", str(WORLD_SIZE), "--main_process_port", str(_free_port()),
    ]  # fmt: skip


def launch(command: list[str], log_file: Path, timeout: float = LAUNCH_TIMEOUT_S) -> tuple[int, str]:
    """Run ``command`` in its own process group with a wall-clock limit; on timeout the whole group (the launcher and
    its workers) is killed. Returns the exit status (``-9`` after a timeout) and the combined output."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.write(f"\n[test] killed after {timeout} s\n")
    return proc.returncode, log_file.read_text(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(objective)``: the output folder and log of the objective's 2-process run, launched once per module."""
    done: dict[str, tuple[Path, str]] = {}
    root = tmp_path_factory.mktemp("multiprocess")

    def run(objective: str) -> tuple[Path, str]:
        if objective not in done:
            kind, flags = RUNS[objective]
            out = root / objective
            command = [*launcher(kind), "-m", "hf_ssl.cli", "pretrain", objective, *flags, *COMMON]
            started = time.monotonic()
            code, log = launch([*command, "--output_dir", str(out)], root / f"{objective}.log")
            took = time.monotonic() - started
            assert code == 0, f"{kind} {objective} exited {code} after {took:.0f} s:\n{log[-6000:]}"
            done[objective] = (out, log)
        return done[objective]

    return run


@pytest.mark.parametrize("objective", list(RUNS))
def test_two_processes_train_save_once_and_log_once(runs, objective):
    out, log = runs(objective)
    assert [p.relative_to(out) for p in out.rglob("model.safetensors")] == [Path("model.safetensors")]
    record = json.loads((out / "hf_ssl_run.json").read_text())
    assert (record["objective"], record["world_size"], record["global_step"]) == (objective, WORLD_SIZE, 2)
    assert log.count(SAVED_LINE) == 1, log[-3000:]
    assert log.count("'train_runtime'") == 1, "the training summary should be printed by the main process only"


@pytest.mark.parametrize("objective", ["mlm", "simcse"])
def test_processes_share_the_tokenizer_the_main_process_trained(runs, objective):
    """The main process trains the tokenizer and leaves it in output_dir/shared_processor; the other loads it, so
    both build embeddings of one vocabulary (DDP compares the parameter shapes of every process at start, so the run
    would stop otherwise). Once the model is saved with its tokenizer, the shared copy is removed."""
    out, log = runs(objective)
    assert log.count("training a wordpiece tokenizer") == 1, log[-3000:]
    assert not (out / "shared_processor").exists()
    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    config = json.loads((out / "config.json").read_text())
    assert config["encoder"]["vocab_size"] == len(vocab)


def test_evaluate_and_export_the_two_process_mlm_run(runs, tmp_path, capsys):
    out, _ = runs("mlm")
    results_file = tmp_path / "eval.json"
    main(
        ["evaluate", "--model_name_or_path", str(out), "--train_split", "train[:200]", "--split", "test[:100]"]
        + ["--knn_k", "5", "--baselines", "false", "--output_file", str(results_file)]
    )
    results = json.loads(results_file.read_text())
    assert results["modality"] == "text" and 0 <= results["knn"]["accuracy"] <= 1
    assert results["mlm"]["num_predicted"] > 0
    main(["export", str(out), str(tmp_path / "export")])
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["architectures"] == ["BertForMaskedLM"]
    assert exported["vocab_size"] == len(AutoTokenizer.from_pretrained(tmp_path / "export"))
    assert "exported to" in capsys.readouterr().out


def test_evaluate_and_export_the_two_process_simclr_run(runs, tmp_path):
    out, _ = runs("simclr")
    results_file = tmp_path / "eval.json"
    main(
        ["evaluate", "--model_name_or_path", str(out), "--train_split", "train[:200]", "--split", "test[:100]"]
        + ["--knn_k", "5", "--baselines", "false", "--output_file", str(results_file)]
    )
    results = json.loads(results_file.read_text())
    assert results["modality"] == "image" and results["num_train"] == 200 and results["num_test"] == 100
    main(["export", str(out), str(tmp_path / "export")])
    assert (tmp_path / "export" / "README.md").is_file()
    assert any((tmp_path / "export").glob("*.safetensors"))


# --------------------------------------------------------------------------------------------------------------------
# FSDP: Accelerate's FSDP2 wrapping of the transformer objectives, on 2 CPU processes
# --------------------------------------------------------------------------------------------------------------------

FSDP_PER_RANK = 2
FSDP_LR = 0.5
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _fsdp_model(objective: str) -> torch.nn.Module:
    """A tiny model without dropout (so two runs agree), seeded."""
    from hf_ssl import MLMConfig, MLMForPreTraining, SimCSEConfig, SimCSEForPreTraining

    torch.manual_seed(0)
    encoder = {**TEXT_ENCODER, **NO_DROPOUT, "vocab_size": 100}
    if objective == "simcse":
        return SimCSEForPreTraining(SimCSEConfig(encoder=encoder))
    return MLMForPreTraining(MLMConfig(encoder=encoder))


def _fsdp_batch(objective: str, rank: int | None = None) -> dict[str, torch.Tensor]:
    """The global batch (``rank=None``) or one rank's share: (sentence, positive) pairs for SimCSE, token ids with
    every other position predicted for MLM (the same number of predicted tokens on each rank)."""
    generator = torch.Generator().manual_seed(1)
    size = FSDP_PER_RANK * WORLD_SIZE
    if objective == "simcse":
        batch = {"input_ids": torch.randint(5, 100, (size, 2, 12), generator=generator)}
    else:
        ids = torch.randint(5, 100, (size, 12), generator=generator)
        labels = ids.clone()
        labels[:, ::2] = -100
        batch = {"input_ids": ids, "labels": labels}
    if rank is not None:
        batch = {key: value[rank * FSDP_PER_RANK : (rank + 1) * FSDP_PER_RANK] for key, value in batch.items()}
    return batch


def _one_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """One SGD step on ``batch`` (under FSDP the ranks' gradients are averaged); returns the loss."""
    loss = model(**batch).loss
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=FSDP_LR).step()
    return float(loss.detach())


def _fsdp_worker(out_dir: str) -> None:
    """One process of the FSDP check: for each objective, Accelerate's FSDP2 preparation of the model, one step on
    this rank's share of the batch, the full state dict gathered to rank 0 and saved with ``save_pretrained``."""
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    torch.set_num_threads(1)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["BertLayer"],
        state_dict_type="FULL_STATE_DICT",
    )
    accelerator = Accelerator(cpu=True, fsdp_plugin=plugin)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    report = {"world_size": dist.get_world_size(), "distributed_type": str(accelerator.distributed_type)}
    report["accelerate_fsdp_on_cpu"] = getattr(accelerator.state, "fsdp_plugin", None) is not None
    accelerator.state.fsdp_plugin = plugin  # what Accelerate sets on GPUs, so its FSDP2 preparation runs here
    for objective in ("simcse", "mlm"):
        try:
            model = fsdp2_prepare_model(accelerator, _fsdp_model(objective))
            wrapped = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("FSDP")})
            # whether the output projection is still the input embeddings' parameter once sharded (MLM's decoder)
            tied = getattr(model.get_output_embeddings(), "weight", None) is model.get_input_embeddings().weight
            loss = _one_step(model, _fsdp_batch(objective, rank))
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if rank == 0:
                fresh = _fsdp_model(objective)
                fresh.load_state_dict(state)
                fresh.save_pretrained(Path(out_dir) / objective)
            report[objective] = {"wrapped": wrapped, "tied": tied, "loss": loss}
        except Exception as error:  # noqa: BLE001 - reported to the test, which decides
            report[objective] = {"error": f"{type(error).__name__}: {error}"[:500]}
        dist.barrier()
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("fsdp")
    command = [*launcher("torchrun"), str(Path(__file__).resolve()), "fsdp", str(out)]
    code, log = launch(command, out / "launch.log", timeout=200)
    assert code == 0, log[-6000:]
    return out, [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


def _check_fsdp_step(objective: str, out: Path, reports: list[dict]) -> None:
    for report in reports:
        assert "error" not in report[objective], report[objective]["error"]
        assert "FSDPBertLayer" in report[objective]["wrapped"]  # the transformer layers are FSDP units
    reference = _fsdp_model(objective)
    loss = _one_step(reference, _fsdp_batch(objective))  # the global batch in one process
    # each rank's loss is over its own examples (SimCSE: against the negatives of both); their mean is the global one
    rank_losses = [r[objective]["loss"] for r in reports]
    assert sum(rank_losses) / WORLD_SIZE == pytest.approx(loss, abs=1e-5) and rank_losses[0] != rank_losses[1]
    assert AutoModel.from_pretrained(out / objective).training is False  # an ordinary folder: its backbone loads
    gathered = type(reference).from_pretrained(out / objective).state_dict()
    changed = 0
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(gathered[name], value, rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(value, _fsdp_model(objective).state_dict()[name])
    assert changed > 0  # the step moved the weights: the comparison above is not between two initial states


def test_fsdp_is_not_applied_by_accelerate_on_cpu(fsdp_run):
    """Why the CLI is not run under FSDP here: Accelerate keeps its FSDP plugin off on CPU (and runs DDP). Should
    that change, this fails, and a real FSDP run of the CLI belongs in this module."""
    _, reports = fsdp_run
    assert all(r["world_size"] == WORLD_SIZE and not r["accelerate_fsdp_on_cpu"] for r in reports), reports


def test_fsdp_wrapped_simcse_step_equals_one_process(fsdp_run):
    """SimCSE sharded by Accelerate's FSDP2 preparation over 2 processes: each rank's loss, and the full state dict
    after one SGD step, equal one process on the concatenated batch (the negatives gathered across processes)."""
    _check_fsdp_step("simcse", *fsdp_run)


def test_fsdp_wrapped_mlm_step_equals_one_process(fsdp_run):
    """MLM sharded the same way: its head's decoder stays tied to the input embeddings and is wrapped with them (one
    FSDP unit, gathered for the projection); each rank's loss, and the full state dict after one SGD step (decoder
    and embeddings one matrix), equal one process on the concatenated batch."""
    for report in fsdp_run[1]:
        assert report["mlm"].get("tied") is True, report["mlm"]
        assert {"FSDPEmbedding", "FSDPLinear"} <= set(report["mlm"]["wrapped"]), report["mlm"]
    _check_fsdp_step("mlm", *fsdp_run)


if __name__ == "__main__" and sys.argv[1:2] == ["fsdp"]:
    _fsdp_worker(sys.argv[2])
