"""The audio data path: decoding, mono mixing, resampling, checks of bad clips, the embedded default set, the
collator, and a few training steps after the bad clips are skipped."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio, Dataset, load_dataset
from transformers import Wav2Vec2FeatureExtractor

from hf_ssl.data.audio import (
    DEFAULT_AUDIO_WORDS,
    BadAudioError,
    check_audio,
    decode_audio,
    load_default_audio,
    resample,
)
from hf_ssl.errors import UsageError
from hf_ssl.models.wav2vec import AudioCollator, Wav2VecConfig, Wav2VecForPreTraining

FSDD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "audio" / "fsdd"
RATE = 8000


def wav_bytes(array: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> dict:
    buffer = io.BytesIO()
    soundfile.write(buffer, array, rate, format=fmt, subtype=subtype)
    return {"bytes": buffer.getvalue(), "path": None}


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def tiny_config() -> Wav2VecConfig:
    backbone = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16, 16, 16, 16],
        conv_kernel=[10, 3, 3, 3],
        conv_stride=[5, 2, 2, 2],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    return Wav2VecConfig(
        backbone=backbone,
        num_codevectors_per_group=16,
        codevector_dim=16,
        proj_codevector_dim=16,
        num_negatives=10,
        mask_time_prob=0.5,
        mask_time_length=4,
        sampling_rate=RATE,
        max_duration_seconds=1.0,
    )


def test_decode_formats_mono_and_resampling(tmp_path):
    wave = tone(0.5, RATE)
    for fmt in ("WAV", "FLAC", "OGG"):
        decoded = decode_audio(wav_bytes(wave, RATE, fmt), RATE)
        assert decoded.shape == wave.shape and decoded.dtype == np.float32
        assert np.abs(decoded - wave).max() < (0.1 if fmt == "OGG" else 1e-3)  # Vorbis is lossy
    path = tmp_path / "clip.flac"
    soundfile.write(path, wave, RATE)
    np.testing.assert_allclose(decode_audio(str(path), RATE), wave, atol=1e-3)
    np.testing.assert_allclose(decode_audio({"bytes": None, "path": str(path)}, RATE), wave, atol=1e-3)
    stereo = np.stack([wave, -wave * 0.5], axis=1)  # (samples, channels)
    np.testing.assert_allclose(decode_audio(wav_bytes(stereo, RATE), RATE), wave * 0.25, atol=1e-3)
    np.testing.assert_allclose(decode_audio(stereo.T.copy(), RATE), wave * 0.25, atol=1e-6)  # (channels, samples)
    # 44.1 kHz -> 16 kHz: right length, the tone keeps its frequency
    hi = decode_audio(wav_bytes(tone(1.0, 44100, 1000.0), 44100), 16000)
    assert hi.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(hi))
    assert abs(np.argmax(spectrum) * 16000 / len(hi) - 1000.0) < 2.0
    assert resample(wave, RATE, RATE) is wave


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (wav_bytes(np.zeros(0, np.float32), RATE), "is empty"),
        (wav_bytes(np.full(10, 0.1, np.float32), RATE), "too short: 10 samples"),
        (np.array([0.1, np.nan] * 500, dtype=np.float32), "NaN or infinite"),
        ({"bytes": b"RIFF\x00\x00not really a wav file", "path": "broken.wav"}, r"cannot decode .*broken\.wav"),
    ],
)
def test_bad_clips_raise_naming_the_row(value, message):
    with pytest.raises(BadAudioError, match=message) as info:
        decode_audio(value, RATE, where="row 7", min_samples=tiny_config().receptive_field)
    assert "row 7" in str(info.value) and isinstance(info.value, UsageError)


def _mixed_dataset() -> tuple[Dataset, set[int]]:
    good = [wav_bytes(tone(0.6, RATE, 200 + 50 * i), RATE) for i in range(8)]
    rows = [
        good[0],
        wav_bytes(np.zeros(0, np.float32), RATE),  # 1: empty
        good[1],
        wav_bytes(np.full(10, 0.1, np.float32), RATE),  # 3: 10 samples
        wav_bytes(np.array([0.1, np.nan] * 2000, dtype=np.float32), RATE, subtype="FLOAT"),  # 4: NaN
        wav_bytes(np.stack([tone(0.7, RATE), tone(0.7, RATE, 300)], 1), RATE),  # 5: stereo, converted
        wav_bytes(tone(0.8, 44100), 44100),  # 6: 44.1 kHz, resampled
        {"bytes": b"\x00\x01garbage", "path": "corrupt.flac"},  # 7: corrupt
        *good[2:],
    ]
    ds = Dataset.from_dict({"audio": rows})
    return ds, {1, 3, 4, 7}


def test_check_audio_errors_then_skips_and_training_runs(caplog):
    config = tiny_config()
    ds, bad = _mixed_dataset()
    with pytest.raises(BadAudioError) as info:
        check_audio(ds, "audio", RATE, min_samples=config.receptive_field)
    text = str(info.value)
    assert "4 of 14" in text and "rows [1, 3, 4, 7]" in text
    for reason in ("empty", "too short", "NaN", "corrupt.flac"):
        assert reason in text
    with caplog.at_level(logging.WARNING):
        kept = check_audio(ds, "audio", RATE, min_samples=config.receptive_field, on_bad_example="skip")
    assert len(kept) == len(ds) - len(bad)
    assert "skipping 4 of 14" in caplog.text
    # the stereo and the 44.1 kHz clips are kept, converted
    assert decode_audio(kept[2]["audio"], RATE).shape == (int(0.7 * RATE),)
    assert decode_audio(kept[3]["audio"], RATE).shape == (int(0.8 * RATE),)
    # a few training steps on the rest
    torch.manual_seed(0)
    model = Wav2VecForPreTraining(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    collate = AudioCollator(config, "audio")
    rows = [kept[i] for i in range(len(kept))]
    for step in range(3):
        batch = collate(rows[step * 3 : step * 3 + 4])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    with pytest.raises(UsageError, match="on_bad_example must be one of"):
        check_audio(ds, "audio", RATE, on_bad_example="ignore")


def test_collator_matches_the_feature_extractor():
    config = tiny_config()
    waves = [tone(0.5, RATE, 300) + 0.1, tone(0.3, RATE, 500) * 3, tone(0.9, RATE, 200)]
    rows = [{"audio": wav_bytes(w, RATE, "FLAC")} for w in waves]
    batch = AudioCollator(config, "audio", max_length_samples=None)(rows)
    decoded = [decode_audio(r["audio"], RATE) for r in rows]
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=True, return_attention_mask=True)
    expected = extractor(decoded, sampling_rate=RATE, padding=True, return_tensors="pt")
    torch.testing.assert_close(batch["input_values"], expected["input_values"], rtol=1e-5, atol=1e-5)
    assert torch.equal(batch["attention_mask"], expected["attention_mask"].long())
    # random crop to the maximum length; every crop normalised on its own
    cropped = AudioCollator(config, "audio", max_length_samples=2000)(rows)
    assert cropped["input_values"].shape == (3, 2000) and cropped["attention_mask"].all()
    assert cropped["input_values"].mean(1).abs().max() < 1e-4
    starts = set()
    for seed in range(5):
        collator = AudioCollator(config, "audio", max_length_samples=2000)
        collator.set_position(seed, rank=0, batches_done=0)  # crops are drawn from the run's seed and batch position
        crop = collator(rows[2:])["input_values"][0]
        starts.add(round(float(crop[0]), 4))
    assert len(starts) > 1  # the offset is random
    from_extractor = AudioCollator(extractor, "audio")
    assert from_extractor.sampling_rate == RATE and from_extractor.max_length_samples is None
    with pytest.raises(UsageError, match="no audio column 'speech'"):
        AudioCollator(config, "speech")(rows)


def test_default_audio_is_embedded_fixed_and_labelled():
    ds = load_default_audio("train")
    assert len(ds) == 240 and ds.features["label"].names == list(DEFAULT_AUDIO_WORDS)
    assert sorted(set(ds["label"])) == list(range(len(DEFAULT_AUDIO_WORDS)))
    test, again = load_default_audio("test"), load_default_audio("test")
    assert len(test) == 60 and test[5]["audio"]["bytes"] == again[5]["audio"]["bytes"]  # fixed seed
    assert test[5]["audio"]["bytes"] != ds[5]["audio"]["bytes"]  # another seed per split
    waves = [decode_audio(ds[i]["audio"], 16000) for i in range(12)]
    assert all(0.4 * 16000 <= len(w) <= 1.3 * 16000 and np.isfinite(w).all() for w in waves)

    # learnable structure: the classes differ in their spectra (mean log spectra closer within a class)
    def profile(wave):
        spec = np.abs(np.fft.rfft(wave, 4096))[:1200]
        return np.log(spec + 1e-3) - np.log(spec + 1e-3).mean()

    same = np.linalg.norm(profile(waves[0]) - profile(waves[6]))  # both class 0
    other = np.mean([np.linalg.norm(profile(waves[0]) - profile(waves[j])) for j in (1, 2, 3, 4, 5)])
    assert same < other
    with pytest.raises(UsageError, match="split must be one of"):
        load_default_audio("validation")


def test_real_fsdd_clips_decode_and_check():
    if not (FSDD / "train.parquet").exists():
        pytest.skip(f"real data not available: {FSDD} is absent (see ../shared/data/README.md)")
    ds = load_dataset("parquet", data_files={"test": str(FSDD / "test.parquet")}, split="test").select(range(40))
    ds = ds.cast_column("audio", Audio(decode=False))
    checked = check_audio(ds, "audio", 16000, min_samples=Wav2VecConfig().receptive_field)
    assert len(checked) == 40
    wave = decode_audio(checked[0]["audio"], 16000)  # 8 kHz recordings, resampled
    raw, rate = soundfile.read(io.BytesIO(checked[0]["audio"]["bytes"]))
    assert rate == 8000 and len(wave) == 2 * len(raw)
