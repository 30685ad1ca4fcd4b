"""Audio classification of frozen features: the checkpoint's feature extractor gives the preprocessing; log-mel
statistics are the task's baseline."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import AutoFeatureExtractor, PretrainedConfig, Wav2Vec2FeatureExtractor
from transformers.audio_utils import mel_filter_bank

from hf_ssl.data.audio import DEFAULT_AUDIO_DATASET, clip_seconds, decode_audio, load_default_audio, undecoded_audio
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.tasks.base import Preprocessor, register_task
from hf_ssl.evaluation.tasks.classification import ClassificationTask

logger = logging.getLogger(__name__)

NUM_MEL_BANDS = 40
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010


def _conv_geometry(config: PretrainedConfig) -> int:
    """Samples the backbone's first output frame needs (its convolutional receptive field); 1 if not a conv
    front end. Reads a ``Wav2Vec2Config``-like config, or the ``backbone`` sub-config of one."""
    source = getattr(config, "backbone", None) or config
    kernels, strides = getattr(source, "conv_kernel", None), getattr(source, "conv_stride", None)
    if not kernels or not strides:
        return 1
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def feature_extractor(model_name_or_path: str, config: PretrainedConfig) -> Any:
    """The checkpoint's own feature extractor (``preprocessor_config.json``, saved with every pretraining run and
    export), else a ``Wav2Vec2FeatureExtractor`` at the config's ``sampling_rate`` (normalising, with attention masks).

    Raises:
        UsageError: the checkpoint has no feature extractor and its config names no sampling rate.
    """
    try:
        return AutoFeatureExtractor.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as err:
        rate = getattr(config, "sampling_rate", None)
        if not rate:
            raise UsageError(
                f"{model_name_or_path}: no feature extractor (preprocessor_config.json) and no sampling_rate in its "
                f"config, so its audio preprocessing is unknown: {err}"
            ) from err
        logger.warning("%s has no preprocessor_config.json: normalising clips at %d Hz", model_name_or_path, rate)
        return Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=rate, padding_value=0.0, do_normalize=True, return_attention_mask=True
        )


def audio_preprocessor(model_name_or_path: str, config: PretrainedConfig) -> Preprocessor:
    """Clips -> ``{"input_values": (B, L), "attention_mask": (B, L)}`` with the checkpoint's feature extractor.

    Each clip is decoded and resampled to the extractor's rate (:func:`~hf_ssl.data.audio.decode_audio`), clips
    shorter than the backbone's receptive field are zero-padded to it, then the extractor normalises and pads them
    (an attention mask when the extractor returns one).

    The pipeline hands the loaded backbone's own ``config`` here (the random-init baseline is built from it too);
    two settings are put on it: ``output_hidden_states = True``, so an audio backbone returns every layer's output
    for a layer-wise pooler, and ``sampling_rate`` (the extractor's, when the config has none) for the log-mel
    baseline.
    """
    extractor = feature_extractor(model_name_or_path, config)
    rate = int(extractor.sampling_rate)
    min_samples = _conv_geometry(config)
    config.output_hidden_states = True
    if not getattr(config, "sampling_rate", None):
        config.sampling_rate = rate
    with_mask = bool(getattr(extractor, "return_attention_mask", True))

    def preprocess(values: list[Any]) -> dict[str, torch.Tensor]:
        waves = []
        for i, value in enumerate(values):
            wave = decode_audio(value, rate, where=f"clip {i} of an evaluation batch")
            if wave.shape[0] < min_samples:
                wave = np.pad(wave, (0, min_samples - wave.shape[0]))
            waves.append(wave)
        features = extractor(
            waves, sampling_rate=rate, padding=True, return_attention_mask=with_mask, return_tensors="pt"
        )
        inputs = {"input_values": features["input_values"].float()}
        if with_mask:
            inputs["attention_mask"] = features["attention_mask"].long()
        return inputs

    return preprocess


class LogMelStatistics:
    """The log-mel baseline: per clip, the mean and standard deviation over its frames of 40-band log-mel energies
    (25 ms Hann windows every 10 ms, Slaney mel filters from 0 Hz to Nyquist): ``(B, L) -> (B, 80)``.

    Computed from the same inputs as the model (the extractor's normalised waveform; loudness is normalised away, as
    for the model), over each clip's unpadded samples.

    Args:
        sampling_rate: rate of the input values.
        num_bands: mel bands.
    """

    def __init__(self, sampling_rate: int, num_bands: int = NUM_MEL_BANDS):
        self.sampling_rate = int(sampling_rate)
        self.window = max(1, round(WINDOW_SECONDS * self.sampling_rate))
        self.hop = max(1, round(HOP_SECONDS * self.sampling_rate))
        self.n_fft = 2 ** math.ceil(math.log2(self.window))
        filters = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=num_bands,
            min_frequency=0.0,
            max_frequency=self.sampling_rate / 2,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.filters = torch.from_numpy(filters).float()  # (n_fft / 2 + 1, num_bands)
        self.hann = torch.hann_window(self.window, periodic=True)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``(n,)`` samples -> ``(frames, num_bands)`` log-mel energies."""
        if wave.shape[0] < self.window:
            wave = torch.nn.functional.pad(wave, (0, self.window - wave.shape[0]))
        spectrum = torch.stft(
            wave.float(),
            n_fft=self.n_fft,
            hop_length=self.hop,
            win_length=self.window,
            window=self.hann.to(wave.device),
            center=False,
            return_complex=True,
        )  # (n_fft / 2 + 1, frames)
        power = spectrum.abs().pow(2).T  # (frames, n_fft / 2 + 1)
        return torch.log(power @ self.filters.to(wave.device) + 1e-6)  # (frames, num_bands)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        values = inputs["input_values"]
        mask = inputs.get("attention_mask")
        lengths = mask.sum(-1).tolist() if mask is not None else [values.shape[1]] * values.shape[0]
        stats = []
        for wave, length in zip(values, lengths, strict=True):
            frames = self.log_mel(wave[: int(length)])
            stats.append(torch.cat([frames.mean(0), frames.std(0, correction=0)]))
        return torch.stack(stats)  # (B, 2 * num_bands)


def _baselines(config: PretrainedConfig) -> dict[str, Any]:
    rate = getattr(config, "sampling_rate", None)
    if not rate:
        raise UsageError(f"the checkpoint's {type(config).__name__} names no sampling_rate for the log-mel baseline")
    return {"log_mel_stats": LogMelStatistics(rate)}


def _prepare(ds: Dataset, column: str) -> Dataset:
    """Clips undecoded, ordered by duration (from their headers) so that a batch pads little; each row keeps its
    label, and kNN and the linear probe do not depend on the order."""
    ds = undecoded_audio(ds, column)
    durations = [clip_seconds(value) for value in ds[column]]
    return ds.select(np.argsort(durations, kind="stable").tolist())


AUDIO_CLASSIFICATION = register_task(
    ClassificationTask(
        "audio", audio_preprocessor, _prepare, _baselines, default_dataset=(DEFAULT_AUDIO_DATASET, load_default_audio)
    )
)
