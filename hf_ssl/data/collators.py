"""Collators: they decode and augment inside DataLoader workers, so the training step never waits on images."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info
from transformers import PretrainedConfig, Wav2Vec2FeatureExtractor

from hf_ssl.data.audio import decode_audio
from hf_ssl.data.images import to_pil
from hf_ssl.errors import UsageError

logger = logging.getLogger(__name__)


def position_seed(*parts: object) -> int:
    """A 63-bit seed that is a fixed function of ``parts`` (e.g. ``(seed, rank, batch index, stream)``): the same
    position in a run gets the same seed in every run and every resume, and no two positions share a stream."""
    key = ":".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


@contextlib.contextmanager
def seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Within this block the global generators of the CPU and of ``device`` start from ``seed``; both are restored
    afterwards. ``None``: no change."""
    if seed is None:
        yield
        return
    if device.type == "cpu":
        fork = torch.random.fork_rng(devices=[])
    else:
        fork = torch.random.fork_rng(devices=[device.index or 0], device_type=device.type)
    with fork:
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Within this block the global generators of Python, NumPy, torch's CPU and every accelerator device may be
    drawn from or reseeded (a ``Trainer`` calls ``set_seed``); all are as they were afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    devices = list(range(torch.accelerator.device_count())) if accelerator is not None else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=accelerator.type if accelerator else "cuda"):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class SeededCollator:
    """Base of collators that draw random numbers (augmentations, masks): batch ``k`` of a run, on process ``rank``,
    draws them from the CPU generator seeded with ``(seed, rank, k)``, whatever the worker that builds it.

    Randomness is then a function of the position in the run, so resuming from a checkpoint reproduces the
    uninterrupted run (see :class:`~hf_ssl.callbacks.BatchRandomnessCallback`, which sets the position), and the
    global generator is left as it was.
    """

    _seed: int = 0
    _rank: int = 0
    _start: int = 0
    _count: int = 0

    def set_position(self, seed: int, rank: int, batches_done: int) -> None:
        """The next batch built is batch ``batches_done`` of the run on process ``rank``."""
        self._seed, self._rank, self._start, self._count = seed, rank, batches_done, 0

    def _next_batch_seed(self) -> int:
        worker = get_worker_info()  # worker w of W builds batches w, w + W, w + 2W, ... of each pass
        offset = self._count if worker is None else worker.id + self._count * worker.num_workers
        self._count += 1
        return position_seed(self._seed, self._rank, self._start + offset)

    @contextlib.contextmanager
    def batch_rng(self) -> Iterator[None]:
        """Within this block the global CPU generator is seeded for the next batch; it is restored afterwards."""
        with seeded_rng(self._next_batch_seed(), torch.device("cpu")):
            yield


class ImageCollator(SeededCollator):
    """Rows with an image column -> ``{"pixel_values": (B, ...)}``, each image decoded and augmented by ``transform``
    in the DataLoader worker, seeded per batch.

    Augmentations are drawn inside :meth:`SeededCollator.batch_rng`, so batch ``k`` of a run gets the same crops
    and flips whatever worker builds it, and a resumed run repeats the uninterrupted one. Every row must decode
    (:func:`~hf_ssl.data.images.prepare_images` checks a dataset, or filters a streamed one, before batching): a
    collator that dropped rows would give processes batches of different sizes, so an undecodable image here is an
    error naming its file.

    Args:
        transform: PIL image -> tensor: ``(C, H, W)`` for one crop, ``(V, C, H, W)`` for ``V`` views; or a mapping
            of model inputs to such tensors (multi-crop: ``{"pixel_values": ..., "local_pixel_values": ...}``),
            each stacked over the batch.
        image_column: the column holding the images.
        mode: PIL mode the images are converted to (see :func:`~hf_ssl.data.images.pil_mode`).

    Raises:
        UndecodableImageError: (when called) a row whose image cannot be decoded.
    """

    def __init__(
        self,
        transform: Callable[[Any], torch.Tensor | Mapping[str, torch.Tensor]],
        image_column: str,
        mode: str = "RGB",
    ):
        self.transform, self.image_column, self.mode = transform, image_column, mode

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        with self.batch_rng():
            images = [
                self.transform(to_pil(row[self.image_column], self.mode, where=f"row {i} of a batch"))
                for i, row in enumerate(rows)
            ]
        if isinstance(images[0], Mapping):
            return {key: torch.stack([image[key] for image in images]) for key in images[0]}
        return {"pixel_values": torch.stack(images)}


