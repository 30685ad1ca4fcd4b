"""data2vec audio configuration: a transformers ``Data2VecAudioConfig`` backbone as a sub-config, the teacher's
targets and momentum, the regression loss and wav2vec 2.0's span masking."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, Data2VecAudioConfig, PretrainedConfig

from hf_ssl.backbones.transformers import check_speech_pretraining, frame_stride, receptive_field
from hf_ssl.errors import UsageError, check_choice, check_int, check_range

TARGET_LAYER_OUTPUTS = ("ffn", "block")


def _resolve_backbone(backbone: Data2VecAudioConfig | dict[str, Any] | str | None) -> Data2VecAudioConfig:
    if backbone is None:
        return Data2VecAudioConfig()
    if isinstance(backbone, Data2VecAudioConfig):
        return backbone
    if isinstance(backbone, dict):
        return Data2VecAudioConfig.from_dict({k: v for k, v in backbone.items() if k != "transformers_version"})
    if isinstance(backbone, str):
        try:
            config = AutoConfig.from_pretrained(backbone)
        except (OSError, ValueError) as err:
            raise UsageError(f"backbone: cannot read a Data2VecAudioConfig from {backbone!r}: {err}") from err
        if isinstance(config, Data2VecAudioPretrainingConfig):
            return config.backbone
        if not isinstance(config, Data2VecAudioConfig):
            raise UsageError(
                f"backbone: {backbone!r} holds a {type(config).__name__} ({config.model_type}); a "
                "Data2VecAudioConfig (model_type 'data2vec-audio') is needed"
            )
        return config
    raise UsageError(f"backbone must be a Data2VecAudioConfig, a dict of one, or a model name/path, got {backbone!r}")


class Data2VecAudioPretrainingConfig(PretrainedConfig):
    """Configuration of :class:`Data2VecAudioForPreTraining`: data2vec for speech (Baevski et al., 2022, "data2vec: A
    General Framework for Self-supervised Learning in Speech, Vision and Language", arXiv:2202.03555, sections 3 and
    4.2), with the defaults of fairseq's ``examples/data2vec/models/data2vec_audio.py`` (``Data2VecAudioConfig``:
    ``average_top_k_layers`` 8, ``instance_norm_target_layer``, ``loss_beta`` 0, ``ema_decay`` 0.999 ->
    ``ema_end_decay`` 0.9999, ``ema_transformer_only``; masking from its base recipe, ``mask_prob`` 0.65,
    ``mask_length`` 10).

    Args:
        backbone: a transformers ``Data2VecAudioConfig``, its dict, or a model name/path to read one from (one of our
            pretraining checkpoints gives its backbone). ``None``: ``Data2VecAudioConfig()`` (BASE: 768, 12 layers).
        average_top_k_layers: how many of the teacher's last transformer layers are averaged into the targets (8 of
            the base model's 12); at most the backbone's depth.
        target_layer_output: ``"ffn"``, each layer's feed-forward output before its last residual connection and
            layer norm (fairseq's ``layer_results``' third item, the paper's choice; transformers'
            ``feed_forward.output_dense``), or ``"block"``, the layer's own output (``hidden_states``).
        instance_norm_target_layer: instance-normalise each target layer over time, per channel (fairseq: true).
        layer_norm_target_layer: layer-normalise each target layer over channels (fairseq: false).
        instance_norm_targets: instance-normalise the averaged targets (fairseq: false).
        layer_norm_targets: layer-normalise the averaged targets (fairseq: false).
        loss_beta: smooth L1's beta; 0 means the squared error (fairseq audio: 0).
        loss_scale: the factor on each frame's loss summed over the features; ``None`` means ``1 / sqrt(H)``.
        teacher_momentum: the EMA momentum of the first update (fairseq's ``ema_decay``).
        teacher_momentum_final: the momentum at the end of the run (fairseq's ``ema_end_decay``).
        teacher_feature_encoder_from_student: the teacher's CNN feature encoder and feature projection are the
            student's, copied at every update, and only the transformer is averaged (fairseq's
            ``ema_transformer_only``, true); ``False`` averages them too.
        mask_time_prob: fraction of frames chosen as span starts times ``mask_time_length`` (0.65).
        mask_time_length: frames per masked span (10).
        mask_time_min_masks: least number of spans per utterance.
        sampling_rate: sample rate the model takes (16000).
        max_duration_seconds: longest crop fed to the model in pretraining (fairseq's ``max_sample_size``
            of 320,000 samples is 20 s; 15.6 as our wav2vec).
    """

    model_type = "hf_ssl_data2vec_audio"
    sub_configs_defaults = {"backbone": Data2VecAudioConfig}

    def __init__(
        self,
        backbone: Data2VecAudioConfig | dict[str, Any] | str | None = None,
        average_top_k_layers: int = 8,
        target_layer_output: str = "ffn",
        instance_norm_target_layer: bool = True,
        layer_norm_target_layer: bool = False,
        instance_norm_targets: bool = False,
        layer_norm_targets: bool = False,
        loss_beta: float = 0.0,
        loss_scale: float | None = None,
        teacher_momentum: float = 0.999,
        teacher_momentum_final: float = 0.9999,
        teacher_feature_encoder_from_student: bool = True,
        mask_time_prob: float = 0.65,
        mask_time_length: int = 10,
        mask_time_min_masks: int = 2,
        sampling_rate: int = 16000,
        max_duration_seconds: float = 15.6,
        **kwargs: Any,
    ):
        self.backbone = _resolve_backbone(backbone)
        self.average_top_k_layers = average_top_k_layers
        self.target_layer_output = target_layer_output
        self.instance_norm_target_layer = instance_norm_target_layer
        self.layer_norm_target_layer = layer_norm_target_layer
        self.instance_norm_targets = instance_norm_targets
        self.layer_norm_targets = layer_norm_targets
        self.loss_beta = loss_beta
        self.loss_scale = loss_scale
        self.teacher_momentum = teacher_momentum
        self.teacher_momentum_final = teacher_momentum_final
        self.teacher_feature_encoder_from_student = teacher_feature_encoder_from_student
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.sampling_rate = sampling_rate
        self.max_duration_seconds = max_duration_seconds
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        depth = self.backbone.num_hidden_layers
        check_int("average_top_k_layers", self.average_top_k_layers, 1)
        if self.average_top_k_layers > depth:
            raise UsageError(
                f"average_top_k_layers must be <= the backbone's {depth} layers, got {self.average_top_k_layers}"
            )
        check_choice("target_layer_output", self.target_layer_output, TARGET_LAYER_OUTPUTS)
        for name in ("instance_norm_target_layer", "layer_norm_target_layer", "instance_norm_targets"):
            check_choice(name, getattr(self, name), (True, False))
        check_choice("layer_norm_targets", self.layer_norm_targets, (True, False))
        check_choice("teacher_feature_encoder_from_student", self.teacher_feature_encoder_from_student, (True, False))
        check_range("loss_beta", self.loss_beta, 0.0)
        if self.loss_scale is not None:
            check_range("loss_scale", self.loss_scale, 0.0, low_inclusive=False)
        check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0)
        check_range("teacher_momentum_final", self.teacher_momentum_final, self.teacher_momentum, 1.0)
        check_speech_pretraining(self)  # masking, rate, duration, adapter

    @property
    def receptive_field(self) -> int:
        """Samples seen by one frame of the CNN feature encoder (the shortest usable clip)."""
        return receptive_field(self.backbone.conv_kernel, self.backbone.conv_stride)

    @property
    def frame_stride(self) -> int:
        """Samples between consecutive frames (320, 20 ms at 16 kHz, for the base model)."""
        return frame_stride(self.backbone.conv_stride)
