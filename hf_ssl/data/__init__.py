"""Data: loading from anywhere, column detection and validation, augmentations and collators."""

from hf_ssl.data.audio import (
    DEFAULT_AUDIO_DATASET,
    AudioDataArguments,
    BadAudioError,
    check_audio,
    decode_audio,
    load_default_audio,
    prepare_audio,
    undecoded_audio,
)
from hf_ssl.data.augmentations import SimCLRTransform
from hf_ssl.data.collators import ImageViewsCollator, SeededCollator
from hf_ssl.data.images import (
    ImageDataArguments,
    UndecodableImageError,
    check_images,
    prepare_images,
    to_pil,
    undecoded,
)
from hf_ssl.data.loading import (
    DEFAULT_DATASET,
    concatenate_sources,
    data_source,
    dataset_sources,
    find_column,
    find_label_column,
    load_data,
    load_digits_dataset,
)

__all__ = [
    "DEFAULT_AUDIO_DATASET",
    "AudioDataArguments",
    "BadAudioError",
    "check_audio",
    "decode_audio",
    "load_default_audio",
    "prepare_audio",
    "undecoded_audio",
    "DEFAULT_DATASET",
    "ImageDataArguments",
    "ImageViewsCollator",
    "SeededCollator",
    "SimCLRTransform",
    "UndecodableImageError",
    "check_images",
    "concatenate_sources",
    "data_source",
    "dataset_sources",
    "find_column",
    "find_label_column",
    "load_data",
    "load_digits_dataset",
    "prepare_images",
    "to_pil",
    "undecoded",
]
