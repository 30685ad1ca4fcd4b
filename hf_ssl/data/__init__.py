"""Data: loading from anywhere, column detection and validation, augmentations and collators."""

from hf_ssl.data.augmentations import SimCLRTransform, eval_transform
from hf_ssl.data.collators import ImageClassificationCollator, ImageViewsCollator
from hf_ssl.data.images import UndecodableImageError, check_images, to_pil, undecoded
from hf_ssl.data.loading import (
    DEFAULT_DATASET,
    find_column,
    find_label_column,
    load_data,
    load_digits_dataset,
)

__all__ = [
    "DEFAULT_DATASET",
    "ImageClassificationCollator",
    "ImageViewsCollator",
    "SimCLRTransform",
    "UndecodableImageError",
    "check_images",
    "eval_transform",
    "find_column",
    "find_label_column",
    "load_data",
    "load_digits_dataset",
    "to_pil",
    "undecoded",
]
