"""The bad-input matrix: awkward or broken images, text, audio, labels and checkpoints, each run through the real
``hf-ssl`` entry point with tiny models. Every case ends one of three ways, and nothing else passes:

- ``error``: exit status 2 and exactly one ``hf-ssl: error: ...`` line on stderr, naming the file, row, flag or
  column at fault; no traceback, and nothing saved;
- ``skip``: the run trains, and its record (``hf_ssl_run.json``) counts the dropped rows in ``num_skipped``;
- ``works``: the input is converted (colour modes, sampling rates, channels, a larger vocabulary) and the run trains
  with a finite loss.

The README's "Bad input" section lists the same cases (checked by the last test here).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import datasets
import numpy as np
import pytest
import soundfile
from PIL import Image
from test_first_hour import QUIET, TINY

from hf_ssl.cli import main
from hf_ssl.data.text import load_default_text, train_tokenizer

TESTS = Path(__file__).resolve().parent
README = TESTS.parent / "README.md"
HANG_SECONDS = 120  # a case that takes longer has hung (each takes a few seconds)


def _sibling_test_module(relative: str) -> ModuleType:
    """A test module of a subfolder (not importable by name from here), loaded for its helpers and tiny flags."""
    path = TESTS / relative
    sys.path.insert(0, str(path.parent))  # for its own sibling imports
    try:
        spec = importlib.util.spec_from_file_location(f"_bad_input_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


_AUDIO_TESTS = _sibling_test_module("data/test_audio.py")
_MLM_TESTS = _sibling_test_module("models/test_mlm_objective.py")
TINY_WAV2VEC = _AUDIO_TESTS.TINY_WAV2VEC_FLAGS  # 8 kHz, 1-second crops, batch 4, one step
TINY_MLM = [*_MLM_TESTS.TINY_FLAGS, "--max_steps", "1"]  # hidden 32, 2 layers, 32-token blocks, batch 8
RATE = _AUDIO_TESTS.RATE
tone = _AUDIO_TESTS.tone


# ---------------------------------------------------------------------------------------------- inputs


def _images(tmp: Path, good: int = 6, **odd: Callable[[Path], None]) -> Path:
    """An imagefolder ``tmp/images`` (one class) of ``good`` 12x12 RGB PNGs, plus one file per ``odd`` writer,
    called with the file's path (its name: the keyword, with ``_`` for the dot)."""
    folder = tmp / "images" / "train" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(good):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    for name, write in odd.items():
        write(folder / name.replace("_", "."))
    return tmp / "images"


def _rgb(size: int = 12, seed: int = 1) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _simclr(tmp: Path, dataset: Path | str, *flags: str) -> list[str]:
    return ["pretrain", "simclr", *TINY, *QUIET, "--dataset_name", str(dataset), "--max_steps", "1",
            "--per_device_train_batch_size", "4", "--output_dir", str(tmp / "run"), *flags]  # fmt: skip


def _lines(count: int = 60) -> list[str]:
    return list(load_default_text(f"train[:{count}]")["text"])


def _text_file(tmp: Path, content: str | bytes, name: str = "corpus.txt") -> Path:
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _mlm(tmp: Path, dataset: Path | str | None, *flags: str) -> list[str]:
    data = [] if dataset is None else ["--dataset_name", str(dataset)]
    return ["pretrain", "mlm", *data, *TINY_MLM, "--output_dir", str(tmp / "run"), *flags]


def _clips(tmp: Path, good: int = 6, **odd: Callable[[Path], None]) -> Path:
    """A folder ``tmp/clips`` of ``good`` one-second 8 kHz tones (WAV), plus one file per ``odd`` writer."""
    folder = tmp / "clips"
    folder.mkdir()
    for i in range(good):
        soundfile.write(folder / f"clip{i}.wav", tone(1.0, RATE, 200.0 + 40 * i), RATE)
    for name, write in odd.items():
        write(folder / name.replace("_", "."))
    return folder


def _wav2vec(tmp: Path, dataset: Path, *flags: str) -> list[str]:
    return ["pretrain", "wav2vec", "--dataset_name", str(dataset), *TINY_WAV2VEC, "--logging_steps", "1",
            "--output_dir", str(tmp / "run"), *flags]  # fmt: skip


def _labelled_images(tmp: Path, labels: list) -> Path:
    """A folder of ``train.parquet`` / ``test.parquet``: 12x12 images with the given labels (any type)."""
    folder = tmp / "labelled"
    folder.mkdir()
    for split in ("train", "test"):
        rows = {"image": [_rgb(seed=i) for i in range(len(labels))], "label": labels}
        ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())
        ds.to_parquet(str(folder / f"{split}.parquet"))
    return folder


