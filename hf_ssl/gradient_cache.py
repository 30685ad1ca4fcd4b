"""Gradient cache: the loss and gradients of a large contrastive batch in the memory of a small one.

Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (arXiv:2101.06983).
A contrastive loss couples every example of the batch (each one is a negative of the others), so gradient
accumulation cannot stand in for a large batch: each micro-batch only contrasts its own examples. The loss, however,
only reads the embeddings, which are small; what costs memory is the encoder's activations. The gradient cache
splits the encoder's work into chunks and keeps the loss whole:

1. encode the batch chunk by chunk without keeping activations, remembering the random state each chunk started
   from (dropout, stochastic depth);
2. compute the loss of the whole batch on the embeddings and its gradient with respect to them (the cached
   gradient), gathering across processes with gradients as the loss does anyway;
3. encode each chunk again, with activations, under its remembered random state, and back-propagate its slice of
   the cached gradient into the parameters; only one chunk's activations exist at a time.

The Trainer runs one forward and one backward per step (and DDP expects exactly that), so step 1 and the loss are
the forward, and the loss's gradient and step 3 are that backward: each chunk is encoded under
:func:`torch.utils.checkpoint.checkpoint` (non-reentrant), which keeps only the chunk's inputs and embeddings in the
forward pass and re-encodes the chunk, with the CPU's and the device's random generators restored, when the backward
reaches it. The autograd engine reaches the chunks after the loss has produced the gradient of every embedding, which
is the cached gradient of step 2, and finishes one chunk before re-encoding the next. Cost: the two forward passes
and one backward pass of the paper; memory: one chunk's activations plus the batch's embeddings
(``scripts/benchmark_gradient_cache.py`` measures it).

Doing step 3 as a sum over chunks of ``(embedding * cached_gradient).sum()`` built inside ``forward`` would give the
right gradient too, but every chunk's graph would then be held until the Trainer's backward: the memory of the
direct computation. The running statistics of normalisation layers (BatchNorm) are updated once per chunk, as the
direct chunk-by-chunk computation would: the re-encoding restores them. As under data parallelism without
``SyncBatchNorm``, a BatchNorm layer normalises each chunk with its own statistics, so with BatchNorm the result is
that of the chunk-by-chunk computation, not of one pass over the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def uses_gradient_cache(module: nn.Module, chunk_size: int | None, batch_size: int) -> bool:
    """Whether ``module``'s forward should encode its batch of ``batch_size`` examples in chunks of ``chunk_size``:
    a chunk size is set and smaller than the batch, the module is training and gradients are being recorded
    (evaluation and ``torch.no_grad`` encode the batch in one pass, as without a gradient cache)."""
    return chunk_size is not None and batch_size > chunk_size and module.training and torch.is_grad_enabled()


def chunk_slices(batch_size: int, chunk_size: int) -> list[slice]:
    """``[0:chunk_size], [chunk_size:2 * chunk_size], ...`` covering ``range(batch_size)`` (the last may be
    shorter)."""
    return [slice(start, min(start + chunk_size, batch_size)) for start in range(0, batch_size, chunk_size)]


@contextlib.contextmanager
def buffers_restored(module: nn.Module) -> Iterator[None]:
    """Within this block ``module``'s buffers (BatchNorm running statistics, ...) may change; they are put back
    afterwards, so that re-encoding a chunk does not count it twice in the running statistics."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def encode_in_chunks(
    encode: Callable[[Any], torch.Tensor | tuple[torch.Tensor, ...]],
    chunks: Sequence[Any],
    module: nn.Module,
    *,
    preserve_rng_state: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Encode ``chunks`` one after another with the gradient cache (see the module docstring) and concatenate the
    results; a loss computed on them back-propagates into ``module`` one chunk at a time.

    Args:
        encode: ``chunk -> tensor`` or ``chunk -> (tensor, ...)``, each output ``(n_chunk, ...)``: a function of the
            chunk and ``module``'s parameters only (its random draws from the global generators are replayed).
        chunks: the inputs of each chunk: tensors, or tuples / dicts of tensors (a chunk's device is that of its
            tensors, whose random generator is saved with the CPU's).
        module: the module ``encode`` runs (its buffers are restored after each re-encoding).
        preserve_rng_state: re-encode each chunk under the random state of its first encoding (only ``False`` in the
            test that shows why it is needed).

    Returns:
        Each output of ``encode`` concatenated over the chunks along dim 0: ``(N, ...)``, ``N`` the sum of the
        chunks' ``n_chunk``.
    """

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), buffers_restored(module)

    def encode_tuple(chunk: Any) -> tuple[torch.Tensor, ...]:
        out = encode(chunk)
        return out if isinstance(out, tuple) else (out,)

    parts = [
        checkpoint(encode_tuple, chunk, use_reentrant=False, preserve_rng_state=preserve_rng_state, context_fn=contexts)
        for chunk in chunks
    ]
    return tuple(torch.cat(outputs) for outputs in zip(*parts, strict=True))
