"""data2vec for speech (Baevski et al., 2022, "data2vec: A General Framework for Self-supervised Learning in Speech,
Vision and Language", arXiv:2202.03555) on a transformers ``Data2VecAudioModel``.

The student (``Data2VecAudioModel``) reads the waveform with span-masked frames (wav2vec 2.0's masks,
:func:`hf_ssl.masking.compute_span_mask`, put in through the model's own ``masked_spec_embed`` via
``mask_time_indices``); its momentum teacher (:class:`~hf_ssl.teachers.MomentumTeacher`, eval mode, no gradients)
reads the unmasked waveform; the targets are the mean of the teacher's top-K transformer layer outputs, each
instance-normalised over time per channel (padded frames excluded); a linear head on the student's last layer
regresses them at the masked frames only. Checked against fairseq's ``examples/data2vec/models/data2vec_audio.py``
(``Data2VecAudioModel.forward``): there the targets are each layer's feed-forward output before its last residual
connection and layer norm (``layer_results``' third item), our ``target_layer_output="ffn"`` (a hook on
transformers' ``feed_forward.output_dense``), ``"block"`` takes ``hidden_states`` instead; as there
(``ema_transformer_only``), the teacher's CNN feature encoder and projection are the student's unless
``teacher_feature_encoder_from_student`` is off. Where we differ: fairseq's instance norm runs over the padded frames
too; ours excludes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import Data2VecAudioModel, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from hf_ssl.backbones.transformers import SpeechEncoderModel
from hf_ssl.health import HealthOutput
from hf_ssl.losses import data2vec_targets, mean_over_items, regression_loss
from hf_ssl.masking import compute_span_mask
from hf_ssl.models.data2vec_audio.configuration_data2vec_audio import Data2VecAudioPretrainingConfig
from hf_ssl.teachers import MomentumTeacher, collect_outputs, eval_mode

STUDENT_FEATURE_PARTS = ("feature_extractor", "feature_projection")
"""The backbone's parts before the transformer (CNN feature encoder, its layer norm and projection): with
``teacher_feature_encoder_from_student`` the teacher's are the student's."""


@dataclass
class Data2VecAudioForPreTrainingOutput(ModelOutput):
    """Output of :class:`Data2VecAudioForPreTraining`.

    Args:
        loss: the regression loss summed over the masked frames' features (times ``loss_scale``), divided by the
            step's masked-frame count (``num_items_in_batch``) or this batch's; scalar.
        target_var: the variance of the targets over the masked frames, per channel, averaged (no gradient; fairseq
            logs it as ``target_var``: near 0 means the teacher collapsed).
        pred_var: the same of the predictions (fairseq's ``pred_var``).
        predictions: ``(N, H)`` the head's outputs at the N masked frames (row-major order of the mask).
        targets: ``(N, H)`` the teacher's targets there (float32, no gradient).
        mask_time_indices: ``(B, T)`` bool, the masked frames.
    """

    loss: torch.Tensor | None = None
    target_var: torch.Tensor | None = None
    pred_var: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    mask_time_indices: torch.Tensor | None = None


def data2vec_audio_targets(
    layer_outputs: list[torch.Tensor],
    config: Data2VecAudioPretrainingConfig,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The targets as fairseq's ``Data2VecAudioModel.forward`` makes them (:func:`hf_ssl.losses.data2vec_targets`):
    the last ``average_top_k_layers`` outputs, each instance-normalised (``instance_norm_target_layer``) and/or
    layer-normalised (``layer_norm_target_layer``), averaged, then optionally normalised again
    (``layer_norm_targets``, ``instance_norm_targets``).

    Args:
        layer_outputs: the teacher's per-layer ``(B, T, H)`` outputs, first layer first.
        config: the norms and K.
        frame_mask: ``(B, T)`` bool, the unpadded frames (instance norms run over them only).

    Returns:
        ``(B, T, H)`` float32.
    """
    layer_norms = [name for name, on in (("instance_norm", config.instance_norm_target_layer),
                                         ("layer_norm", config.layer_norm_target_layer)) if on]  # fmt: skip
    target_norms = [name for name, on in (("layer_norm", config.layer_norm_targets),
                                          ("instance_norm", config.instance_norm_targets)) if on]  # fmt: skip
    return data2vec_targets(layer_outputs, config.average_top_k_layers, layer_norms, target_norms, frame_mask)


class Data2VecAudioRegressionHead(nn.Module):
    """The linear regression head on the student's last layer, ``H -> H`` (fairseq's ``final_proj``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(..., H)`` -> ``(..., H)``."""
        return self.dense(hidden_states)


class Data2VecAudioPreTrainedModel(PreTrainedModel):
    """Base class: config class, prefix and the initialisation of the regression head (the backbone initialises
    itself)."""

    config_class = Data2VecAudioPretrainingConfig
    config: Data2VecAudioPretrainingConfig
    base_model_prefix = "data2vec_audio"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, Data2VecAudioRegressionHead):
            std = getattr(self.config.backbone, "initializer_range", None) or 0.02
            init.normal_(module.dense.weight, mean=0.0, std=std)
            init.zeros_(module.dense.bias)