def _evaluate(checkpoint: Path, dataset: Path | str, *flags: str) -> list[str]:
    return ["evaluate", "--model_name_or_path", str(checkpoint), "--dataset_name", str(dataset), "--baselines",
            "false", "--knn_k", "3", *flags]  # fmt: skip


def _truncated(tmp: Path, checkpoint: Path) -> Path:
    """A copy of ``checkpoint`` whose ``model.safetensors`` lost its second half (a copy or a write cut short)."""
    copy = tmp / "truncated"
    shutil.copytree(checkpoint, copy)
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return copy


def _cut_png(path: Path) -> None:
    _rgb(64).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _nan_wav(path: Path) -> None:
    wave = tone(1.0, RATE)
    wave[100:110] = np.nan
    soundfile.write(path, wave, RATE, subtype="FLOAT")


def _bigger_tokenizer(tmp: Path) -> list[str]:
    tokenizer = train_tokenizer(_lines(200), vocab_size=400)
    tokenizer.save_pretrained(tmp / "tokenizer")
    encoder = {**json.loads(TINY_MLM[TINY_MLM.index("--encoder") + 1]), "vocab_size": 100}
    return _mlm(tmp, None, "--tokenizer_name", str(tmp / "tokenizer"), "--encoder", json.dumps(encoder))


