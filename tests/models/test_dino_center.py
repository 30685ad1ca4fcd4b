"""DINO's center takes one EMA step per optimizer step: a Trainer run of 2 micro-batches x 4 rows with gradient
accumulation ends with the center and weights of 1 batch of 8 (Caron et al., 2021, eq. 4: one update from the
batch mean of the teacher's outputs), and a model trained by hand still moves its center."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_ssl.models.dino import DINO
from hf_ssl.models.dino.configuration_dino import DINOConfig
from hf_ssl.models.dino.modeling_dino import DINOForPreTraining

ROWS = 8


def _config() -> DINOConfig:
    """A tiny LayerNorm backbone (ConvNeXt, as tests/test_one_update.py's) and a head without BatchNorm, so a batch's
    split changes no normalisation statistic; prototypes trained from the first step."""
    return DINOConfig(
        backbone="convnext_atto",
        backbone_kwargs={"depths": [1, 1, 1, 1], "dims": [16, 16, 32, 32], "patch_size": 1},
        image_size=32,
        out_dim=32,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
        num_local_crops=2,
        local_crop_size=16,
        freeze_last_layer_epochs=0.0,
        teacher_momentum=0.5,
        center_momentum=0.5,
    )


def _rows() -> list[dict[str, np.ndarray]]:
    """Each image has its own colour, so the teacher's mean over 4 rows is not the mean over 8."""
    rng = np.random.default_rng(0)
    colours = rng.normal(0.0, 2.0, (ROWS, 1, 3, 1, 1)).astype(np.float32)
    return [{"pixel_values": rng.standard_normal((2, 3, 32, 32), dtype=np.float32) + colour,
             "local_pixel_values": rng.standard_normal((2, 3, 16, 16), dtype=np.float32) + colour}
            for colour in colours]  # fmt: skip


def _collate(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(np.stack([row[key] for row in rows])) for key in rows[0]}


def _train(tmp_path, batch_size: int, accumulation: int, callbacks=None) -> DINOForPreTraining:
    from datasets import Dataset

    from hf_ssl.trainer import SSLTrainer, SSLTrainingArguments

    torch.manual_seed(0)
    model = DINOForPreTraining(_config())
    args = SSLTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch_size,
                                gradient_accumulation_steps=accumulation, max_steps=2, optim="sgd", learning_rate=0.005,
                                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
                                train_sampling_strategy="sequential", save_strategy="no", report_to="none",
                                disable_tqdm=True, seed=0, use_cpu=True, dataloader_pin_memory=False,
                                remove_unused_columns=False)  # fmt: skip
    trainer = SSLTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_rows()).with_format("numpy"),
        data_collator=_collate,
        callbacks=DINO.callbacks(model.config) if callbacks is None else callbacks,
    )
    trainer.train()
    return model


def test_accumulated_micro_batches_give_the_center_and_weights_of_one_batch(tmp_path):
    whole = _train(tmp_path / "whole", ROWS, 1)
    split = _train(tmp_path / "split", ROWS // 2, 2)
    assert whole.criterion.center.abs().sum() > 0
    assert not whole.criterion.defer_center_update and whole.criterion.pending_sum is None  # back to plain after
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_without_deferral_accumulation_would_move_the_center_once_per_micro_batch(tmp_path):
    """The mutant (the center updated after every forward, as before): 2 x 4 ends with another center than 1 x 8,
    so the test above would see it."""
    from hf_ssl.teachers import MomentumTeacherCallback

    config = _config()
    teacher = [MomentumTeacherCallback(config.teacher_momentum, config.teacher_momentum_final)]  # no DINO callback
    whole = _train(tmp_path / "whole", ROWS, 1, callbacks=teacher)
    split = _train(tmp_path / "split", ROWS // 2, 2, callbacks=teacher)
    assert not torch.allclose(split.criterion.center, whole.criterion.center, rtol=0, atol=1e-4)


def test_deferred_forwards_read_the_step_start_center_and_one_update_applies_their_mean():
    torch.manual_seed(0)
    model = DINOForPreTraining(_config()).train()
    batch = _collate(_rows())
    halves = [{key: value[:4] for key, value in batch.items()}, {key: value[4:] for key, value in batch.items()}]
    with torch.no_grad():
        model.criterion.center.normal_()
        start = model.criterion.center.clone()
        model.defer_center_updates(True)
        outputs = [model(**half) for half in halves]
        assert torch.equal(model.criterion.center, start)  # untouched by both micro-batches
        assert model.criterion.pending_count == 8 * 2
        assert model.apply_center_update()
        mean = torch.cat([out.teacher_logits for out in outputs]).mean(dim=(0, 1))
        torch.testing.assert_close(model.criterion.center, 0.5 * start + 0.5 * mean)
        assert not model.apply_center_update()  # nothing pending: no second step
        model(**halves[0])
        model.defer_center_updates(False)  # applies what is pending, then back to plain
        assert model.criterion.pending_sum is None and not model.criterion.defer_center_update
        moved = model.criterion.center.clone()
        model(**halves[1])  # plain: a training forward moves the center at once (a model trained by hand)
        assert not torch.equal(model.criterion.center, moved)
        model.eval()(**halves[1])
        assert model.criterion.pending_sum is None


@pytest.mark.parametrize("defer", [False, True])
def test_the_center_is_not_a_ddp_broadcast_buffer_and_is_saved(defer, tmp_path):
    model = DINOForPreTraining(_config()).train()
    model.defer_center_updates(defer)
    with torch.no_grad():
        model(**_collate(_rows()[:2]))
    buffers = dict(model.named_buffers())
    assert "criterion.center" in buffers and not any("pending" in name for name in buffers)
    assert "criterion.center" in model.state_dict()
