"""One loader for every way users hold data, and column detection with clear errors.

``load_data`` takes a Hub dataset id (``cifar10``), a local folder (an ``imagefolder`` / ``audiofolder`` tree, a folder
of parquet/csv/json files, or a ``save_to_disk`` folder), a single data file, or nothing at all (the embedded
default, which needs no download); for images also ``digit-scenes``, a harder set generated from the digits. Several
sources (a list, or names separated by commas) are loaded one by one and concatenated on the columns they share.
``find_column`` picks the column a modality needs, by feature type or name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import datasets
import pyarrow as pa
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    IterableDataset,
    concatenate_datasets,
    load_dataset,
    load_dataset_builder,
    load_from_disk,
)
from datasets.exceptions import DatasetGenerationError

from hf_ssl.errors import UsageError

logger = logging.getLogger(__name__)

Modality = Literal["image", "audio", "text"]

_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".arrow": "arrow",
    ".txt": "text",
}
_FEATURE_TYPES = {"image": datasets.Image, "audio": datasets.Audio}
_COLUMN_NAMES = {
    "image": ("image", "img", "images", "picture", "image_path", "path", "file", "filename"),
    "audio": ("audio", "speech", "audio_path", "path", "file", "filename"),
    "text": ("text", "sentence", "content", "document"),
}
_LABEL_NAMES = ("label", "labels", "class", "target", "fine_label", "coarse_label")
DEFAULT_DATASET = "digits"


def _digits_split(split: str, test_size: int, name: str):
    """scikit-learn's digits and the indices of ``split`` (datasets' syntax) under the fixed seeded shuffle."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    shuffled = np.random.default_rng(0).permutation(len(digits.images))
    splits = {"train": shuffled[test_size:], "test": shuffled[:test_size]}
    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({k: len(v) for k, v in splits.items()})
    except (ValueError, AssertionError) as err:
        raise UsageError(f"the embedded {name!r} dataset has splits 'train' and 'test': {err}") from err
    return digits, np.concatenate([splits[p.splitname][p.from_ : p.to] for p in parts])


def _digit_features() -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})


def load_digits_dataset(split: str = "train", test_size: int = 297) -> Dataset:
    """The embedded default: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), no download needed.

    A fixed seeded shuffle puts ``1797 - test_size`` images in ``train`` and ``test_size`` in ``test``; ``split``
    takes the datasets library's syntax (``"train[:500]"``, ``"test[:50%]"``, ``"train+test"``).
    """
    from PIL import Image

    digits, order = _digits_split(split, test_size, DEFAULT_DATASET)
    pixels = (digits.images[order] * (255 / 16)).round().astype("uint8")
    return Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target[order].tolist()},
        features=_digit_features(),
    )


DIGIT_SCENES_DATASET = "digit-scenes"
"""Name of the harder embedded image set (:func:`load_digit_scenes`), as ``--dataset_name`` and in results."""
_SCENE = {"size": 32, "glyph": (20, 30), "noise": 0.03}


