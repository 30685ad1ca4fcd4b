"""Image decoding with mode conversion, and a pass that finds undecodable rows before training starts."""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
import numpy as np
from datasets import Dataset, IterableDataset
from PIL import Image

from hf_ssl.errors import UsageError

logger = logging.getLogger(__name__)


class UndecodableImageError(UsageError):
    """An image could not be read; the message names where it came from."""


@dataclass
class ImageDataArguments:
    """Data flags of image objectives."""

    _argument_group_name = "data (images)"

    image_column: str | None = field(
        default=None,
        metadata={"help": "Image column (default: the first Image column, or a column of paths named image/path/...)."},
    )
    on_bad_image: Literal["error", "skip"] = field(
        default="error",
        metadata={"help": "Undecodable images: 'error' stops before training naming their rows; 'skip' drops them."},
    )


def to_pil(value: Any, mode: str = "RGB", where: str = "") -> Image.Image:
    """Decode one dataset value into a PIL image of ``mode`` (``"RGB"`` or ``"L"``).

    Accepts what ``datasets`` yields: a PIL image, a ``{"bytes", "path"}`` dict (``Image(decode=False)``), a file
    path, or an ``(H, W[, C])`` uint8 array. Grayscale, palette, RGBA/LA, CMYK and 16-bit images are converted.

    Raises:
        UndecodableImageError: naming ``where`` (e.g. ``"row 17"``) and the file, if known.
    """
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            image = Image.open(io.BytesIO(data) if data is not None else path)
        elif isinstance(value, str):
            image = Image.open(value)
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value)
        else:
            raise TypeError(f"expected an image, got {type(value).__name__}")
        image.load()
    except Exception as err:  # PIL raises several unrelated types for broken files
        source = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
        detail = f" ({source})" if source else ""
        raise UndecodableImageError(f"cannot decode the image at {where or 'an unknown row'}{detail}: {err}") from err
    return _convert(image, mode)


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode == mode:
        return image
    if image.mode in (
        "I",
        "I;16",
        "I;16B",
        "I;16L",
        "F",
    ):  # high bit depth: rescale to 8 bits before converting
        array = np.asarray(image, dtype=np.float32)
        span = float(array.max() - array.min()) or 1.0
        image = Image.fromarray(((array - array.min()) * (255.0 / span)).astype(np.uint8), mode="L")
    elif image.mode == "P":
        image = image.convert("RGBA")
    return image.convert(mode)


def undecoded(ds: Dataset | IterableDataset, column: str) -> Dataset | IterableDataset:
    """``ds`` with ``column`` yielding raw ``{"bytes", "path"}`` (or path strings), decoded later by ``to_pil``.

    Decoding in our own code, rather than inside ``datasets``, lets a broken file name its row.
    """
    feature = ds.features[column] if ds.features is not None else None
    if isinstance(feature, datasets.Image) and feature.decode:
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def check_images(
    ds: Dataset, column: str, on_bad_image: Literal["error", "skip"] = "error", batch_size: int = 1000
) -> Dataset:
    """Decode every image once, before training, so a broken file cannot stop a long run halfway.

    Args:
        ds: a map-style dataset whose ``column`` went through :func:`undecoded`.
        column: the image column.
        on_bad_image: ``"error"`` raises, naming the rows; ``"skip"`` drops them and logs how many.

    Returns:
        ``ds``, without the undecodable rows when skipping.

    Raises:
        UndecodableImageError: listing the first undecodable rows (``on_bad_image="error"``).
    """
    bad: list[tuple[int, str]] = []
    for start in range(0, len(ds), batch_size):
        for offset, value in enumerate(ds[start : start + batch_size][column]):
            try:
                to_pil(value, where=f"row {start + offset}")
            except UndecodableImageError as err:
                bad.append((start + offset, str(err)))
    if not bad:
        return ds
    if len(bad) == len(ds):
        raise UndecodableImageError(f"none of the {len(ds)} images can be decoded; the first: {bad[0][1]}")
    if on_bad_image == "error":
        shown = "\n  ".join(message for _, message in bad[:10])
        raise UndecodableImageError(
            f"{len(bad)} of {len(ds)} images cannot be decoded (rows {[row for row, _ in bad[:10]]}"
            f"{', ...' if len(bad) > 10 else ''})\n  {shown}\nfix or remove them, or pass --on_bad_image skip"
        )
    logger.warning("skipping %d of %d undecodable images (rows %s)", len(bad), len(ds), [r for r, _ in bad[:20]])
    bad_rows = {row for row, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in bad_rows])


def _decodes(value: Any, on_bad_image: str = "skip") -> bool:
    try:
        to_pil(value, where="a streamed row")
    except UndecodableImageError as err:
        if on_bad_image == "error":
            raise UndecodableImageError(f"{err}; pass --on_bad_image skip to drop such images") from err
        logger.warning("skipping a streamed image: %s", err)
        return False
    return True


def prepare_images(
    ds: Dataset | IterableDataset, column: str, on_bad_image: Literal["error", "skip"] = "error"
) -> tuple[Dataset | IterableDataset, int]:
    """``ds`` ready for an image collator: raw values in ``column``, undecodable rows handled before batching.

    A map-style dataset is checked whole before training (:func:`check_images`). A streamed one is checked row by
    row as it is read (an error, or with ``"skip"`` a logged skip), ahead of batching, so every batch stays full
    and the processes of a multi-process run get batches of one size.

    Returns:
        ``(dataset, number of rows skipped)``; the count is ``0`` for a streamed dataset (its skips are logged).
    """
    ds = undecoded(ds, column)
    if isinstance(ds, IterableDataset):
        return ds.filter(functools.partial(_decodes, on_bad_image=on_bad_image), input_columns=[column]), 0
    checked = check_images(ds, column, on_bad_image)
    return checked, len(ds) - len(checked)