# ---------------------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    """One row of the matrix.

    Args:
        id: the case's name (also its row in the README).
        modality: ``image``, ``text``, ``audio``, or the command's data kind for ``evaluate`` / ``export``.
        argv: ``(tmp folder, checkpoint getter) -> hf-ssl arguments``; it writes the case's files under the folder.
        outcome: ``error``, ``skip`` or ``works`` (see the module docstring).
        says: fragments of the error line (``error``) or of the log (``skip``, ``works``); ``{tmp}`` is the folder.
        skipped: ``num_skipped`` the run record must hold (``skip``).
    """

    id: str
    modality: str
    argv: Callable[[Path, Callable[[], Path]], list[str]]
    outcome: str
    says: tuple[str, ...] = ()
    skipped: int = 0


CASES = [
    # images (SimCLR)
    Case("cmyk-jpeg", "image", lambda t, c: _simclr(t, _images(t, cmyk_jpg=lambda p: _rgb().convert("CMYK").save(p))),
         "works"),
    Case("grayscale-rgba-palette-png", "image", lambda t, c: _simclr(t, _images(
        t, gray_png=lambda p: _rgb().convert("L").save(p), rgba_png=lambda p: _rgb().convert("RGBA").save(p),
        palette_png=lambda p: _rgb().convert("P").save(p))), "works"),
    Case("non-image-file-in-imagefolder", "image",
         lambda t, c: _simclr(t, _images(t, notes_txt=lambda p: p.write_text("not an image"))), "works"),
    Case("zero-byte-image", "image", lambda t, c: _simclr(t, _images(t, empty_png=lambda p: p.write_bytes(b""))),
         "error", ("1 of 7 images are unusable", "empty.png", "--on_bad_example skip")),
    Case("zero-byte-image-skipped", "image", lambda t, c: _simclr(
        t, _images(t, empty_png=lambda p: p.write_bytes(b"")), "--on_bad_example", "skip"), "skip",
         ("skipping 1 of 7 unusable images",), skipped=1),
    Case("old-flag-on-bad-image", "image", lambda t, c: _simclr(
        t, _images(t, empty_png=lambda p: p.write_bytes(b"")), "--on_bad_image", "skip"), "skip",
         ("--on_bad_image is deprecated: use --on_bad_example skip", "skipping 1 of 7 unusable images"), skipped=1),
    Case("random-bytes-image", "image", lambda t, c: _simclr(t, _images(
        t, noise_jpg=lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)))), "error", ("noise.jpg", "row")),
    Case("truncated-png", "image", lambda t, c: _simclr(t, _images(t, cut_png=_cut_png)), "error",
         ("cut.png", "row 6")),
    Case("every-image-bad-with-skip", "image", lambda t, c: _simclr(t, _images(
        t, good=0, a_png=lambda p: p.write_bytes(b""), b_png=lambda p: p.write_bytes(b"x")), "--on_bad_example",
        "skip"), "error", ("none of the 2 images is usable",)),
    Case("image-column-missing", "image", lambda t, c: _simclr(t, _images(t), "--image_column", "photo"), "error",
         ("column 'photo' not found", "image (Image)")),
    Case("dataset-path-missing", "image", lambda t, c: _simclr(t, t / "no" / "such"), "error",
         ("--dataset_name {tmp}/no/such: no such file or folder",)),
    Case("image-size-too-small-for-backbone", "image", lambda t, c: _simclr(t, _images(t), "--image_size", "8"),
         "error", ("--image_size 8: backbone 'convnext_atto' cannot take 8 x 8 images",)),
    Case("mask-ratio-out-of-range", "image", lambda t, c: ["pretrain", "mae", "--mask_ratio", "1", "--output_dir",
         str(t / "run")], "error", ("mask_ratio must be in (0, 1), got 1.0",)),
    # text (MLM)
    Case("text-nul-bytes", "text", lambda t, c: _mlm(t, _text_file(
        t, "\n".join([*_lines(), "a line with a \x00 in it", "\x00\x00\x00"]) + "\n")), "skip",
         ("skipped 2 of 62 rows", "NUL"), skipped=2),
    Case("text-invalid-utf8", "text", lambda t, c: _mlm(t, _text_file(
        t, ("\n".join(_lines()) + "\n").encode() + b"caf\xe9 au lait\n")), "skip", ("skipped 1 of 61 rows",),
         skipped=1),
    Case("text-invalid-utf8-strict", "text", lambda t, c: _mlm(t, _text_file(
        t, ("\n".join(_lines()) + "\n").encode() + b"caf\xe9 au lait\n"), "--on_bad_example", "error"), "error",
         ("row 60 of column 'text' (line 61 of a text file)", "--on_bad_example skip")),
    Case("text-empty-lines", "text", lambda t, c: _mlm(t, _text_file(t, "\n".join(["", *_lines(), "   ", ""]) + "\n")),
         "skip", ("dropped 3 of 63 rows",), skipped=3),
    Case("text-100k-character-line", "text", lambda t, c: _mlm(t, _text_file(
        t, "\n".join([*_lines(), "x" * 100_000, "word " * 20_000]) + "\n")), "works"),
    Case("text-empty-file", "text", lambda t, c: _mlm(t, _text_file(t, "")), "error",
         ("--dataset_name {tmp}/corpus.txt: cannot read it",)),
    Case("text-every-line-empty", "text", lambda t, c: _mlm(t, _text_file(t, "\n  \n\t\n\n")), "error",
         ("column 'text' holds no text: all 4 rows are empty",)),
    Case("text-column-missing", "text", lambda t, c: _mlm(t, _text_file(
        t, "text,label\n" + "".join(f"{line.replace(',', ' ')},1\n" for line in _lines()), "rows.csv"),
        "--text_column", "sentence"), "error", ("column 'sentence' not found", "text (")),
    Case("tokenizer-larger-than-vocab", "text", lambda t, c: _bigger_tokenizer(t), "works",
         ("encoder vocab_size 100 -> 400",)),
    Case("config-file-unknown-key", "text", lambda t, c: ["pretrain", "mlm", "--config", str(_text_file(
        t, "mlm_probabilty: 0.2\nmax_steps: 1\n", "run.yaml"))], "error",
         ("--config {tmp}/run.yaml: unknown keys ['mlm_probabilty']",)),
    Case("mlm-probability-zero", "text", lambda t, c: _mlm(t, None, "--mlm_probability", "0"), "error",
         ("mlm_probability must be in (0, 1], got 0.0",)),
    # audio (wav2vec 2.0)
    Case("corrupt-audio-file", "audio", lambda t, c: _wav2vec(t, _clips(
        t, broken_wav=lambda p: p.write_bytes(b"RIFF not really a wave file"))), "error",
         ("1 of 7 audio examples are unusable", "broken.wav", "--on_bad_example skip")),
    Case("corrupt-audio-file-skipped", "audio", lambda t, c: _wav2vec(t, _clips(
        t, broken_wav=lambda p: p.write_bytes(b"RIFF not really a wave file")), "--on_bad_example", "skip"), "skip",
         ("skipping 1 of 7 unusable audio examples",), skipped=1),
    Case("too-short-clip", "audio", lambda t, c: _wav2vec(t, _clips(
        t, click_wav=lambda p: soundfile.write(p, tone(0.001, RATE), RATE))), "error",
         ("click.wav", "is too short: 8 samples")),
    Case("nan-samples", "audio", lambda t, c: _wav2vec(t, _clips(t, nan_wav=_nan_wav)), "error",
         ("nan.wav", "NaN or infinite samples")),
    Case("every-clip-bad-with-skip", "audio", lambda t, c: _wav2vec(t, _clips(
        t, good=0, a_wav=lambda p: p.write_bytes(b""), b_wav=lambda p: p.write_bytes(b"RIFF")), "--on_bad_example",
        "skip"), "error", ("none of the 2 audio examples is usable",)),
    Case("audio-column-missing", "audio", lambda t, c: _wav2vec(t, _clips(t), "--audio_column", "speech"), "error",
         ("column 'speech' not found", "audio (Audio)")),
    Case("clip-at-44-1-khz", "audio", lambda t, c: _wav2vec(t, _clips(
        t, hifi_wav=lambda p: soundfile.write(p, tone(1.0, 44100), 44100))), "works"),
    Case("stereo-clip", "audio", lambda t, c: _wav2vec(t, _clips(
        t, stereo_wav=lambda p: soundfile.write(p, np.stack([tone(1.0, RATE), tone(1.0, RATE, 300.0)], 1), RATE))),
         "works"),
    # evaluation and export of a checkpoint (a tiny SimCLR run)
    Case("evaluate-float-labels", "image", lambda t, c: _evaluate(c(), _labelled_images(t, [0.0, 1.0] * 4)),
         "error", ("label column 'label' holds Value('float", "--label_column")),
    Case("evaluate-single-class", "image", lambda t, c: _evaluate(c(), _labelled_images(t, [3] * 8)), "error",
         ("label column 'label' holds a single class (3) in all 8 rows",)),
    Case("evaluate-truncated-weights", "image", lambda t, c: _evaluate(_truncated(t, c()), "digits"), "error",
         ("--model_name_or_path {tmp}/truncated/model.safetensors: truncated",)),
    Case("export-truncated-weights", "image", lambda t, c: ["export", str(_truncated(t, c())), str(t / "out")],
         "error", ("checkpoint {tmp}/truncated/model.safetensors: truncated",)),
    Case("export-into-non-empty-folder", "image", lambda t, c: [
        "export", str(c()), str(_text_file(t, "mine", "notes.txt").parent)], "error",
         ("{tmp} holds files that are not part of an export (notes.txt)",)),
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A SimCLR checkpoint of one step on eight tiny images, for the evaluation and export cases."""
    tmp = tmp_path_factory.mktemp("checkpoint")
    main(_simclr(tmp, _images(tmp, good=8)))
    return tmp / "run"