def load_digit_scenes(split: str = "train", test_size: int = 297) -> Dataset:
    """A harder embedded image set, generated from scikit-learn's digits (no download; under 1 s of CPU).

    The same 1,797 digits, labels and train/test split as :func:`load_digits_dataset`, each drawn as a 32x32 RGB
    "scene": the digit upsampled to a random side of 20-30 px at a random position, in a dark ink of random hue on
    a lighter background of random hue, saturation and brightness, plus pixel noise. Colour, size and position
    vary from image to image while the class is the digit's shape alone: raw pixels and a random-init network are
    distracted by the colours (about 50-60% accuracy, where the plain digits give 97-99%), which leaves room for a
    network taught invariance to crops and colour (SimCLR's augmentations) to do better. Deterministic: the random
    draws are made for all 1,797 digits from one seed and indexed, so a slice holds the same images as the split.
    """
    import numpy as np
    from PIL import Image

    digits, order = _digits_split(split, test_size, DIGIT_SCENES_DATASET)
    size, (low, high), noise = _SCENE["size"], _SCENE["glyph"], _SCENE["noise"]
    # every image's draws, made for all 1,797 digits at once and then indexed: a slice holds the same images
    rng = np.random.default_rng(1)
    n = len(digits.images)
    sides = rng.integers(low, high + 1, n)
    corners = (rng.uniform(size=(n, 2)) * (size - sides[:, None] + 1)).astype(int)
    background = _hsv_to_rgb(rng.uniform(size=n), rng.uniform(0.1, 0.6, n), rng.uniform(0.6, 1.0, n))
    ink = _hsv_to_rgb(rng.uniform(size=n), rng.uniform(0.2, 0.9, n), rng.uniform(0.0, 0.3, n))
    speckle = rng.normal(0.0, noise, (n, size, size, 3)).astype(np.float32)
    images = []
    for i in order:
        canvas = background[i] + speckle[i]
        glyph = Image.fromarray((digits.images[i] * (255 / 16)).round().astype("uint8"), mode="L")
        alpha = np.asarray(glyph.resize((sides[i], sides[i]), Image.BILINEAR), dtype=np.float32)[..., None] / 255
        (y, x), side = corners[i], sides[i]
        canvas[y : y + side, x : x + side] += (ink[i] - canvas[y : y + side, x : x + side]) * alpha
        images.append(Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype("uint8")))
    return Dataset.from_dict({"image": images, "label": digits.target[order].tolist()}, features=_digit_features())


