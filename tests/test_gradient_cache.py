"""The gradient cache (Gao et al., 2021, arXiv:2101.06983; ``hf_ssl.gradient_cache``): a batch of 256 encoded in
chunks of 32 gives the loss and the parameter gradients of the direct computation, for SimCLR and SimCSE; dropout and
stochastic depth are replayed; BatchNorm running statistics count each chunk once; evaluation is unchanged; and
``hf-ssl pretrain`` warns that gradient accumulation does not add negatives.

Tolerances: losses within 1e-5 (absolute). Gradients, parameter by parameter, within ``rtol`` plus ``atol * max|g|``,
``max|g|`` the largest gradient entry of the reference over all parameters (parameters whose true gradient is 0, such
as BERT's attention key biases, carry only rounding noise, which no relative tolerance can judge): against the direct
pass over the whole batch ``rtol=1e-4, atol=5e-5`` (float32 kernels summing over 512 rows instead of 64; observed at
most 1e-5 of ``max|g|`` for SimCLR, 6e-7 for SimCSE); against the chunk-by-chunk reference, the same kernels on the
same chunks, ``rtol=1e-5, atol=1e-6`` (observed: bitwise equal). Without the random-state replay the gradients are off
by 16% to 93% of ``max|g|``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_text import TINY_BERT, VOCAB
from torch import nn
from torch.utils.checkpoint import set_checkpoint_early_stop

from hf_ssl import SimCLRConfig, SimCLRForPreTraining, UsageError
from hf_ssl.cli import config_arguments, pretrain
from hf_ssl.gradient_cache import chunk_slices, encode_in_chunks
from hf_ssl.models.simclr.loss import nt_xent_loss
from hf_ssl.models.simcse.configuration_simcse import SimCSEConfig
from hf_ssl.models.simcse.loss import info_nce_loss
from hf_ssl.models.simcse.modeling_simcse import SimCSEForPreTraining
from hf_ssl.objectives import get_objective

BATCH, CHUNK = 256, 32
SAME_DRAWS = {"rtol": 1e-5, "atol": 1e-6}  # against the chunk-by-chunk reference: the same kernels on the same chunks
LENGTH = 24


def tiny_simclr(**overrides) -> SimCLRConfig:
    """convnext_atto at 32x32, one block per stage and narrow stages, so 512 views take well under a second."""
    kwargs = {
        "backbone": "convnext_atto",
        "small_image_stem": True,
        "image_size": 32,
        "projection_hidden_dim": 32,
        "projection_dim": 16,
        "backbone_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]},
    }
    return SimCLRConfig(**{**kwargs, **overrides})


def tiny_simcse(dropout: float, **overrides) -> SimCSEConfig:
    encoder = {**TINY_BERT, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    return SimCSEConfig(encoder=encoder, **overrides)


def sentences(batch: int, views: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded random sentences of 3 to ``LENGTH`` tokens: ``(batch, LENGTH)`` or ``(batch, views, LENGTH)``."""
    shape = (batch,) if views is None else (batch, views)
    lengths = torch.randint(3, LENGTH + 1, shape)
    mask = (torch.arange(LENGTH) < lengths[..., None]).long()
    return {"input_ids": torch.randint(5, VOCAB, (*shape, LENGTH)) * mask, "attention_mask": mask}


def step(model: nn.Module, inputs: dict[str, torch.Tensor], chunk_size: int | None, seed: int = 1):
    """One training forward/backward from a fixed random state: (output, {name: parameter gradient})."""
    model.config.gradient_cache_chunk_size = chunk_size
    model.zero_grad()
    torch.manual_seed(seed)
    output = model(**inputs)
    output.loss.backward()
    return output, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def chunk_by_chunk(model: nn.Module, encode, chunks: list, loss_fn, seed: int = 1):
    """The reference with randomness: each chunk encoded with autograd (``encode(chunk) -> (z, ...)``), one after
    another from the same random state (every activation kept), the loss on the concatenation, one backward:
    (loss, gradients)."""
    model.zero_grad()
    torch.manual_seed(seed)
    z = torch.cat([encode(chunk)[0] for chunk in chunks])
    loss = loss_fn(z)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol: float = 1e-4, atol: float = 5e-5
) -> None:
    """Every parameter's gradient within ``rtol`` and ``atol * max|g|``, ``max|g|`` over all of ``expected``."""
    assert actual.keys() == expected.keys()
    scale = max(g.abs().max().item() for g in expected.values())
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=rtol, atol=atol * scale, msg=lambda m, n=name: f"{n}: {m}")


