"""Image decoding with mode conversion, and a pass that finds undecodable rows before training starts."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
from datasets import Dataset, IterableDataset
from PIL import Image

from hf_ssl.data.checks import ExampleCheck, OnBadExample, check_on_bad_example, prepare_rows
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
    on_bad_example: OnBadExample = field(
        default="error",
        metadata={"help": "Undecodable images: 'error' stops before training naming their rows; 'skip' drops them."},
    )
    on_bad_image: OnBadExample | None = field(
        default=None, metadata={"help": "Deprecated: the old name of --on_bad_example, which it sets."}
    )

    def __post_init__(self) -> None:
        if self.on_bad_image is not None:
            logger.warning("--on_bad_image is deprecated: use --on_bad_example %s", self.on_bad_image)
            self.on_bad_example, self.on_bad_image = self.on_bad_image, None
        check_on_bad_example(self.on_bad_example)


def pil_mode(num_channels: int) -> str:
    """The PIL mode images are converted to for a model of ``num_channels`` inputs: ``"L"`` for one, else ``"RGB"``."""
    return "L" if num_channels == 1 else "RGB"


def to_pil(value: Any, mode: str = "RGB", where: str = "") -> Image.Image:
    """Decode one dataset value into a PIL image of ``mode`` (``"RGB"`` or ``"L"``, see :func:`pil_mode`).

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


IMAGE_CHECK = ExampleCheck(to_pil, UndecodableImageError, "images")
"""An image row is usable when it decodes (:func:`to_pil`)."""


def prepare_images(
    ds: Dataset | IterableDataset, column: str, on_bad_example: OnBadExample = "error"
) -> tuple[Dataset | IterableDataset, int]:
    """``ds`` ready for an image collator: raw values in ``column`` (:func:`undecoded`), undecodable rows handled
    before batching by the policy ``on_bad_example`` (:func:`~hf_ssl.data.checks.prepare_rows`).

    Returns:
        ``(dataset, number of rows skipped)``; the count is ``0`` for a streamed dataset (its skips are logged).
    """
    return prepare_rows(undecoded(ds, column), column, IMAGE_CHECK, on_bad_example)