def _hsv_to_rgb(hue, saturation, value):
    """Vectorised ``colorsys.hsv_to_rgb``: arrays of shape ``(n,)`` in [0, 1] to ``(n, 3)`` float32."""
    import numpy as np

    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    rgb = value[:, None] - (value * saturation)[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return rgb.astype(np.float32)


EMBEDDED_DATASETS: dict[str, Callable[[str], Dataset]] = {
    DEFAULT_DATASET: load_digits_dataset,
    DIGIT_SCENES_DATASET: load_digit_scenes,
}
"""The generated or bundled datasets ``--dataset_name`` reaches by name, with no download (each data kind's module
registers its own with :func:`register_embedded_dataset`); never mistaken for Hub ids."""


def register_embedded_dataset(name: str, loader: Callable[[str], Dataset]) -> None:
    """Make ``loader(split)`` the embedded dataset ``--dataset_name name`` loads."""
    EMBEDDED_DATASETS[name] = loader


def dataset_sources(dataset_name: str | Sequence[str] | None) -> list[str]:
    """The sources ``dataset_name`` names: a list as given, or one string split at its commas (unless the whole
    string is an existing path or an embedded dataset's name). ``None`` or ``""`` gives no source."""
    if not dataset_name:
        return []
    if not isinstance(dataset_name, str):
        return [source for name in dataset_name for source in dataset_sources(name)]
    if "," not in dataset_name or os.path.exists(dataset_name) or dataset_name in EMBEDDED_DATASETS:
        return [dataset_name]
    return [name.strip() for name in dataset_name.split(",") if name.strip()]


def load_data(
    dataset_name: str | Sequence[str] | None,
    split: str = "train",
    config_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    default: tuple[str, Callable[[str], Dataset]] | None = None,
) -> Dataset | IterableDataset:
    """Load one split of a dataset, wherever it lives, and log where it came from (:func:`data_source`).

    Args:
        dataset_name: ``None`` or the default's name for the embedded default; another embedded set by name
            (:data:`EMBEDDED_DATASETS`, e.g. ``digits`` or ``digit-scenes``); a folder
            (``imagefolder``-style tree, a folder of data files whose names carry the split, or a ``save_to_disk``
            folder); a single
            ``.parquet/.csv/.tsv/.json/.jsonl/.arrow/.txt`` file (its only split is ``train``); else a Hub id.
            A folder of audio files (``audiofolder`` layout: flat, in class subfolders, or in split subfolders) is
            read without torchcodec: its ``audio`` column is ``Audio(decode=False)``, decoded later by
            :func:`hf_ssl.data.audio.decode_audio`. Several sources (a list, or a string of names separated by
            commas) are each loaded as one would be, ``split`` taken from each, and concatenated on the columns
            they all have (:func:`concatenate_sources`).
        split: split name, slices allowed where ``datasets`` allows them (``"train[:5000]"``).
        config_name: the Hub dataset's configuration.
        streaming: return an ``IterableDataset`` that reads lazily.
        cache_dir: where ``datasets`` caches downloads.
        default: ``(name, loader)`` of the embedded dataset loaded when ``dataset_name`` is empty: the objective's
            or evaluation task's ``default_dataset``; ``None``: a name is required.

    Raises:
        UsageError: the split does not exist (the message lists those that do), the dataset is empty, or
            ``dataset_name`` is neither a file, a folder nor a dataset the Hub (or the offline cache) has; several
            sources that share no column, or whose shared columns cannot be made one type.
    """
    sources = dataset_sources(dataset_name)
    if len(sources) > 1:
        parts = [load_data(source, split, config_name, streaming, cache_dir, default) for source in sources]
        return concatenate_sources(sources, parts)
    dataset_name = sources[0] if sources else None
    if not dataset_name and default is None:
        raise UsageError("--dataset_name is required: there is no embedded default dataset for this data kind")
    default_name, default_loader = default or (None, None)
    if dataset_name in (None, "", default_name):
        logger.info("no dataset given: using the embedded default %r (%s split)", default_name, split)
        ds: Dataset | IterableDataset = default_loader(split)
        return ds.to_iterable_dataset() if streaming else ds
    if dataset_name in EMBEDDED_DATASETS and not os.path.exists(dataset_name):
        logger.info("dataset %r (%s split): embedded, generated here with no download", dataset_name, split)
        ds = EMBEDDED_DATASETS[dataset_name](split)
        return ds.to_iterable_dataset() if streaming else ds
    try:
        if os.path.isdir(dataset_name) and _is_saved_dataset(dataset_name):
            saved = load_from_disk(dataset_name)
            # a saved Dataset is one split, called train (as a single data file is)
            splits = dict(saved) if isinstance(saved, DatasetDict) else {"train": saved}
            saved = select_split(splits, split, dataset_name)
            ds = saved.to_iterable_dataset() if streaming else saved
        elif os.path.isdir(dataset_name) and (audio_files := _audio_folder_files(dataset_name)) is not None:
            ds = _load_audio_folder(dataset_name, audio_files, split)
            ds = ds.to_iterable_dataset() if streaming else ds
        elif os.path.isfile(dataset_name):
            builder = _FILE_BUILDERS.get(os.path.splitext(dataset_name)[1].lower())
            if builder is None:
                raise UsageError(f"{dataset_name}: unsupported file type; use one of {sorted(_FILE_BUILDERS)}")
            kwargs: dict[str, Any] = {"delimiter": "\t"} if dataset_name.lower().endswith(".tsv") else {}
            if builder == "text":  # an undecodable line becomes U+FFFD, which the text objectives name or skip
                kwargs["encoding_errors"] = "replace"
            ds = load_dataset(
                builder,
                data_files={"train": dataset_name},
                split=split,
                streaming=streaming,
                cache_dir=cache_dir,
                **kwargs,
            )
        else:
            looks_local = dataset_name.startswith((".", "/", "~")) or dataset_name.endswith(tuple(_FILE_BUILDERS))
            if looks_local and not os.path.exists(dataset_name):
                raise UsageError(f"--dataset_name {dataset_name}: no such file or folder")
            ds = load_dataset(dataset_name, config_name, split=split, streaming=streaming, cache_dir=cache_dir)
    except UsageError:
        raise
    except (DatasetGenerationError, pa.ArrowException) as err:  # a local file that is not what its name says
        cause = err.__cause__ or err
        raise UsageError(f"--dataset_name {dataset_name}: cannot read it: {str(cause).splitlines()[0]}") from err
    except FileNotFoundError as err:
        raise UsageError(f"--dataset_name {dataset_name}: not a local file or folder, and {err}") from err
    except ConnectionError as err:
        raise UsageError(f"--dataset_name {dataset_name}: cannot reach the Hub and no cached copy: {err}") from err
    except ValueError as err:
        if "corresponds to no data" in str(err):  # what datasets says of a split with no rows
            raise UsageError(
                f"dataset {dataset_name!r}, split {split!r} is empty: there is nothing to train on"
            ) from err
        if "split" in str(err).lower():
            if re.match(r"dev\b", split):  # datasets names a folder's dev.* files "validation"
                return load_data(dataset_name, "validation" + split[3:], config_name, streaming, cache_dir, default)
            raise UsageError(f"dataset {dataset_name!r} has no split {split!r}: {err}") from err
        raise
    if isinstance(ds, Dataset) and len(ds) == 0:
        raise UsageError(f"dataset {dataset_name!r}, split {split!r} is empty: there is nothing to train on")
    logger.info("dataset %r, split %r: %s", dataset_name, split, data_source(dataset_name, ds))
    return ds


def data_source(dataset_name: str | Sequence[str] | None, ds: Dataset | IterableDataset | None = None) -> str:
    """Where ``dataset_name`` was read from, in words: a local path (resolved), or a Hub id and the cache files it
    was read from (offline, ``datasets`` may answer a Hub id from a cache another folder of that name left); for
    several sources, each of them."""
    sources = dataset_sources(dataset_name)
    if len(sources) > 1:
        return f"{len(sources)} sources concatenated: " + "; ".join(data_source(source) for source in sources)
    dataset_name = sources[0] if sources else None
    if not dataset_name:
        return "the embedded default dataset"
    if dataset_name in EMBEDDED_DATASETS and not os.path.exists(dataset_name):
        return f"the embedded {dataset_name!r} dataset (no download)"
    if os.path.exists(dataset_name):
        kind = "folder" if os.path.isdir(dataset_name) else "file"
        return f"local {kind} {os.path.abspath(dataset_name)}"
    source = f"Hub dataset {dataset_name!r}"
    files = [f["filename"] for f in getattr(ds, "cache_files", None) or []]
    if files:
        source += f", read from the cache {os.path.dirname(files[0])}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        source += " (offline: only cached data could be used)"
    return source


def concatenate_sources(names: Sequence[str], parts: Sequence[Dataset | IterableDataset]) -> Dataset | IterableDataset:
    """One dataset of ``parts`` (loaded from ``names``), one after the other, on the columns they all have.

    Columns of one kind but different settings are made one type: audio and image columns are cast to
    ``Audio(decode=False)`` / ``Image(decode=False)`` (our code decodes them), class labels are merged into one
    ``ClassLabel`` of all the names, other types are cast to the first source's.

    Raises:
        UsageError: the sources share no column, or a shared column cannot be cast to one type.
    """
    listed = ", ".join(names)
    features = [part.features for part in parts]
    if any(f is None for f in features):  # streamed data whose columns are known only once read
        return concatenate_datasets(list(parts))
    common = [name for name in features[0] if all(name in f for f in features[1:])]
    if not common:
        columns = "; ".join(f"{name}: {', '.join(f)}" for name, f in zip(names, features, strict=True))
        raise UsageError(
            f"--dataset_name {listed}: the sources share no column ({columns}); give them a common column name"
        )
    parts = [part.select_columns(common) for part in parts]
    for column in common:
        kinds = [part.features[column] for part in parts]
        if all(kind == kinds[0] for kind in kinds[1:]):
            continue
        target = _common_feature(kinds)
        try:
            parts = [part if part.features[column] == target else _cast(part, column, target) for part in parts]
        except (TypeError, ValueError, pa.ArrowException) as err:
            types = ", ".join(f"{name}: {_type_name(kind)}" for name, kind in zip(names, kinds, strict=True))
            raise UsageError(
                f"--dataset_name {listed}: column {column!r} has types that do not combine ({types}): {err}"
            ) from err
    ds = concatenate_datasets(list(parts))
    size = f"{len(ds)} rows" if isinstance(ds, Dataset) else "streamed"
    logger.info("concatenated %d sources on the columns %s (%s): %s", len(parts), common, size, listed)
    return ds


def _common_feature(kinds: Sequence[Any]) -> Any:
    """The one feature a column of these ``kinds`` becomes when concatenated."""
    if all(isinstance(kind, datasets.Audio) for kind in kinds):
        return datasets.Audio(decode=False)
    if all(isinstance(kind, datasets.Image) for kind in kinds):
        return datasets.Image(decode=False)
    if all(isinstance(kind, ClassLabel) for kind in kinds):
        return ClassLabel(names=sorted({name for kind in kinds for name in kind.names}))
    return kinds[0]


def _cast(ds: Dataset | IterableDataset, column: str, target: Any) -> Dataset | IterableDataset:
    """``ds`` with ``column`` cast to ``target``; class labels are mapped by name, not by index."""
    source = ds.features[column]
    if isinstance(source, ClassLabel) and isinstance(target, ClassLabel):
        mapping = {i: target.str2int(name) for i, name in enumerate(source.names)}
        ds = ds.cast_column(column, datasets.Value("int64"))
        ds = ds.map(lambda batch: {column: [mapping.get(i, i) for i in batch[column]]}, batched=True)
    return ds.cast_column(column, target)


def _audio_folder_files(path: str) -> dict[str, list[str]] | None:
    """The files of each split, when ``path`` is a folder that ``datasets`` would read as an ``audiofolder``; else
    ``None``. Nothing is read but the listing."""
    audio_extensions = set(_audio_extensions())
    has_audio = any(
        os.path.splitext(name)[1].lower() in audio_extensions for _, _, names in os.walk(path) for name in names
    )
    if not has_audio:
        return None
    try:
        builder = load_dataset_builder(path)
    except Exception:  # let load_dataset give its own error
        return None
    if builder.name != "audiofolder":
        return None
    return {str(split): sorted(str(f) for f in files) for split, files in builder.config.data_files.items()}


def _audio_extensions() -> list[str]:
    from datasets.packaged_modules.audiofolder.audiofolder import AudioFolder

    return AudioFolder.EXTENSIONS


_METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def _load_audio_folder(path: str, files: dict[str, list[str]], split: str) -> Dataset:
    """An ``audiofolder`` tree as ``datasets`` reads it (splits from file or folder names, ``label`` from class
    subfolders, columns from ``metadata.csv/jsonl/parquet`` files keyed by ``file_name``), but with ``audio`` as
    ``Audio(decode=False)``: ``datasets``' own reader encodes every clip through torchcodec, which a plain
    ``pip install`` lacks.

    Raises:
        UsageError: ``split`` names a split the folder does not have, or a metadata file names no ``file_name``.
    """
    wanted = {re.sub(r"\[.*\]$", "", piece.strip()) for piece in split.split("+")}  # "train[:10%]+test" -> names
    missing = sorted(wanted - set(files))
    if missing:
        raise UsageError(f"--dataset_name {path}: no split {missing[0]!r}; the folder has {sorted(files)}")
    clips = [f for found in files.values() for f in _audio_only(found)]
    # class labels from the parent folders, as datasets infers them: files at one depth, in at least two folders
    labels = sorted({os.path.basename(os.path.dirname(f)) for f in clips})
    use_labels = len(labels) > 1 and len({os.path.normpath(f).count(os.sep) for f in clips}) == 1
    splits = {}
    for name in sorted(wanted):
        metadata = [f for f in files[name] if os.path.basename(f) in _METADATA_FILES]
        if metadata:
            ds = _audio_metadata(metadata)
        else:
            audio = _audio_only(files[name])
            ds = Dataset.from_dict({"audio": audio})
            if use_labels:
                names = [os.path.basename(os.path.dirname(f)) for f in audio]
                ds = ds.add_column("label", [labels.index(label) for label in names])
                ds = ds.cast_column("label", ClassLabel(names=labels))
        # a column of paths cast to the Audio type without datasets' encoder (which would import torchcodec)
        splits[name] = ds.cast_column("audio", datasets.Audio(decode=False))
    ds = select_split(splits, split, path)
    logger.info("audio folder %s, split %r: %d clips, read without decoding", path, split, len(ds))
    return ds


def select_split(splits: dict[str, Dataset], split: str, source: str) -> Dataset:
    """The rows of ``split`` (datasets' syntax: ``"train"``, ``"train[:500]"``, ``"test[:10%]+train"``) of
    ``splits``.

    Raises:
        UsageError: a split ``source`` does not have, or a malformed slice; the message names both.
    """
    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({k: len(v) for k, v in splits.items()})
    except (ValueError, AssertionError, KeyError) as err:
        raise UsageError(f"--dataset_name {source}: bad split {split!r} ({err}); its splits: {sorted(splits)}") from err
    pieces = [splits[part.splitname].select(range(part.from_, part.to)) for part in parts]
    return pieces[0] if len(pieces) == 1 else concatenate_datasets(pieces)


def _audio_only(found: list[str]) -> list[str]:
    extensions = set(_audio_extensions())
    return [f for f in found if os.path.splitext(f)[1].lower() in extensions]


def _audio_metadata(metadata_files: list[str]) -> Dataset:
    """The rows of ``metadata.*`` files, their ``file_name`` made a path (relative to the metadata file) in
    ``audio``."""
    import pandas as pd

    frames = []
    for metadata in metadata_files:
        if metadata.endswith(".csv"):
            frame = pd.read_csv(metadata)
        elif metadata.endswith(".jsonl"):
            frame = pd.read_json(metadata, lines=True)
        else:
            frame = pd.read_parquet(metadata)
        key = "file_name" if "file_name" in frame else "audio_file_name"
        if key not in frame:
            raise UsageError(f"{metadata}: no 'file_name' column naming the audio file of each row")
        folder = os.path.dirname(metadata)
        audio = [os.path.join(folder, os.path.normpath(str(name))) for name in frame.pop(key)]
        frame.insert(0, "audio", audio)
        frames.append(frame)
    ds = Dataset.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    return ds.cast_column("audio", datasets.Value("string"))  # pandas' large_string does not cast to Audio


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


def find_column(ds: Dataset | IterableDataset, modality: Modality, column: str | None = None) -> str:
    """The column holding the ``modality`` data: ``column`` if given (checked), else detected.

    Detection takes the first column typed as that modality (``datasets.Image`` / ``datasets.Audio``), else the
    first string column with a conventional name (paths for images and audio, text for text).

    Raises:
        ValueError: naming the column (or listing the columns and their types) when none fits.
    """
    features = ds.features
    if features is None:  # some streaming datasets only know their features after the first row
        features = datasets.Features.from_dict({k: {"_type": "Value", "dtype": "string"} for k in next(iter(ds))})
    described = ", ".join(f"{name} ({_type_name(f)})" for name, f in features.items())
    if column is not None:
        if column not in features:
            raise UsageError(f"column {column!r} not found; the dataset has: {described}")
        if not _fits(features[column], modality):
            raise UsageError(
                f"column {column!r} holds {_type_name(features[column])}, not {modality} data; the dataset has: "
                f"{described}"
            )
        return column
    typed = _FEATURE_TYPES.get(modality)
    for name, feature in features.items():
        if typed is not None and isinstance(feature, typed):
            return name
    for name in _COLUMN_NAMES[modality]:
        if name in features and _is_string(features[name]):
            return name
    raise UsageError(
        f"no {modality} column found among: {described}. Name it with --{modality}_column "
        f"(a {modality} feature{' or a column of file paths' if modality != 'text' else ' of strings'})."
    )


def find_label_column(ds: Dataset | IterableDataset, column: str | None = None) -> str:
    """The class-label column: ``column`` if given, else the first ``ClassLabel`` or conventionally named one."""
    features = ds.features or {}
    if column is not None:
        if column not in features:
            raise UsageError(f"label column {column!r} not found; the dataset has: {list(features)}")
        return column
    for name, feature in features.items():
        if isinstance(feature, ClassLabel):
            return name
    for name in _LABEL_NAMES:
        if name in features:
            return name
    raise UsageError(f"no label column found among {list(features)}; name it with --label_column")


def _fits(feature: object, modality: Modality) -> bool:
    typed = _FEATURE_TYPES.get(modality)
    return (typed is not None and isinstance(feature, typed)) or _is_string(feature)


def _is_string(feature: object) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _type_name(feature: object) -> str:
    if isinstance(feature, datasets.Value):
        return feature.dtype
    return type(feature).__name__