def assert_different_gradients(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    with pytest.raises(AssertionError):
        assert_same_gradients(actual, expected, **SAME_DRAWS)


# --- the mechanism, on a toy encoder -------------------------------------------------------------------------------


def test_chunks_are_re_encoded_under_their_own_random_state():
    """Pass 2 (the re-encoding in the backward) reproduces pass 1 exactly with dropout on; gradients and BatchNorm
    running statistics equal those of the chunk-by-chunk computation. Without the replay both break."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 4)).train()
    x = torch.randn(64, 8)
    chunks = [x[rows] for rows in chunk_slices(64, 16)]

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z[:32], z[32:], temperature=0.5)

    torch.manual_seed(1)
    encoder[1].reset_running_stats()
    reference_loss = loss_fn(torch.cat([encoder(chunk) for chunk in chunks]))
    reference_loss.backward()
    reference = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    reference_stats = encoder[1].running_mean.clone(), encoder[1].running_var.clone()

    for preserve in (True, False):
        encoder[1].reset_running_stats()
        encoder.zero_grad()
        calls: list[torch.Tensor] = []

        def encode(chunk: torch.Tensor, calls: list[torch.Tensor] = calls) -> torch.Tensor:
            out = encoder(chunk)
            calls.append(out.detach().clone())
            return out

        torch.manual_seed(1)
        with set_checkpoint_early_stop(False):  # let each re-encoding run to its end, so ``calls`` sees its output
            (z,) = encode_in_chunks(encode, chunks, encoder, preserve_rng_state=preserve)
            loss = loss_fn(z)
            loss.backward()
        grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
        first, second = calls[:4], calls[4:]  # the forward's encodings, the backward's (in the engine's order)
        assert len(second) == 4
        torch.testing.assert_close(loss.detach(), reference_loss.detach(), rtol=0, atol=1e-5)  # pass 1 is the same
        torch.testing.assert_close(encoder[1].running_mean, reference_stats[0])  # one update per chunk
        torch.testing.assert_close(encoder[1].running_var, reference_stats[1])
        assert int(encoder[1].num_batches_tracked) == 4
        if preserve:
            assert all(any(torch.equal(a, b) for a in first) for b in second)  # bitwise
            assert_same_gradients(grads, reference, **SAME_DRAWS)
        else:  # the dropout masks of pass 2 are new draws: other embeddings, other (wrong) gradients
            assert not any(torch.equal(a, b) for a in first for b in second)
            assert_different_gradients(grads, reference)


# --- SimCLR --------------------------------------------------------------------------------------------------------


def test_simclr_batch_of_256_in_chunks_of_32_equals_the_direct_computation():
    """Without BatchNorm (a 1-layer head; ConvNeXt normalises each image alone) and without randomness in the model,
    chunks change nothing: the loss, its gradients and the outputs are those of one pass over the batch."""
    model = SimCLRForPreTraining(tiny_simclr(projection_layers=1)).train()
    inputs = {"pixel_values": torch.randn(BATCH, 2, 3, 32, 32)}
    direct, direct_grads = step(model, inputs, None)
    cached, cached_grads = step(model, inputs, CHUNK)
    torch.testing.assert_close(cached.loss, direct.loss, rtol=0, atol=1e-5)
    assert_same_gradients(cached_grads, direct_grads)
    assert len(cached_grads) == len(list(model.parameters()))  # every parameter gets its gradient
    torch.testing.assert_close(cached.projections, direct.projections, rtol=1e-4, atol=1e-5)
    assert cached.features.shape == direct.features.shape == (BATCH, 2, model.simclr.num_features)


def test_simclr_with_batchnorm_and_stochastic_depth_equals_chunk_by_chunk():
    """With the paper's BatchNorm head and stochastic depth in the backbone, the gradient cache equals the direct
    computation chunk by chunk (each chunk's BatchNorm statistics, each chunk's drop-path draws, running statistics
    updated once per chunk) while keeping one chunk's activations."""
    model = SimCLRForPreTraining(tiny_simclr(backbone_kwargs={"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64],
                                                             "drop_path_rate": 0.5})).train()  # fmt: skip
    pixel_values = torch.randn(BATCH, 2, 3, 32, 32)
    batch_norm = model.projection_head.layers[1]
    assert isinstance(batch_norm, nn.BatchNorm1d)

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z[:, 0], z[:, 1], model.config.loss_temperature)

    batch_norm.reset_running_stats()
    chunks = [pixel_values[rows] for rows in chunk_slices(BATCH, CHUNK)]
    loss, grads = chunk_by_chunk(model, model.encode_views, chunks, loss_fn)
    stats = batch_norm.running_mean.clone()
    batch_norm.reset_running_stats()
    cached, cached_grads = step(model, {"pixel_values": pixel_values}, CHUNK)
    torch.testing.assert_close(cached.loss.detach(), loss, rtol=0, atol=1e-5)
    assert_same_gradients(cached_grads, grads, **SAME_DRAWS)
    torch.testing.assert_close(batch_norm.running_mean, stats)
    assert int(batch_norm.num_batches_tracked) == BATCH // CHUNK


