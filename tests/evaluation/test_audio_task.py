"""The audio evaluation task: the checkpoint's feature extractor as preprocessing, the log-mel baseline, and the
order of clips (the layer-wise results end to end are checked in tests/models/test_wav2vec_objective.py)."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import soundfile
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor

from hf_ssl.errors import UsageError
from hf_ssl.evaluation.tasks import get_task
from hf_ssl.evaluation.tasks.audio_classification import LogMelStatistics, audio_preprocessor

RATE = 8000


def _wav(wave: np.ndarray, rate: int) -> dict:
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
    return {"bytes": buffer.getvalue(), "path": None}


def _tone(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_log_mel_statistics_follow_pitch_and_ignore_padding():
    baseline = LogMelStatistics(RATE)
    low, high = torch.from_numpy(_tone(0.5, RATE, 300.0)), torch.from_numpy(_tone(0.3, RATE, 2500.0))
    values = torch.zeros(2, low.shape[0])
    values[0], values[1, : high.shape[0]] = low, high
    mask = torch.zeros(2, low.shape[0], dtype=torch.long)
    mask[0], mask[1, : high.shape[0]] = 1, 1
    features = baseline({"input_values": values, "attention_mask": mask})
    assert features.shape == (2, 80)
    means = features[:, :40]
    assert means[0].argmax() < means[1].argmax()  # the higher tone lights a higher mel band
    alone = baseline({"input_values": high[None]})
    torch.testing.assert_close(features[1], alone[0])  # the padding is not part of the statistics


def test_preprocessor_uses_the_checkpoint_extractor_and_resamples(tmp_path):
    Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=True, return_attention_mask=True).save_pretrained(
        tmp_path
    )
    config = Wav2Vec2Config(conv_kernel=[10, 3], conv_stride=[5, 2], conv_dim=[8, 8])
    preprocess = audio_preprocessor(str(tmp_path), config)
    assert config.output_hidden_states and config.sampling_rate == RATE  # asked of the backbone for the layers
    inputs = preprocess([_wav(_tone(0.5, 16000, 440.0), 16000), _wav(_tone(0.001, RATE, 440.0), RATE)])
    assert inputs["attention_mask"].sum(-1).tolist() == [RATE // 2, 20]  # resampled; padded to the receptive field
    first = inputs["input_values"][0]
    assert abs(first.mean().item()) < 1e-3 and abs(first.std().item() - 1) < 1e-2  # normalised as in pretraining


def test_preprocessor_without_extractor_needs_a_rate(tmp_path):
    with pytest.raises(UsageError, match="sampling_rate"):
        audio_preprocessor(str(tmp_path), Wav2Vec2Config())


def test_prepare_orders_clips_by_duration_keeping_labels():
    clips = [_wav(_tone(s, RATE, 440.0), RATE) for s in (0.9, 0.2, 0.5)]
    ds = datasets.Dataset.from_dict({"audio": clips, "label": [0, 1, 2]})
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    prepared = get_task("audio").prepare(ds, "audio")
    assert prepared["label"] == [1, 2, 0]