@pytest.fixture
def no_hang():
    """Fail a case that runs longer than :data:`HANG_SECONDS` instead of waiting for it forever."""

    def hung(signum, frame):
        raise TimeoutError(f"the case ran for more than {HANG_SECONDS} s: it hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _finite_losses(run: Path) -> list[float]:
    info = json.loads((run / "hf_ssl_run.json").read_text())
    return [entry["loss"] for entry in info["log_history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path, request, capsys, no_hang):
    argv = case.argv(tmp_path, lambda: request.getfixturevalue("checkpoint"))
    capsys.readouterr()  # only what the command itself prints
    says = [fragment.format(tmp=tmp_path) for fragment in case.says]
    run = tmp_path / "run"
    if case.outcome == "error":
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("hf-ssl: error:")]
        assert exit_info.value.code == 2 and len(lines) == 1, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        for fragment in says:
            assert fragment in lines[0]
        assert not (run / "model.safetensors").exists()
        return
    main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "hf-ssl: error" not in err
    info = json.loads((run / "hf_ssl_run.json").read_text())
    assert info["num_skipped"] == (case.skipped if case.outcome == "skip" else 0)
    assert info["global_step"] >= 1
    losses = _finite_losses(run)
    assert losses and all(math.isfinite(loss) for loss in losses)
    for fragment in says:
        assert fragment in err


def test_overlong_words_are_left_out_of_tokenizer_training():
    """A word of thousands of characters (a line without spaces) changes nothing in a trained vocabulary: it is
    left out of training, whose merge loops would otherwise take time quadratic in its length."""
    lines = _lines(100)
    for kind in ("wordpiece", "bpe"):
        plain = train_tokenizer(lines, vocab_size=300, kind=kind).get_vocab()
        with_long_word = train_tokenizer([*lines, "ab" * 2_500, "x" * 101], vocab_size=300, kind=kind).get_vocab()
        assert with_long_word == plain, kind


def test_every_modality_has_cases():
    assert len(CASES) >= 20 and len({case.id for case in CASES}) == len(CASES)
    for modality in ("image", "text", "audio"):
        assert sum(case.modality == modality for case in CASES) >= 5


def test_readme_lists_every_case():
    """The README's "Bad input" table has one row per case, by id, with the same outcome."""
    text = README.read_text()
    assert "\n## Bad input\n" in text, "the README has no 'Bad input' section"
    section = text.split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \|[^|]*\| (error|skip|works)\b", section, flags=re.M))
    assert rows == {case.id: case.outcome for case in CASES}
