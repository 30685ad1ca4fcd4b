"""MAE reconstructions in TensorBoard while a run trains: the same fixed images and masks every few steps."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_ssl.data.collators import seeded_rng
from hf_ssl.models.mae.visualize import masking_noise, pixel_batch, reconstruction_grid

logger = logging.getLogger(__name__)

TAG = "mae/reconstructions"


class ReconstructionImagesCallback(TrainerCallback):
    """Writes a reconstruction grid (see :func:`~hf_ssl.models.mae.visualize.reconstruction_grid`) of the first
    ``num_images`` training images to TensorBoard ``num_pictures`` times over a run (and at its last step), when
    ``report_to`` includes ``tensorboard``.

    The images get the evaluation preprocessing (no augmentation) and the masks come from their own generator, so
    every picture shows the same inputs; the forward runs in eval mode without gradients, inside a forked RNG, and
    the model's mode is restored: training is unchanged. The steps drawn are a function of ``max_steps``, so a
    resumed run keeps drawing at the same steps; nothing else is carried across a resume.

    The grids go to their own ``SummaryWriter`` (transformers' ``TensorBoardCallback`` does not expose its writer
    to other callbacks): in ``$TENSORBOARD_LOGGING_DIR`` when set (the folder transformers writes the scalars to),
    else ``output_dir/runs/mae_reconstructions`` beside transformers' ``output_dir/runs/<date>_<host>``, so that
    ``tensorboard --logdir output_dir/runs`` shows both.

    Args:
        num_images: rows of the grid.
        num_pictures: pictures over the run.
        seed: seed of the masking noise.
    """

    def __init__(self, num_images: int = 8, num_pictures: int = 10, seed: int = 0):
        self.num_images, self.num_pictures, self.seed = num_images, num_pictures, seed
        self.writer: Any = None
        self.pixel_values: torch.Tensor | None = None
        self.every = 0

    @staticmethod
    def log_dir(args: TrainingArguments) -> str:
        return os.getenv("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs", "mae_reconstructions")

    def _fixed_images(self, train_dataloader: Any, config: Any) -> torch.Tensor | None:
        """The first training rows, preprocessed for evaluation, or ``None`` when the rows cannot be reached."""
        dataset = getattr(train_dataloader, "dataset", None)
        column = getattr(getattr(train_dataloader, "collate_fn", None), "image_column", None)
        if dataset is None or column is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            return None  # a streamed dataset: no first rows to come back to
        rows = [dataset[i][column] for i in range(min(self.num_images, len(dataset)))]
        return pixel_batch(config, rows) if rows else None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or "tensorboard" not in (args.report_to or []) or model is None:
            return
        self.pixel_values = self._fixed_images(kwargs.get("train_dataloader"), model.config)
        if self.pixel_values is None:
            logger.info("no fixed training images to reconstruct: no MAE pictures in TensorBoard")
            return
        from torch.utils.tensorboard import SummaryWriter

        self.every = max(1, state.max_steps // self.num_pictures)
        self.writer = SummaryWriter(log_dir=self.log_dir(args))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        step = state.global_step
        if self.writer is None or model is None or (step % self.every and step != state.max_steps):
            return
        parameter = next(model.parameters())
        pixel_values = self.pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        noise = masking_noise(model.config, len(pixel_values), self.seed).to(parameter.device)
        with seeded_rng(self.seed, parameter.device):  # forked: the training's generators are left as they were
            grid = np.asarray(reconstruction_grid(model, pixel_values, noise=noise))  # eval, no_grad, mode restored
        self.writer.add_image(TAG, grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
        self.writer.flush()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
