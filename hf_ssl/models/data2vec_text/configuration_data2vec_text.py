"""data2vec text configuration: a Hugging Face text encoder (a ``Data2VecTextConfig`` by default) as a sub-config,
the teacher's targets and momentum, the regression loss and the MLM-style masking."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from hf_ssl.backbones.transformers import DEFAULT_ENCODER, check_text_encoder, resolve_encoder_config
from hf_ssl.errors import UsageError, check_choice, check_int, check_range
from hf_ssl.losses import TARGET_NORMS

DATA2VEC_TEXT_SUB_CONFIGS = {
    "encoder": SubConfigSpec(config_class=AutoConfig, model_type="data2vec-text", init_kwargs=DEFAULT_ENCODER),
}
"""The encoder sub-config: transformers' ``Data2VecTextConfig`` (RoBERTa's layout) of hf_ssl's default size."""

TARGET_LAYER_OUTPUTS = ("ffn", "block")


class Data2VecTextPretrainingConfig(PretrainedConfig):
    """Configuration of :class:`Data2VecTextForPreTraining`: data2vec for text (Baevski et al., 2022, "data2vec: A
    General Framework for Self-supervised Learning in Speech, Vision and Language", arXiv:2202.03555, sections 3 and
    4.3), as fairseq's ``examples/data2vec/models/data2vec_text.py`` trains it.

    A student encoder sees the masked tokens; its momentum (EMA) teacher sees the unmasked ones; a linear head on the
    student's last layer regresses, at the masked positions, the average of the teacher's top-K layer outputs, each
    normalised.

    Args:
        encoder: the encoder's config, as :class:`~hf_ssl.MLMConfig`'s ``encoder`` (a dict carrying its
            ``model_type``, a ``PretrainedConfig`` or a model name/path). ``None`` gives a small
            ``Data2VecTextConfig`` (hidden 256, 4 layers, 4 heads, intermediate 1024, vocabulary 30,522).
        average_top_k_layers: how many of the teacher's last layers are averaged into the targets (K, as fairseq's
            ``average_top_k_layers``), at most the encoder's depth. ``None``: the paper's proportion, 8 of 12 layers
            for its base model, ``max(1, round(2/3 * depth))`` (3 of the default encoder's 4); the number is what
            the saved config holds.
        target_layer_output: which output of each layer is a target: ``"ffn"``, the feed-forward block's output
            before the last residual connection and layer norm (the paper's choice after its ablation of target
            features; fairseq's ``fc_results``; for encoders laid out as BERT, ``layer.output.dense``), or
            ``"block"``, the layer's own output (``hidden_states``).
        target_norm: the normalisation of each target layer before averaging: ``"layer_norm"`` (text, fairseq's
            ``layer_norm_target_layer``) or ``"instance_norm"`` (over the tokens of a sequence, as for speech).
        loss_beta: smooth L1's beta; 0 means the squared error (fairseq's default 0, its text recipe 4).
        loss_scale: the factor on each token's loss summed over the features; ``None`` means ``1 / sqrt(H)``
            (fairseq's ``loss_scale``; its text recipe sets 1).
        teacher_momentum: the EMA momentum of the first update (fairseq's ``ema_decay``, 0.999).
        teacher_momentum_final: the momentum reached at the end of the run (fairseq's ``ema_end_decay``, 0.9999).
        teacher_embeddings_from_student: the teacher's embedding layer (token, position and segment embeddings and
            their layer norm) is the student's, copied at every update, and only the transformer layers are averaged
            (fairseq's ``ema_transformer_layers_only``, on by default there); ``False`` averages the embeddings too.
        mlm_probability: fraction of the (non-special) tokens masked and predicted (0.15, as BERT).
        mask_replace_prob: of those, the fraction replaced by the mask token (0.8).
        random_replace_prob: of those, the fraction replaced by a random token (0.1); the rest keep their token.
    """

    model_type = "hf_ssl_data2vec_text"
    sub_configs_defaults = DATA2VEC_TEXT_SUB_CONFIGS

    def __init__(
        self,
        encoder: str | dict[str, Any] | PretrainedConfig | None = None,
        average_top_k_layers: int | None = None,
        target_layer_output: str = "ffn",
        target_norm: str = "layer_norm",
        loss_beta: float = 0.0,
        loss_scale: float | None = None,
        teacher_momentum: float = 0.999,
        teacher_momentum_final: float = 0.9999,
        teacher_embeddings_from_student: bool = True,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        **kwargs: Any,
    ):
        self.encoder = resolve_encoder_config(encoder)
        self.average_top_k_layers = average_top_k_layers  # None: resolved from the encoder's depth once it is built
        self.target_layer_output = target_layer_output
        self.target_norm = target_norm
        self.loss_beta = loss_beta
        self.loss_scale = loss_scale
        self.teacher_momentum = teacher_momentum
        self.teacher_momentum_final = teacher_momentum_final
        self.teacher_embeddings_from_student = teacher_embeddings_from_student
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word_masking = False  # read by TokenMaskingCollator.from_config
        super().__init__(**kwargs)  # builds self.encoder into its config class (transformers' SubConfigSpec)
        depth = getattr(self.encoder, "num_hidden_layers", None)
        if self.average_top_k_layers is None:
            if not isinstance(depth, int):
                raise UsageError("average_top_k_layers must be given: the encoder config has no num_hidden_layers")
            self.average_top_k_layers = max(1, round(depth * 8 / 12))
        self._validate()

    def _validate(self) -> None:
        check_text_encoder(self.encoder, "data2vec's masked prediction")
        depth = getattr(self.encoder, "num_hidden_layers", None)
        check_int("average_top_k_layers", self.average_top_k_layers, 1)
        if isinstance(depth, int) and self.average_top_k_layers > depth:
            raise UsageError(
                f"average_top_k_layers must be <= the encoder's {depth} layers, got {self.average_top_k_layers}"
            )
        check_choice("target_layer_output", self.target_layer_output, TARGET_LAYER_OUTPUTS)
        check_choice("target_norm", self.target_norm, TARGET_NORMS)
        check_range("loss_beta", self.loss_beta, 0.0)
        if self.loss_scale is not None:
            check_range("loss_scale", self.loss_scale, 0.0, low_inclusive=False)
        check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0)
        check_range("teacher_momentum_final", self.teacher_momentum_final, self.teacher_momentum, 1.0)
        check_choice("teacher_embeddings_from_student", self.teacher_embeddings_from_student, (True, False))
        check_range("mlm_probability", self.mlm_probability, 0.0, 1.0, low_inclusive=False)
        check_range("mask_replace_prob", self.mask_replace_prob, 0.0, 1.0)
        check_range("random_replace_prob", self.random_replace_prob, 0.0, 1.0)
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            raise UsageError(
                "mask_replace_prob + random_replace_prob must be <= 1 (the rest keep their token), got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}"
            )
