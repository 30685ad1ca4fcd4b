"""Batches of waveforms for wav2vec 2.0 pretraining: decode, random crop, normalise, pad, attention mask."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import Wav2Vec2FeatureExtractor

from hf_ssl.data.audio import decode_audio
from hf_ssl.data.collators import SeededCollator
from hf_ssl.errors import UsageError
from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig


def feature_extractor_for(config: Wav2VecConfig) -> Wav2Vec2FeatureExtractor:
    """The ``Wav2Vec2FeatureExtractor`` that does what pretraining's collator does (rate, zero-mean unit-variance
    normalisation, zero padding, attention masks): saved with every run and export, so evaluation and fine-tuning
    preprocess clips as pretraining did."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=config.sampling_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


class AudioCollator(SeededCollator):
    """Rows with an audio column -> ``{"input_values" (B, L), "attention_mask" (B, L)}``.

    Each clip is decoded (:func:`hf_ssl.data.audio.decode_audio`: mono, resampled), randomly cropped to at most
    ``max_length_samples`` (fairseq crops the same way), normalised to zero mean and unit variance over its own
    samples, ``(x - mean) / sqrt(var + 1e-7)``, exactly as ``Wav2Vec2FeatureExtractor(do_normalize=True)``, and
    right-padded with the extractor's padding value to the longest clip of the batch.

    The random crops are drawn inside :meth:`~hf_ssl.data.collators.SeededCollator.batch_rng` (seeded by the batch's
    position in the run), so a resumed run crops as the uninterrupted one would. Masks and distractors are not drawn
    here: the model draws them on its device from the attention mask (see
    :meth:`Wav2VecForPreTraining.draw_masks`), so no per-batch numpy work is needed and the collator stays model-free.

    Args:
        processor: a ``Wav2VecConfig`` (rate and crop length from it, normalisation on) or a
            ``Wav2Vec2FeatureExtractor`` (its rate, ``do_normalize``, ``padding_value``, ``return_attention_mask``).
        column: the audio column.
        max_length_samples: longest crop; default ``config.max_duration_seconds * sampling_rate`` (or no crop for a
            feature extractor).
        sampling_rate: overrides the rate of ``processor``.
        random_crop: crop at a random offset (training) or from the start (evaluation).
        min_samples: clips shorter than this raise (see ``Wav2VecConfig.receptive_field``); default 1.
        array_sampling_rate: the rate of bare arrays in the column (default: the model's rate).
    """

    def __init__(
        self,
        processor: Wav2VecConfig | Wav2Vec2FeatureExtractor,
        column: str = "audio",
        max_length_samples: int | None = None,
        sampling_rate: int | None = None,
        random_crop: bool = True,
        min_samples: int | None = None,
        array_sampling_rate: int | None = None,
    ):
        if isinstance(processor, Wav2VecConfig):
            rate = sampling_rate or processor.sampling_rate
            default_max = int(processor.max_duration_seconds * rate)
            self.do_normalize, self.padding_value, self.return_attention_mask = True, 0.0, True
            default_min = processor.receptive_field
        elif isinstance(processor, Wav2Vec2FeatureExtractor):
            rate = sampling_rate or processor.sampling_rate
            default_max = None
            self.do_normalize = processor.do_normalize
            self.padding_value = processor.padding_value
            self.return_attention_mask = processor.return_attention_mask
            default_min = 1
        else:
            raise UsageError(
                f"AudioCollator needs a Wav2VecConfig or a Wav2Vec2FeatureExtractor, got {type(processor).__name__}"
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
