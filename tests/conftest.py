"""Shared fixtures. The whole suite runs offline: nothing may wait on the Hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10 = SHARED_DATA / "vision" / "cifar10"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def cifar10_dir() -> Path:
    """The real CIFAR-10 parquet files from ../shared/data (skips when absent, e.g. in a user's fresh clone)."""
    if not (CIFAR10 / "train.parquet").exists():
        pytest.skip(f"real data not available: {CIFAR10} is absent (see ../shared/data/README.md)")
    return CIFAR10


@pytest.fixture
def tiny_simclr_config():
    """A SimCLR config small enough for CPU tests: convnext_atto with a 32x32 stem, tiny head."""
    from hf_ssl import SimCLRConfig

    return SimCLRConfig(
        backbone="convnext_atto",
        small_image_stem=True,
        image_size=32,
        projection_hidden_dim=32,
        projection_dim=16,
    )