# --- SimCSE --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("views", [None, 3], ids=["unsupervised", "hard-negatives"])
def test_simcse_batch_of_256_in_chunks_of_32_equals_the_direct_computation(views):
    """Dropout off (its draws depend on how the batch is split): the loss, gradients and embeddings of the direct
    computation, with the sentences in length buckets inside each chunk."""
    model = SimCSEForPreTraining(tiny_simcse(dropout=0.0, hard_negative_weight=2.0)).train()
    inputs = sentences(BATCH, views)
    direct, direct_grads = step(model, inputs, None)
    cached, cached_grads = step(model, inputs, CHUNK)
    torch.testing.assert_close(cached.loss, direct.loss, rtol=0, atol=1e-5)
    assert_same_gradients(cached_grads, direct_grads)
    torch.testing.assert_close(cached.embeddings, direct.embeddings, rtol=1e-4, atol=1e-5)


def test_simcse_dropout_is_replayed():
    """Dropout on (the augmentation of unsupervised SimCSE): the gradient cache equals the direct computation chunk
    by chunk from the same random state, so each chunk's dropout masks are the same in both of its passes."""
    model = SimCSEForPreTraining(tiny_simcse(dropout=0.1)).train()
    inputs = sentences(BATCH)
    doubled = {name: value.unsqueeze(0).expand(2, -1, -1) for name, value in inputs.items()}  # (2, B, L)
    chunks = [
        {name: value[:, rows].flatten(0, 1) for name, value in doubled.items()} for rows in chunk_slices(BATCH, CHUNK)
    ]

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return info_nce_loss(z[:, 0], z[:, 1], temperature=model.config.loss_temperature)

    loss, grads = chunk_by_chunk(model, lambda chunk: model.encode_views(chunk, views=2), chunks, loss_fn)
    cached, cached_grads = step(model, inputs, CHUNK)
    torch.testing.assert_close(cached.loss.detach(), loss, rtol=0, atol=1e-5)
    assert_same_gradients(cached_grads, grads, **SAME_DRAWS)
    _, other_draws = step(model, inputs, CHUNK, seed=2)  # the comparison sees dropout: other draws, other gradients
    assert_different_gradients(other_draws, grads)


# --- unchanged paths, the config, the CLI --------------------------------------------------------------------------


def test_evaluation_and_no_grad_encode_the_batch_in_one_pass(monkeypatch):
    model = SimCSEForPreTraining(tiny_simcse(dropout=0.1, gradient_cache_chunk_size=4))
    inputs = sentences(16)
    monkeypatch.setattr("hf_ssl.models.simcse.modeling_simcse.encode_in_chunks", None)  # called: TypeError
    with torch.no_grad():
        model.eval()(**inputs)
        model.train()(**inputs)
    model.config.gradient_cache_chunk_size = 16  # not smaller than the batch: one pass
    model.train()(**inputs).loss.backward()


