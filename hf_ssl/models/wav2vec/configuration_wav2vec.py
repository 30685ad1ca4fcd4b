"""wav2vec 2.0-style pretraining configuration (Baevski et al., 2020, arXiv:2006.11477)."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig, Wav2Vec2Config

from hf_ssl.backbones.transformers import check_speech_pretraining, frame_stride, receptive_field
from hf_ssl.errors import UsageError, check_int, check_range


def _resolve_backbone(backbone: Wav2Vec2Config | dict[str, Any] | str | None) -> Wav2Vec2Config:
    if backbone is None:
        return Wav2Vec2Config()
    if isinstance(backbone, Wav2Vec2Config):
        return backbone
    if isinstance(backbone, dict):
        return Wav2Vec2Config.from_dict({k: v for k, v in backbone.items() if k != "transformers_version"})
    if isinstance(backbone, str):
        try:
            config = AutoConfig.from_pretrained(backbone)
        except (OSError, ValueError) as err:
            raise UsageError(f"backbone: cannot read a Wav2Vec2Config from {backbone!r}: {err}") from err
        if isinstance(config, Wav2VecConfig):  # one of our pretraining checkpoints: take its backbone
            return config.backbone
        if not isinstance(config, Wav2Vec2Config):
            raise UsageError(
                f"backbone: {backbone!r} holds a {type(config).__name__} ({config.model_type}); a Wav2Vec2Config "
                "(model_type 'wav2vec2') is needed"
            )
        return config
    raise UsageError(f"backbone must be a Wav2Vec2Config, a dict of one, or a model name/path, got {backbone!r}")


class Wav2VecConfig(PretrainedConfig):
    """Configuration of :class:`Wav2VecModel` / :class:`Wav2VecForPreTraining`: wav2vec 2.0 pretraining
    (Baevski et al., 2020, arXiv:2006.11477) of a transformers ``Wav2Vec2Model``.

    The backbone is described by its own ``Wav2Vec2Config`` (a sub-config, saved inside ``config.json``), so the
    exported backbone is a plain ``Wav2Vec2Model``. The objective's hyperparameters keep ``Wav2Vec2Config``'s names;
    defaults are the paper's BASE pretraining values (fairseq ``wav2vec2_base_librispeech.yaml``).

    Args:
        backbone: a ``Wav2Vec2Config``, its dict, or a model name/path to read one from (a pretraining checkpoint
            of ours gives its backbone). ``None``: ``Wav2Vec2Config()`` (BASE: 768 hidden, 12 layers).
        mask_time_prob: fraction of frames chosen as span starts times ``mask_time_length`` (an upper bound of the
            masked fraction, 0.65 in the paper).
        mask_time_length: frames per masked span (10).
        mask_time_min_masks: least number of spans per utterance.
        num_negatives: distractors per masked frame, from the same utterance's masked frames (100).
        num_codevector_groups: product-quantizer groups ``G`` (2).
        num_codevectors_per_group: entries per group ``V`` (320).
        codevector_dim: size of a quantized vector, the ``G`` group entries concatenated (256).
        proj_codevector_dim: size of the space where context and targets are compared (256).
        contrastive_logits_temperature: kappa of the contrastive logits (0.1). (transformers reserves
            ``temperature`` for generation.)
        diversity_loss_weight: alpha of the diversity loss (0.1).
        feat_quantizer_dropout: dropout on the features before the quantizer.
        feature_penalty_weight: weight of the L2 penalty on the convolutional features (fairseq's
            ``loss_weights[1]``, 10 in the BASE recipe; 0 turns it off).
        max_gumbel_temperature: Gumbel-softmax temperature at step 0 (2.0).
        min_gumbel_temperature: its floor (0.5).
        gumbel_temperature_decay: factor per step (0.999995).
        sampling_rate: sample rate the model takes; audio is resampled to it (16000).
        max_duration_seconds: longest crop fed to the model during pretraining (fairseq's ``max_sample_size``
            of 250,000 samples is 15.6 s).
    """

    model_type = "hf_ssl_wav2vec"
    sub_configs_defaults = {"backbone": Wav2Vec2Config}

    def __init__(
        self,
        backbone: Wav2Vec2Config | dict[str, Any] | str | None = None,
        mask_time_prob: float = 0.65,
        mask_time_length: int = 10,
        mask_time_min_masks: int = 2,
        num_negatives: int = 100,
        num_codevector_groups: int = 2,
        num_codevectors_per_group: int = 320,
        codevector_dim: int = 256,
        proj_codevector_dim: int = 256,
        contrastive_logits_temperature: float = 0.1,
        diversity_loss_weight: float = 0.1,
        feat_quantizer_dropout: float = 0.0,
        feature_penalty_weight: float = 10.0,
        max_gumbel_temperature: float = 2.0,
        min_gumbel_temperature: float = 0.5,
        gumbel_temperature_decay: float = 0.999995,
        sampling_rate: int = 16000,
        max_duration_seconds: float = 15.6,
        **kwargs: Any,
    ):
        self.backbone = _resolve_backbone(backbone)
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.num_negatives = num_negatives
        self.num_codevector_groups = num_codevector_groups
        self.num_codevectors_per_group = num_codevectors_per_group
        self.codevector_dim = codevector_dim
        self.proj_codevector_dim = proj_codevector_dim
        self.contrastive_logits_temperature = contrastive_logits_temperature
        self.diversity_loss_weight = diversity_loss_weight
        self.feat_quantizer_dropout = feat_quantizer_dropout
        self.feature_penalty_weight = feature_penalty_weight
        self.max_gumbel_temperature = max_gumbel_temperature
        self.min_gumbel_temperature = min_gumbel_temperature
        self.gumbel_temperature_decay = gumbel_temperature_decay
        self.sampling_rate = sampling_rate
        self.max_duration_seconds = max_duration_seconds
        self._validate()
        super().__init__(**kwargs)

    def _validate(self) -> None:
        check_speech_pretraining(self)  # masking, rate, duration, adapter
        check_int("num_negatives", self.num_negatives, 1)
        check_int("num_codevector_groups", self.num_codevector_groups, 1)
        check_int("num_codevectors_per_group", self.num_codevectors_per_group, 2)
        check_int("codevector_dim", self.codevector_dim, 1)
        if self.codevector_dim % self.num_codevector_groups:
            raise UsageError(
                f"codevector_dim ({self.codevector_dim}) must be a multiple of num_codevector_groups "
                f"({self.num_codevector_groups}): each group contributes codevector_dim / groups dimensions"
            )
        check_int("proj_codevector_dim", self.proj_codevector_dim, 1)
        check_range("contrastive_logits_temperature", self.contrastive_logits_temperature, 0.0, low_inclusive=False)
        check_range("diversity_loss_weight", self.diversity_loss_weight, 0.0)
        check_range("feat_quantizer_dropout", self.feat_quantizer_dropout, 0.0, 1.0, high_inclusive=False)
        check_range("feature_penalty_weight", self.feature_penalty_weight, 0.0)
        check_range("min_gumbel_temperature", self.min_gumbel_temperature, 0.0, low_inclusive=False)
        check_range("max_gumbel_temperature", self.max_gumbel_temperature, self.min_gumbel_temperature)
        check_range("gumbel_temperature_decay", self.gumbel_temperature_decay, 0.0, 1.0, low_inclusive=False)

    @property
    def receptive_field(self) -> int:
        """Samples seen by one feature frame of the backbone's convolutional encoder (the shortest usable clip)."""
        return receptive_field(self.backbone.conv_kernel, self.backbone.conv_stride)

    @property
    def frame_stride(self) -> int:
        """Samples between consecutive feature frames (320, 20 ms at 16 kHz, for wav2vec 2.0)."""
        return frame_stride(self.backbone.conv_stride)

    @property
    def min_samples_for_masking(self) -> int:
        """Shortest input with ``mask_time_length + 1`` frames: one span plus one frame to draw a distractor from."""
        return self.receptive_field + self.mask_time_length * self.frame_stride
