"""Audio: decoding with soundfile, mono mixing and resampling, checks before training, an embedded default set.

Decoding happens in our code rather than inside ``datasets`` (whose ``Audio`` decoding needs torchcodec and FFmpeg):
cast audio columns with ``datasets.Audio(decode=False)`` (see :func:`undecoded_audio`) and the rows hold
``{"bytes", "path"}`` dicts that :func:`decode_audio` reads with soundfile (WAV, FLAC, OGG/Vorbis, ...), naming the
row when a file is broken.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import soundfile
from datasets import Dataset, IterableDataset
from scipy.signal import resample_poly
from transformers import Wav2Vec2FeatureExtractor

from hf_ssl.data.checks import ExampleCheck, OnBadExample, check_on_bad_example, prepare_rows
from hf_ssl.data.loading import find_column, register_embedded_dataset
from hf_ssl.errors import UsageError


class BadAudioError(UsageError):
    """An audio example is unusable (undecodable, empty, too short, non-finite); the message names its row/file."""


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D waveform with ``scipy.signal.resample_poly``.

    Polyphase filtering: upsample by ``up = target / g``, low-pass with a Kaiser-windowed FIR (scipy's default
    ``('kaiser', 5.0)``, anti-aliasing at the lower of the two Nyquist rates), downsample by ``down = orig / g``, with
    ``g = gcd(orig, target)``. Exact for rational ratios (8 -> 16 kHz, 44.1 -> 16 kHz), no FFT-length artefacts.
    """
    if orig_rate == target_rate:
        return waveform
    g = math.gcd(int(orig_rate), int(target_rate))
    return resample_poly(waveform, int(target_rate) // g, int(orig_rate) // g).astype(np.float32)


def _to_mono(array: np.ndarray) -> np.ndarray:
    """Average channels. 2-D arrays are ``(samples, channels)`` (soundfile) or ``(channels, samples)`` (datasets):
    the shorter axis is taken as the channels."""
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise ValueError(f"expected a 1-D or 2-D waveform, got shape {array.shape}")
    channel_axis = 1 if array.shape[1] <= array.shape[0] else 0
    return array.mean(axis=channel_axis)


def decode_audio(
    value: Any, sampling_rate: int, where: str = "", min_samples: int = 1, array_sampling_rate: int | None = None
) -> np.ndarray:
    """Decode one dataset value into a mono float32 waveform at ``sampling_rate``, and check it.

    Accepts ``{"bytes", "path"}`` dicts (``Audio(decode=False)``), decoded ``{"array", "sampling_rate"}`` dicts, path
    strings, and arrays (taken to be at ``array_sampling_rate``, default ``sampling_rate``). Several channels are
    averaged; other rates are resampled with :func:`resample`.

    Args:
        value: the row's audio value.
        sampling_rate: the model's rate.
        where: where the value comes from (``"row 17"``), for messages.
        min_samples: shortest acceptable length after resampling (the backbone's receptive field).
        array_sampling_rate: the rate of bare arrays and of decoded dicts without one (``--audio_sampling_rate``).

    Raises:
        BadAudioError: undecodable, empty, shorter than ``min_samples``, or with NaN/inf samples; the message names
            ``where`` and the file when known.
    """
    source = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    place = (where or "an unknown row") + (f" ({source})" if source else "")
    try:
        array_rate = array_sampling_rate or sampling_rate
        if isinstance(value, dict) and value.get("array") is not None:
            array, rate = np.asarray(value["array"], dtype=np.float32), int(value.get("sampling_rate") or array_rate)
        elif isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and not path:
                raise ValueError("no bytes and no path")
            array, rate = soundfile.read(io.BytesIO(data) if data is not None else path, dtype="float32")
        elif isinstance(value, str):
            array, rate = soundfile.read(value, dtype="float32")
        elif isinstance(value, np.ndarray | list):
            array, rate = np.asarray(value, dtype=np.float32), array_rate
        else:
            raise TypeError(f"expected audio bytes, a path or an array, got {type(value).__name__}")
        array = _to_mono(np.asarray(array, dtype=np.float32))
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError... for broken files
        raise BadAudioError(f"cannot decode the audio at {place}: {err}") from err
    if array.size == 0:
        raise BadAudioError(f"the audio at {place} is empty (0 samples)")
    if not np.isfinite(array).all():
        raise BadAudioError(f"the audio at {place} has NaN or infinite samples")
    array = resample(array, rate, sampling_rate)
    if array.shape[0] < min_samples:
        raise BadAudioError(
            f"the audio at {place} is too short: {array.shape[0]} samples at {sampling_rate} Hz, the model needs at "
            f"least {min_samples} ({min_samples / sampling_rate * 1000:.1f} ms, its convolutional receptive field)"
        )
    return array


def clip_seconds(value: Any, sampling_rate: int = 16000) -> float:
    """A clip's duration from its file header (no decoding), or from its length for arrays (at ``sampling_rate``);
    0 when it cannot be read (the clip is reported when decoded)."""
    try:
        if isinstance(value, dict) and value.get("array") is not None:
            return len(value["array"]) / float(value.get("sampling_rate") or sampling_rate)
        if isinstance(value, dict):
            data = value.get("bytes")
            return float(soundfile.info(io.BytesIO(data) if data is not None else value["path"]).duration)
        if isinstance(value, str):
            return float(soundfile.info(value).duration)
        return len(value) / float(sampling_rate)
    except Exception:  # broken files are named when they are decoded
        return 0.0


def undecoded_audio(ds: Dataset | IterableDataset, column: str) -> Dataset | IterableDataset:
    """``ds`` with an ``Audio`` ``column`` yielding raw ``{"bytes", "path"}``, to be decoded by :func:`decode_audio`."""
    feature = ds.features[column] if ds.features is not None else None
    if isinstance(feature, datasets.Audio) and feature.decode:
        return ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def prepare_audio(
    ds: Dataset | IterableDataset,
    column: str,
    sampling_rate: int,
    min_samples: int = 1,
    on_bad_example: OnBadExample = "error",
    array_sampling_rate: int | None = None,
) -> tuple[Dataset | IterableDataset, int]:
    """``ds`` ready for an audio collator: raw values in ``column`` (:func:`undecoded_audio`), unusable clips handled
    before batching by the policy ``on_bad_example`` (:func:`~hf_ssl.data.checks.prepare_rows`).

    Args:
        ds: the loaded split, map-style or streamed.
        column: the audio column.
        sampling_rate: the model's rate (clips are resampled to it before the length check).
        min_samples: shortest usable clip, e.g. ``Wav2VecConfig.receptive_field``.
        on_bad_example: ``"error"`` raises naming the rows; ``"skip"`` drops them and counts them.
        array_sampling_rate: the rate of bare arrays (see :func:`decode_audio`).

    Returns:
        ``(dataset, number of rows skipped)``; the count is ``0`` for a streamed dataset (its skips are logged).

    Raises:
        BadAudioError: listing the first unusable rows and why (``on_bad_example="error"``).
        UsageError: no column ``column``.
    """
    if ds.column_names is not None and column not in ds.column_names:
        raise UsageError(f"no audio column {column!r}; columns: {', '.join(ds.column_names)}")
    check = functools.partial(
        decode_audio, sampling_rate=sampling_rate, min_samples=min_samples, array_sampling_rate=array_sampling_rate
    )
    kind = ExampleCheck(check, BadAudioError, "audio examples", batch_size=256)
    return prepare_rows(undecoded_audio(ds, column), column, kind, on_bad_example)


def _is_array_column(feature: Any) -> bool:
    """A column of bare sample arrays (a list of numbers per row)."""
    inner = getattr(feature, "feature", None)
    return isinstance(feature, datasets.List | datasets.Sequence) and isinstance(inner, datasets.Value)


def find_audio_column(ds: Dataset | IterableDataset, column: str | None) -> str:
    """The audio column: detected (an ``Audio`` feature or a column of paths) or named; a named column may also
    hold bare sample arrays (at ``--audio_sampling_rate``)."""
    features = ds.features
    if column is not None and features is not None and column in features and _is_array_column(features[column]):
        return column
    return find_column(ds, "audio", column)


def prepare_speech_pretraining(
    ds: Dataset | IterableDataset, args: AudioDataArguments, sampling_rate: int, min_samples: int
) -> tuple[Dataset | IterableDataset, str, int]:
    """The data preparation of the speech pretraining objectives (wav2vec 2.0, data2vec audio): the audio column
    found (:func:`find_audio_column`), ``--audio_sampling_rate`` checked, and the clips checked (or filtered when
    streamed) to decode and last at least ``min_samples`` at ``sampling_rate`` (:func:`prepare_audio`).

    Returns:
        ``(dataset, audio column, number of rows skipped)``.

    Raises:
        UsageError: no audio column, or an ``--audio_sampling_rate`` below 1.
    """
    column = find_audio_column(ds, args.audio_column)
    if args.audio_sampling_rate is not None and args.audio_sampling_rate < 1:
        raise UsageError(f"--audio_sampling_rate must be a positive number of Hz, got {args.audio_sampling_rate}")
    ds, skipped = prepare_audio(
        ds,
        column,
        sampling_rate,
        min_samples=min_samples,
        on_bad_example=args.on_bad_example,
        array_sampling_rate=args.audio_sampling_rate,
    )
    return ds, column, skipped


def feature_extractor_for(config: Any) -> Wav2Vec2FeatureExtractor:
    """The ``Wav2Vec2FeatureExtractor`` that does what pretraining's collator
    (:class:`~hf_ssl.data.collators.AudioCollator`) does at ``config.sampling_rate`` (zero-mean unit-variance
    normalisation, zero padding, attention masks): saved with every speech run and export, so evaluation and
    fine-tuning preprocess clips as pretraining did."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=config.sampling_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


@dataclass
class AudioDataArguments:
    """Data flags of audio objectives."""

    audio_column: str | None = field(
        default=None,
        metadata={
            "help": "Audio column (default: the first Audio column, or a column of file paths named audio/path/...); "
            "a column of bare sample arrays also works when named, with --audio_sampling_rate."
        },
    )
    on_bad_example: OnBadExample = field(
        default="error",
        metadata={
            "help": "Unusable clips (undecodable, empty, shorter than the receptive field, NaN): 'error' stops "
            "before training naming their rows; 'skip' drops them and counts them."
        },
    )
    audio_sampling_rate: int | None = field(
        default=None,
        metadata={
            "help": "Sample rate of bare arrays (a column of numbers, or decoded clips without a rate); files carry "
            "their own. Default: the model's sampling_rate."
        },
    )

    def __post_init__(self) -> None:
        check_on_bad_example(self.on_bad_example)


# --- embedded default data: synthesised vowel "words" -------------------------------------------------------------

# first two formants (Hz) of five vowels, after Peterson & Barney (1952)
_VOWELS = {"a": (730, 1090), "e": (530, 1840), "i": (270, 2290), "o": (570, 840), "u": (300, 870)}
DEFAULT_AUDIO_WORDS = ("ai", "ue", "oai", "iu", "eou", "ao")
DEFAULT_AUDIO_DATASET = "synthetic_words"
"""Name of the embedded default audio set (:func:`load_default_audio`), as ``--dataset_name`` and in results."""
_SPLIT_SIZES = {"train": 240, "test": 60}
_SPLIT_SEEDS = {"train": 0, "test": 1}


def _synthesise_word(word: str, rng: np.random.Generator, sampling_rate: int) -> np.ndarray:
    """A voiced "word": a harmonic source at a random pitch, shaped by each vowel's formants in turn, with gliding
    transitions, random tempo, loudness and background noise."""
    f0 = rng.uniform(90.0, 240.0)  # the "speaker"
    vowel_seconds = rng.uniform(0.15, 0.28)
    n = int(len(word) * vowel_seconds * sampling_rate)
    t = np.arange(n) / sampling_rate
    # formant tracks: piecewise constant per vowel, smoothed into glides of ~40 ms
    per_vowel = np.array([_VOWELS[v] for v in word], dtype=np.float64)  # (V, 2)
    index = np.minimum((t / vowel_seconds).astype(int), len(word) - 1)
    tracks = per_vowel[index]  # (n, 2)
    width = max(1, int(0.04 * sampling_rate))
    kernel = np.ones(width) / width
    tracks = np.stack(
        [np.convolve(np.pad(tr, (width, width), mode="edge"), kernel, "same")[width:-width] for tr in tracks.T], 1
    )
    pitch = f0 * (1.0 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))  # gentle intonation
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    signal = np.zeros(n)
    for h in range(1, int(min(4000.0, sampling_rate / 2 - 200) // f0) + 1):
        freq = h * pitch
        gain = sum(1.0 / (1.0 + ((freq - tracks[:, k]) / 90.0) ** 2) for k in range(2)) / h**0.5
        signal += gain * np.sin(h * phase)
    envelope = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.03)  # 30 ms fade in and out
    signal *= envelope * rng.uniform(0.3, 0.9) / (np.abs(signal).max() + 1e-9)
    lead = np.zeros(int(rng.uniform(0.02, 0.15) * sampling_rate))
    trail = np.zeros(int(rng.uniform(0.02, 0.15) * sampling_rate))
    signal = np.concatenate([lead, signal, trail])
    signal += rng.normal(0.0, 0.005, signal.shape)
    return signal.astype(np.float32)


@functools.lru_cache(maxsize=4)
def load_default_audio(split: str = "train", sampling_rate: int = 16000) -> Dataset:
    """The embedded default audio set: synthesised vowel "words", generated (no download), fixed seed per split.

    Six classes (:data:`DEFAULT_AUDIO_WORDS`), each a sequence of 2-3 vowels made by formant synthesis with a random
    pitch, tempo, loudness and noise, 0.4-1.2 s long: structure a model can learn (which vowels, in which order)
    and labels to probe it with. 240 training and 60 test clips, generated once per process (cached).

    Returns:
        A ``Dataset`` with ``audio`` (``Audio(decode=False)``: 16-bit WAV bytes) and ``label`` (``ClassLabel``).
    """
    if split not in _SPLIT_SIZES:
        raise UsageError(f"split must be one of {', '.join(map(repr, _SPLIT_SIZES))}, got {split!r}")
    rng = np.random.default_rng(_SPLIT_SEEDS[split])
    audio, labels = [], []
    for i in range(_SPLIT_SIZES[split]):
        label = i % len(DEFAULT_AUDIO_WORDS)
        buffer = io.BytesIO()
        soundfile.write(
            buffer,
            _synthesise_word(DEFAULT_AUDIO_WORDS[label], rng, sampling_rate),
            sampling_rate,
            format="WAV",
            subtype="PCM_16",
        )
        audio.append({"bytes": buffer.getvalue(), "path": f"synth_{split}_{i:04d}.wav"})
        labels.append(label)
    # built as a plain {bytes, path} struct, then cast: Audio.encode_example would import torchcodec
    raw = datasets.Features(
        {
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
            "label": datasets.ClassLabel(names=list(DEFAULT_AUDIO_WORDS)),
        }
    )
    ds = Dataset.from_dict({"audio": audio, "label": labels}, features=raw)
    return ds.cast_column("audio", datasets.Audio(sampling_rate=sampling_rate, decode=False))


register_embedded_dataset(DEFAULT_AUDIO_DATASET, load_default_audio)