class Data2VecAudioPretrainingModel(SpeechEncoderModel, Data2VecAudioPreTrainedModel):
    """The student backbone alone (what ``AutoModel`` loads from a data2vec audio checkpoint): a transformers
    ``Data2VecAudioModel`` at ``self.backbone`` (:class:`~hf_ssl.backbones.transformers.SpeechEncoderModel`)."""

    backbone_class = Data2VecAudioModel
    _keys_to_ignore_on_load_unexpected = [r"^regression_head\.", r"^teacher\."]


class Data2VecAudioForPreTraining(Data2VecAudioPreTrainedModel):
    """A student ``Data2VecAudioModel``, its momentum teacher and a regression head, trained as data2vec.

    The teacher is ``self.teacher.data2vec_audio``, an EMA copy of ``self.data2vec_audio`` updated by
    :meth:`update_teacher` after every optimizer step (:class:`~hf_ssl.teachers.MomentumTeacherCallback`); it is
    saved with the student (``teacher.*`` keys) and never receives gradients. Under
    :class:`~hf_ssl.trainer.SSLTrainer` the span masks are drawn before the step (:meth:`draw_random_inputs`), so
    the step's masked frames are counted (:meth:`num_items`) and the loss is their mean over the whole step.
    """

    accepts_loss_kwargs = True

    def __init__(self, config: Data2VecAudioPretrainingConfig):
        super().__init__(config)
        self.data2vec_audio = Data2VecAudioPretrainingModel(config)
        self.regression_head = Data2VecAudioRegressionHead(config.backbone.hidden_size)
        self.teacher = MomentumTeacher(self, ["data2vec_audio"])
        self.post_init()
        self.teacher.reset_from(self)

    @property
    def backbone(self) -> Data2VecAudioModel:
        return self.data2vec_audio.backbone

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """One EMA step of the teacher towards the student; with ``teacher_feature_encoder_from_student`` the
        teacher's CNN feature encoder and projection then become the student's (fairseq's ``ema_transformer_only``)."""
        self.teacher.update(self, momentum)
        if self.config.teacher_feature_encoder_from_student:
            self._copy_feature_encoder()

    def _copy_feature_encoder(self) -> None:
        teacher = self.teacher.data2vec_audio.backbone
        for part in STUDENT_FEATURE_PARTS:
            theirs = getattr(self.backbone, part).state_dict()
            for name, tensor in getattr(teacher, part).state_dict().items():
                tensor.copy_(theirs[name])

    def _frame_mask(self, attention_mask: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        return self.backbone._get_feature_vector_attention_mask(num_frames, attention_mask).bool()

    def draw_random_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Span masks ``(B, T)`` for a batch of ``input_values (B, L)``, drawn on its device over each clip's
        unpadded frames (the batch's own masks are kept)."""
        if batch.get("mask_time_indices") is not None:
            return {"mask_time_indices": batch["mask_time_indices"].bool()}
        input_values = batch["input_values"]
        num_frames = int(self.backbone._get_feat_extract_output_lengths(torch.tensor(input_values.shape[1])))
        frame_mask = self._frame_mask(batch.get("attention_mask"), num_frames)
        lengths = frame_mask.sum(-1) if frame_mask is not None else None
        config = self.config
        masks = compute_span_mask(
            input_values.shape[0],
            num_frames,
            config.mask_time_prob,
            config.mask_time_length,
            config.mask_time_min_masks,
            lengths=lengths,
            device=input_values.device,
        )
        return {"mask_time_indices": masks}

    def num_items(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The masked frames of a batch whose masks were drawn, else ``None``."""
        masks = batch.get("mask_time_indices")
        return None if masks is None else masks.sum()

    @torch.no_grad()
    def teacher_targets(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, H)`` float32 targets of the unmasked waveform: the teacher, in eval mode and without gradients,
        encodes it; its top-K layer outputs are normalised and averaged (:func:`data2vec_audio_targets`)."""
        teacher = self.teacher.data2vec_audio.backbone
        with eval_mode(teacher):
            if self.config.target_layer_output == "block":
                output = teacher(input_values, attention_mask=attention_mask, output_hidden_states=True)
                layers = list(output.hidden_states[1:])  # the transformer's input is not a layer's output
            else:
                taps = [layer.feed_forward.output_dense for layer in teacher.encoder.layers]
                layers = collect_outputs(teacher, taps, input_values=input_values, attention_mask=attention_mask)
        frame_mask = self._frame_mask(attention_mask, layers[-1].shape[1])
        return data2vec_audio_targets(layers, self.config, frame_mask)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> Data2VecAudioForPreTrainingOutput:
        """Args:
            input_values: ``(B, L)`` waveforms, normalised as ``Wav2Vec2FeatureExtractor(do_normalize=True)``.
            attention_mask: ``(B, L)`` 1 on samples, 0 on padding.
            mask_time_indices: ``(B, T)`` frames to mask; drawn on the device when ``None``.
            num_items_in_batch: masked frames in the whole optimisation step (all micro-batches and processes); the
                summed loss is divided by it. ``None``: the mean over this batch's masked frames.

        Returns:
            :class:`Data2VecAudioForPreTrainingOutput`, ``loss`` first.
        """
        masks = self.draw_random_inputs(
            {"input_values": input_values, "attention_mask": attention_mask, "mask_time_indices": mask_time_indices}
        )["mask_time_indices"].to(input_values.device)
        targets = self.teacher_targets(input_values, attention_mask)[masks]  # (N, H)
        hidden = self.data2vec_audio(input_values, attention_mask, mask_time_indices=masks).last_hidden_state
        predictions = self.regression_head(hidden[masks])  # (N, H)
        count = predictions.shape[0]
        if count == 0:
            loss = self.regression_head(hidden).sum() * 0.0  # reaches every parameter: DDP's sync stays intact
            target_var = pred_var = loss.detach()
        else:
            summed = regression_loss(predictions, targets, self.config.loss_beta, self.config.loss_scale)
            loss = mean_over_items(summed, count, num_items_in_batch)
            if count > 1:
                target_var = targets.var(dim=0).mean()
                pred_var = predictions.detach().float().var(dim=0).mean()
            else:
                target_var = pred_var = loss.new_zeros(())
        return Data2VecAudioForPreTrainingOutput(
            loss=loss,
            target_var=target_var,
            pred_var=pred_var,
            predictions=predictions,
            targets=targets,
            mask_time_indices=masks,
        )

    def health(self, batch: dict[str, Any]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the loss and ``target_var`` on drawn masks (a
        teacher whose targets lose their variance has collapsed), and the student's features (its last hidden
        state averaged over the real frames, nothing masked, eval mode)."""
        input_values, attention_mask = batch["input_values"], batch.get("attention_mask")
        output = self(input_values, attention_mask, batch.get("mask_time_indices"))
        with eval_mode(self.data2vec_audio):
            states = self.data2vec_audio(input_values, attention_mask).last_hidden_state  # (B, T, H)
        frames = self._frame_mask(attention_mask, states.shape[1])
        weights = (frames if frames is not None else torch.ones(states.shape[:2], dtype=torch.bool)).unsqueeze(-1)
        weights = weights.to(states.device, states.dtype)
        features = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, H)
        return HealthOutput(
            embeddings=features,
            loss=output.loss,
            scalars={"target_var": output.target_var, "pred_var": output.pred_var},
            isotropic=False,
        )