class AudioCollator(SeededCollator):
    """Rows with an audio column -> ``{"input_values" (B, L), "attention_mask" (B, L)}``.

    Each clip is decoded (:func:`hf_ssl.data.audio.decode_audio`: mono, resampled), randomly cropped to at most
    ``max_length_samples`` (fairseq crops the same way), normalised to zero mean and unit variance over its own
    samples, ``(x - mean) / sqrt(var + 1e-7)``, exactly as ``Wav2Vec2FeatureExtractor(do_normalize=True)``, and
    right-padded with the extractor's padding value to the longest clip of the batch.

    The random crops are drawn inside :meth:`~hf_ssl.data.collators.SeededCollator.batch_rng` (seeded by the batch's
    position in the run), so a resumed run crops as the uninterrupted one would. Masks (and distractors) are not drawn
    here: the model draws them on its device from the attention mask (its ``draw_random_inputs``), so no per-batch
    numpy work is needed and the collator stays model-free.

    Args:
        processor: a speech pretraining config (``Wav2VecConfig``, ``Data2VecAudioPretrainingConfig``: anything with
            ``sampling_rate``, ``max_duration_seconds`` and ``receptive_field``; crop length from it, normalisation
            on) or a ``Wav2Vec2FeatureExtractor`` (its rate, ``do_normalize``, ``padding_value``,
            ``return_attention_mask``).
        column: the audio column.
        max_length_samples: longest crop; default ``config.max_duration_seconds * sampling_rate`` (or no crop for a
            feature extractor).
        sampling_rate: overrides the rate of ``processor``.
        random_crop: crop at a random offset (training) or from the start (evaluation).
        min_samples: clips shorter than this raise; default the config's ``receptive_field``, else 1.
        array_sampling_rate: the rate of bare arrays in the column (default: the model's rate).
    """

    def __init__(
        self,
        processor: PretrainedConfig | Wav2Vec2FeatureExtractor,
        column: str = "audio",
        max_length_samples: int | None = None,
        sampling_rate: int | None = None,
        random_crop: bool = True,
        min_samples: int | None = None,
        array_sampling_rate: int | None = None,
    ):
        if isinstance(processor, Wav2Vec2FeatureExtractor):
            rate = sampling_rate or processor.sampling_rate
            default_max = None
            self.do_normalize = processor.do_normalize
            self.padding_value = processor.padding_value
            self.return_attention_mask = processor.return_attention_mask
            default_min = 1
        elif all(hasattr(processor, name) for name in ("sampling_rate", "max_duration_seconds", "receptive_field")):
            rate = sampling_rate or processor.sampling_rate
            default_max = int(processor.max_duration_seconds * rate)
            self.do_normalize, self.padding_value, self.return_attention_mask = True, 0.0, True
            default_min = processor.receptive_field
        else:
            raise UsageError(
                "AudioCollator needs a speech pretraining config or a Wav2Vec2FeatureExtractor, got "
                f"{type(processor).__name__}"
            )
        self.column = column
        self.sampling_rate = int(rate)
        self.max_length_samples = max_length_samples if max_length_samples is not None else default_max
        self.random_crop = random_crop
        self.min_samples = min_samples if min_samples is not None else default_min
        self.array_sampling_rate = array_sampling_rate

    def _crop(self, wave: np.ndarray) -> np.ndarray:
        limit = self.max_length_samples
        if limit is None or wave.shape[0] <= limit:
            return wave
        start = int(torch.randint(0, wave.shape[0] - limit + 1, ()).item()) if self.random_crop else 0
        return wave[start : start + limit]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if rows and self.column not in rows[0]:
            raise UsageError(f"no audio column {self.column!r} in the batch; columns: {', '.join(rows[0])}")
        waves = []
        with self.batch_rng():
            for i, row in enumerate(rows):
                wave = decode_audio(
                    row[self.column], self.sampling_rate, f"batch item {i}", self.min_samples, self.array_sampling_rate
                )
                wave = self._crop(wave)
                if self.do_normalize:  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, over the unpadded samples
                    wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
                waves.append(wave.astype(np.float32))
        longest = max(w.shape[0] for w in waves)
        input_values = torch.full((len(waves), longest), float(self.padding_value), dtype=torch.float32)
        attention_mask = torch.zeros((len(waves), longest), dtype=torch.long)
        for i, wave in enumerate(waves):
            input_values[i, : wave.shape[0]] = torch.from_numpy(wave)
            attention_mask[i, : wave.shape[0]] = 1
        batch = {"input_values": input_values}
        if self.return_attention_mask:
            batch["attention_mask"] = attention_mask
        return batch
