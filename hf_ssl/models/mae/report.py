"""MAE's pictures on the ``hf-ssl report`` page: masked reconstructions of a few images of the labelled set."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from hf_ssl.data import find_column, undecoded
from hf_ssl.data.loading import DEFAULT_DATASET, load_digits_dataset
from hf_ssl.models.mae.modeling_mae import MAEForPreTraining
from hf_ssl.models.mae.visualize import masking_noise, pixel_batch, reconstruction_grid

logger = logging.getLogger(__name__)

REPORT_IMAGES = 8
"""Images (rows of the grid) on the report page: the split's first ones."""
MIN_WIDTH = 480
"""Grids narrower than this many pixels are enlarged (nearest neighbour) so that small images stay visible."""


def enlarged(grid: Image.Image, min_width: int = MIN_WIDTH) -> Image.Image:
    """``grid`` scaled up by the smallest whole factor that makes it at least ``min_width`` wide (pixels kept
    sharp)."""
    factor = max(1, -(-min_width // grid.width))
    return grid.resize((grid.width * factor, grid.height * factor), Image.Resampling.NEAREST)


def report_pictures(model_dir: str, output_dir: Path, args: Any) -> list[tuple[str, Path]]:
    """Reconstructions (original | masked | reconstruction | visible patches pasted back) of the first
    :data:`REPORT_IMAGES` images of the report's labelled set (``args.dataset_name`` / ``args.split``, default the
    embedded digits), masks seeded by ``args.seed``. None for a folder without the decoder (an exported encoder)."""
    model, info = MAEForPreTraining.from_pretrained(model_dir, output_loading_info=True)
    if info.get("missing_keys"):
        logger.info("%s has no MAE decoder: no reconstructions on the report", model_dir)
        return []
    ds = args.load_split((DEFAULT_DATASET, load_digits_dataset))
    column = find_column(ds, "image", args.input_column)
    values = undecoded(ds, column).select(range(min(REPORT_IMAGES, len(ds))))[column]
    config = model.config
    grid = reconstruction_grid(model.eval(), pixel_batch(config, values), masking_noise(config, len(values), args.seed))
    path = Path(output_dir) / "mae_reconstructions.png"
    enlarged(grid).save(path, format="PNG")
    title = (
        f"Reconstructions, {config.mask_ratio:.0%} of the patches removed "
        "(original | masked | reconstruction | visible patches pasted back)"
    )
    return [(title, path)]
