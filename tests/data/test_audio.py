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
from tiny_wav2vec import RATE, tiny_wav2vec_config, tiny_wav2vec_flags
from transformers import Wav2Vec2FeatureExtractor

from hf_ssl.data.audio import (
    DEFAULT_AUDIO_WORDS,
    BadAudioError,
    decode_audio,
    load_default_audio,
    prepare_audio,
    resample,
)
from hf_ssl.data.collators import AudioCollator
from hf_ssl.errors import UsageError
from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining

FSDD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "audio" / "fsdd"


def wav_bytes(array: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> dict:
    buffer = io.BytesIO()
    soundfile.write(buffer, array, rate, format=fmt, subtype=subtype)
    return {"bytes": buffer.getvalue(), "path": None}


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


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
        decode_audio(value, RATE, where="row 7", min_samples=tiny_wav2vec_config().receptive_field)
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


def test_prepare_audio_errors_then_skips_and_training_runs(caplog):
    config = tiny_wav2vec_config()
    ds, bad = _mixed_dataset()
    with pytest.raises(BadAudioError) as info:
        prepare_audio(ds, "audio", RATE, min_samples=config.receptive_field)
    text = str(info.value)
    assert "4 of 14" in text and "rows [1, 3, 4, 7]" in text
    for reason in ("empty", "too short", "NaN", "corrupt.flac"):
        assert reason in text
    with caplog.at_level(logging.WARNING):
        kept, skipped = prepare_audio(ds, "audio", RATE, min_samples=config.receptive_field, on_bad_example="skip")
    assert len(kept) == len(ds) - len(bad) == len(ds) - skipped
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
        prepare_audio(ds, "audio", RATE, on_bad_example="ignore")


def test_collator_matches_the_feature_extractor():
    config = tiny_wav2vec_config()
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
    checked, _ = prepare_audio(ds, "audio", 16000, min_samples=Wav2VecConfig().receptive_field)
    assert len(checked) == 40
    wave = decode_audio(checked[0]["audio"], 16000)  # 8 kHz recordings, resampled
    raw, rate = soundfile.read(io.BytesIO(checked[0]["audio"]["bytes"]))
    assert rate == 8000 and len(wave) == 2 * len(raw)


# --- a plain folder of clips (the audiofolder layout users have), read without torchcodec ---------------------------


@pytest.fixture
def no_torchcodec(monkeypatch):
    """``import torchcodec`` fails, as after a plain ``pip install`` (datasets' audio encoder and decoder need it)."""
    import sys

    monkeypatch.setitem(sys.modules, "torchcodec", None)


def write_clips(folder: Path, names: list[str], seconds: float = 0.5) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(
            path, tone(seconds, RATE, 200.0 + 50 * i), RATE, format="FLAC" if name.endswith(".flac") else "WAV"
        )
        paths.append(path)
    return paths


def test_audio_folder_loads_without_torchcodec(tmp_path, no_torchcodec):
    from datasets import ClassLabel

    from hf_ssl.data import find_column, load_data

    flat = tmp_path / "flat"
    clips = write_clips(flat, ["a.wav", "b.flac", "c.wav"])
    (flat / "README.txt").write_text("not a clip: ignored, as datasets' audiofolder does")
    ds = load_data(str(flat))
    assert ds.column_names == ["audio"] and ds.features["audio"] == Audio(decode=False)
    assert find_column(ds, "audio") == "audio" and [row["path"] for row in ds["audio"]] == [str(p) for p in clips]
    wave = decode_audio(ds[1]["audio"], RATE)  # the FLAC clip, read by soundfile
    assert len(wave) == RATE // 2 and np.allclose(wave, tone(0.5, RATE, 250.0), atol=1e-3)

    classes = tmp_path / "classes"  # class subfolders: a label, as datasets infers it
    write_clips(classes, ["yes/1.wav", "yes/2.wav", "no/1.wav"])
    ds = load_data(str(classes))
    assert ds.features["label"] == ClassLabel(names=["no", "yes"])
    assert [(Path(row["path"]).parent.name, label) for row, label in zip(ds["audio"], ds["label"], strict=True)] == [
        ("no", 0),
        ("yes", 1),
        ("yes", 1),
    ]

    splits = tmp_path / "splits"  # split folders above the class folders, slices as datasets takes them
    write_clips(splits, ["train/yes/1.wav", "train/no/1.wav", "train/no/2.wav", "test/yes/1.wav", "test/no/1.wav"])
    assert len(load_data(str(splits), "train")) == 3 and len(load_data(str(splits), "test")) == 2
    both = load_data(str(splits), "train[:1]+test[-1:]")
    assert [Path(row["path"]).relative_to(splits).as_posix() for row in both["audio"]] == [
        "train/no/1.wav",
        "test/yes/1.wav",
    ]
    assert load_data(str(splits), "test", streaming=True).features["audio"] == Audio(decode=False)
    with pytest.raises(UsageError, match=r"no split 'validation'; the folder has \['test', 'train'\]"):
        load_data(str(splits), "validation")


def test_audio_folder_metadata_file_adds_its_columns(tmp_path, no_torchcodec):
    from hf_ssl.data import load_data

    write_clips(tmp_path, ["clips/a.wav", "clips/b.wav"])
    (tmp_path / "metadata.csv").write_text("file_name,transcript\nclips/b.wav,bee\nclips/a.wav,ay\n")
    ds = load_data(str(tmp_path))
    assert ds.column_names == ["audio", "transcript"] and ds["transcript"] == ["bee", "ay"]
    assert Path(ds[0]["audio"]["path"]) == tmp_path / "clips" / "b.wav" and len(decode_audio(ds[0]["audio"], RATE))


TINY_WAV2VEC_FLAGS = [*tiny_wav2vec_flags(), "--per_device_train_batch_size", "4", "--max_steps", "1",
                      "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip


@pytest.mark.slow
def test_pretraining_on_a_folder_of_clips_names_then_skips_the_bad_ones(tmp_path, capsys, no_torchcodec):
    import json

    from hf_ssl.cli import main

    folder = tmp_path / "my_clips"
    write_clips(folder, [f"speaker{i % 2}/clip{i}.wav" for i in range(6)], seconds=1.0)
    (folder / "speaker0" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    soundfile.write(folder / "speaker1" / "click.wav", tone(0.001, RATE), RATE)  # 8 samples: below the receptive field
    run = tmp_path / "run"
    argv = ["pretrain", "wav2vec", "--dataset_name", f"{folder}/", *TINY_WAV2VEC_FLAGS, "--output_dir", str(run)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "hf-ssl: error: 2 of 8 audio examples are unusable" in error
    assert "cannot decode the audio at row" in error and "broken.wav" in error
    assert "is too short: 8 samples" in error and "click.wav" in error and "--on_bad_example skip" in error
    assert "torchcodec" not in error

    main([*argv, "--on_bad_example", "skip"])
    assert (run / "model.safetensors").is_file() and (run / "preprocessor_config.json").is_file()
    info = json.loads((run / "hf_ssl_run.json").read_text())
    assert info["num_examples"] == 6 and info["num_skipped"] == 2 and info["global_step"] == 1
    assert info["columns"] == {"audio": "audio"} and info["dataset_source"] == f"local folder {folder}"