def test_chunk_size_is_a_validated_config_field_and_a_flag(tmp_path):
    for config_class, extra in ((SimCLRConfig, {"backbone": "convnext_atto"}), (SimCSEConfig, {})):
        config = config_class(gradient_cache_chunk_size=32, **extra)
        config.save_pretrained(tmp_path / config_class.__name__)
        assert config_class.from_pretrained(tmp_path / config_class.__name__).gradient_cache_chunk_size == 32
        assert config_class(**extra).gradient_cache_chunk_size is None
        for bad in (0, 2.5, True, "8"):
            with pytest.raises(UsageError, match="gradient_cache_chunk_size must be an integer >= 1"):
                config_class(gradient_cache_chunk_size=bad, **extra)
        field = next(f for f in config_arguments(config_class).__dataclass_fields__.values()
                     if f.name == "gradient_cache_chunk_size")  # fmt: skip
        assert "gradient cache" in field.metadata["help"] and field.type == int | None


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("objective", "accumulation", "warned"),
    [("simclr", 4, True), ("simcse", 2, True), ("simclr", 1, False), ("mae", 4, False)],
)
def test_pretrain_warns_that_accumulation_adds_no_negatives(
    objective, accumulation, warned, caplog, monkeypatch, tmp_path
):
    """One warning, at the start of ``hf-ssl pretrain``, for the objectives whose negatives come from the batch (the
    run is stopped right after it: the data preparation is replaced by an exception)."""
    monkeypatch.setattr(logging.getLogger("hf_ssl"), "propagate", True)  # main() turns it off for its own handler
    monkeypatch.setattr("hf_ssl.cli.prepare", lambda *args: (_ for _ in ()).throw(_Stop()))
    with caplog.at_level(logging.WARNING, logger="hf_ssl"), pytest.raises(_Stop):
        pretrain(get_objective(objective), ["--gradient_accumulation_steps", str(accumulation), "--output_dir",
                                            str(tmp_path)])  # fmt: skip
    # a set: pytest may capture the same record twice (at the package's logger and at the root)
    messages = sorted({r.getMessage() for r in caplog.records if "does not add negatives" in r.getMessage()})
    assert len(messages) == warned
    if warned:
        assert f"--gradient_accumulation_steps {accumulation} does not add negatives to {objective}" in messages[0]
        assert "--gradient_cache_chunk_size" in messages[0]


# --- two processes (DDP, gloo) -------------------------------------------------------------------------------------

WORLD_SIZE, PER_RANK, RANK_CHUNK = 2, 16, 4


def _ddp_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return sentences(WORLD_SIZE * PER_RANK, views=3)


def _ddp_model() -> SimCSEForPreTraining:
    torch.manual_seed(0)
    return SimCSEForPreTraining(tiny_simcse(dropout=0.0, hard_negative_weight=2.0)).train()


def _ddp_worker(rank: int, init_file: str, out_file: str) -> None:
    """One process of a DDP run: its share of the batch, encoded in chunks, negatives gathered from the other."""
    import datetime

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    try:
        model = _ddp_model()
        model.config.gradient_cache_chunk_size = RANK_CHUNK
        ddp = DistributedDataParallel(model)
        local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        loss = ddp(**{name: value[local] for name, value in _ddp_batch().items()}).loss
        loss.backward()  # the Trainer's single backward; DDP averages the gradients
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss.detach(), "grads": grads}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_with_ddp_equal_one_process_on_the_whole_batch(tmp_path):
    """2 processes x 16 examples in chunks of 4, negatives gathered with gradients, DDP's one backward: the mean
    loss and the averaged gradients of one process on all 32 examples in one pass."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(tmp_path / "init"), str(tmp_path / f"{rank}.pt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in range(WORLD_SIZE)
    ]
    try:
        logs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert all(proc.returncode == 0 for proc in procs), "\n".join(logs)[-3000:]
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in range(WORLD_SIZE)]
    model = _ddp_model()
    output, grads = step(model, _ddp_batch(), None)
    mean_loss = torch.stack([r["loss"] for r in results]).mean()
    torch.testing.assert_close(mean_loss, output.loss.detach(), rtol=0, atol=1e-5)
    for result in results:
        assert_same_gradients(result["grads"], grads)


if __name__ == "__main__":  # a worker of the two-process test
    import sys

    _ddp_worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
