"""Data: loading from anywhere, column detection and validation, decoding and seeded collators."""

from hf_ssl.data.audio import (
    DEFAULT_AUDIO_DATASET,
    AudioDataArguments,
    BadAudioError,
    decode_audio,
    load_default_audio,
    prepare_audio,
    undecoded_audio,
)
from hf_ssl.data.collators import ImageCollator, SeededCollator
from hf_ssl.data.images import (
    ImageDataArguments,
    UndecodableImageError,
    pil_mode,
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
    "decode_audio",
    "load_default_audio",
    "prepare_audio",
    "undecoded_audio",
    "DEFAULT_DATASET",
    "ImageDataArguments",
    "ImageCollator",
    "SeededCollator",
    "UndecodableImageError",
    "concatenate_sources",
    "data_source",
    "dataset_sources",
    "find_column",
    "find_label_column",
    "load_data",
    "load_digits_dataset",
    "pil_mode",
    "prepare_images",
    "to_pil",
    "undecoded",
]
