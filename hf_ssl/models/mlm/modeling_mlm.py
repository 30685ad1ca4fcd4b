"""Masked language modelling (MLM) on any Hugging Face text encoder, as in BERT.

Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding"
(arXiv:1810.04805), section 3.1 and appendix A.1: 15% of the tokens are selected; the model predicts their
original identity from the encoder's output through a transform (dense, activation, LayerNorm) and an output
projection tied to the input embeddings, plus a per-token bias. Checked against transformers' ``BertForMaskedLM``
(``BertLMPredictionHead``), ``RobertaForMaskedLM`` (``RobertaLMHead``) and ``DistilBertForMaskedLM``, and
google-research/bert ``run_pretraining.py`` (``get_masked_lm_output``, which gathers the masked positions before the
vocabulary projection, as :class:`MLMForPreTraining` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING
from transformers.utils import ModelOutput

from hf_ssl.backbones.transformers import TextEncoderPreTrainedModel, create_encoder, masked_mean
from hf_ssl.errors import UsageError
from hf_ssl.models.mlm.configuration_mlm import MLMConfig

IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------------------
# Where each encoder family keeps its MLM head, so that our head maps onto ``<Family>ForMaskedLM`` and back.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLMHeadLayout:
    """The names and settings of one family's MLM head in its ``<Family>ForMaskedLM``.

    Args:
        dense: prefix of the transform's Linear (``.weight`` / ``.bias`` follow).
        layer_norm: prefix of the transform's LayerNorm.
        bias: name of the per-token output bias (the decoder's weight is tied to the input embeddings).
        activation: the transform's activation name, from the encoder config.
        layer_norm_eps: the transform LayerNorm's epsilon, from the encoder config.
    """

    dense: str
    layer_norm: str
    bias: str
    activation: Callable[[PretrainedConfig], str]
    layer_norm_eps: Callable[[PretrainedConfig], float]


_ROBERTA_LAYOUT = MLMHeadLayout(
    "lm_head.dense", "lm_head.layer_norm", "lm_head.bias", lambda c: "gelu", lambda c: c.layer_norm_eps
)
MLM_HEAD_LAYOUTS: dict[str, MLMHeadLayout] = {
    "bert": MLMHeadLayout(
        "cls.predictions.transform.dense",
        "cls.predictions.transform.LayerNorm",
        "cls.predictions.bias",
        lambda c: c.hidden_act,
        lambda c: c.layer_norm_eps,
    ),
    "roberta": _ROBERTA_LAYOUT,  # RobertaLMHead: gelu is hard-coded
    "xlm-roberta": _ROBERTA_LAYOUT,
    "camembert": _ROBERTA_LAYOUT,
    "roberta-prelayernorm": _ROBERTA_LAYOUT,  # pre-LN RoBERTa (Xiong et al., 2020): same head
    "distilbert": MLMHeadLayout(
        "vocab_transform", "vocab_layer_norm", "vocab_projector.bias", lambda c: c.activation, lambda c: 1e-12
    ),
}


def head_layout(encoder_config: PretrainedConfig) -> MLMHeadLayout | None:
    """The family's MLM head layout, or ``None`` for a family we have no mapping for."""
    return MLM_HEAD_LAYOUTS.get(encoder_config.model_type)


def _head_activation(encoder_config: PretrainedConfig) -> str:
    layout = head_layout(encoder_config)
    if layout is not None:
        return layout.activation(encoder_config)
    return getattr(encoder_config, "hidden_act", None) or getattr(encoder_config, "activation", None) or "gelu"


def _head_layer_norm_eps(encoder_config: PretrainedConfig) -> float:
    layout = head_layout(encoder_config)
    if layout is not None:
        return layout.layer_norm_eps(encoder_config)
    return getattr(encoder_config, "layer_norm_eps", 1e-12)


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MLMForPreTrainingOutput(ModelOutput):
    """Output of :class:`MLMForPreTraining`.

    Args:
        loss: mean cross-entropy over the positions with a label (``labels != -100``), scalar.
        accuracy: fraction of those positions whose arg-max prediction is the label, scalar (no gradient).
        logits: with ``labels`` and ``config.sparse_prediction`` (the default): ``(N, V)``, the vocabulary logits of
            **only the N labelled positions**, in the row-major order of ``labels != -100`` (i.e. the rows of
            ``logits`` are ``full_logits[labels != -100]``). Otherwise ``(B, L, V)`` for every position.
        last_hidden_state: ``(B, L, H)`` encoder output.
    """

    loss: torch.Tensor | None = None
    accuracy: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class MLMPredictionHead(nn.Module):
    """BERT's MLM head: dense -> activation -> LayerNorm, then the output projection whose weight IS the input
    embedding matrix (tied by construction: the embedding weight is passed in, never copied), plus a bias.

    Args:
        hidden_size: encoder width H.
        vocab_size: vocabulary size V.
        hidden_act: activation name in ``transformers.activations.ACT2FN``.
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(self, hidden_size: int, vocab_size: int, hidden_act: str, layer_norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[hidden_act]
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden_states: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        """``hidden_states (..., H)``, ``embedding_weight (V, H)`` -> logits ``(..., V)``."""
        hidden_states = self.layer_norm(self.activation(self.dense(hidden_states)))
        return F.linear(hidden_states, embedding_weight, self.bias)


class MLMPreTrainedModel(TextEncoderPreTrainedModel):
    """Base class: config class and the weight initialisation of our head (the encoder initialises itself)."""

    config_class = MLMConfig
    config: MLMConfig
    base_model_prefix = "mlm"

    def _init_weights(self, module: nn.Module) -> None:
        # The encoder is a PreTrainedModel: transformers dispatches its own _init_weights to it. Ours: the head.
        std = getattr(self.config.encoder, "initializer_range", None) or 0.02
        if isinstance(module, MLMPredictionHead):
            init.normal_(module.dense.weight, mean=0.0, std=std)
            init.zeros_(module.dense.bias)
            init.ones_(module.layer_norm.weight)
            init.zeros_(module.layer_norm.bias)
            init.zeros_(module.bias)


class MLMModel(MLMPreTrainedModel):
    """The encoder alone (what ``AutoModel`` loads from an MLM checkpoint): token ids in, hidden states out.

    ``pooler_output`` is the attention-masked mean of the token states, not the family's pooler (MLM does not train
    one, so none is built).
    """

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: MLMConfig):
        super().__init__(config)
        self.encoder = create_encoder(config.encoder)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1 for tokens, 0 for padding; ``None`` means all tokens.
            token_type_ids: ``(B, L)`` segment ids, for the families that have them.

        Returns:
            ``last_hidden_state (B, L, H)`` and ``pooler_output (B, H)``, the mean over the non-padding tokens.
        """
        hidden = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, L, H)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=masked_mean(hidden, attention_mask))


class MLMForPreTraining(MLMPreTrainedModel):
    """An encoder and BERT's MLM head, trained to predict the selected tokens (Devlin et al., 2019).

    The vocabulary projection (the costly part: ``H x V`` per position) runs only on the labelled positions when
    ``config.sparse_prediction`` is set (the default): the loss and gradients are those of projecting every position
    and ignoring the unlabelled ones, at ~15% of the cost.
    """

    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def __init__(self, config: MLMConfig):
        super().__init__(config)
        self.mlm = MLMModel(config)
        encoder_config = config.encoder
        self.lm_head = MLMPredictionHead(
            encoder_config.hidden_size,
            encoder_config.vocab_size,
            _head_activation(encoder_config),
            _head_layer_norm_eps(encoder_config),
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MLMForPreTrainingOutput:
        """Args:
            input_ids: ``(B, L)`` token ids, already masked (see :class:`~hf_ssl.models.mlm.MLMCollator`).
            attention_mask: ``(B, L)``, 1 for tokens, 0 for padding.
            labels: ``(B, L)``, the original token at each selected position and -100 elsewhere.
            token_type_ids: ``(B, L)`` segment ids, for the families that have them.

        Returns:
            :class:`MLMForPreTrainingOutput`. With ``labels`` and sparse prediction, ``logits`` holds only the
            labelled positions, ``(N, V)``; without ``labels``, the logits of every position ``(B, L, V)``.
        """
        hidden = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, L, H)
        embedding_weight = self.get_input_embeddings().weight  # (V, H), the tied output projection
        if labels is None:
            return MLMForPreTrainingOutput(logits=self.lm_head(hidden, embedding_weight), last_hidden_state=hidden)

        selected = labels != IGNORE_INDEX  # (B, L)
        targets = labels[selected]  # (N,)
        if self.config.sparse_prediction:
            logits = self.lm_head(hidden[selected], embedding_weight)  # (N, H) -> (N, V)
            selected_logits = logits
        else:
            logits = self.lm_head(hidden, embedding_weight)  # (B, L, V)
            selected_logits = logits[selected]  # (N, V)
        if targets.numel() == 0:
            # nothing to predict: a zero loss that still reaches every parameter (keeps DDP's gradient sync intact)
            loss = selected_logits.sum() * 0.0
            accuracy = loss.detach()
        else:
            loss = F.cross_entropy(selected_logits.float(), targets)
            accuracy = (selected_logits.detach().argmax(dim=-1) == targets).float().mean()
        return MLMForPreTrainingOutput(loss=loss, accuracy=accuracy, logits=logits, last_hidden_state=hidden)

    # ----------------------------------------------------------------------------------------------------------------
    # Conversion to and from the family's own <Family>ForMaskedLM
    # ----------------------------------------------------------------------------------------------------------------

    def to_masked_lm(self) -> PreTrainedModel | None:
        """The same weights as the family's ``<Family>ForMaskedLM`` (``BertForMaskedLM``, ...), or ``None`` when the
        family has no masked-LM class or no head mapping. The head's decoder is tied to the embeddings there too."""
        encoder_config = self.config.encoder
        layout = head_layout(encoder_config)
        if layout is None or type(encoder_config) not in MODEL_FOR_MASKED_LM_MAPPING:
            return None
        masked_lm = AutoModelForMaskedLM.from_config(encoder_config)
        state = {f"{masked_lm.base_model_prefix}.{k}": v for k, v in self.mlm.encoder.state_dict().items()}
        state.update(_head_state_to_family(self.lm_head, layout))
        missing, unexpected = masked_lm.load_state_dict(state, strict=False)
        tied = {name for name, _ in _tied_parameter_names(masked_lm)}
        missing = [k for k in missing if k not in tied and "pooler" not in k]
        if missing or unexpected:
            raise RuntimeError(
                f"could not map onto {type(masked_lm).__name__}: missing {missing}, unexpected {unexpected}"
            )
        masked_lm.tie_weights()
        return masked_lm

    def load_masked_lm(self, masked_lm: PreTrainedModel, head: bool = True) -> None:
        """Copy the weights of a family ``<Family>ForMaskedLM`` (or bare ``AutoModel``) into this model.

        Args:
            masked_lm: a model of the family of ``config.encoder``, with the same sizes.
            head: also copy the MLM head (only from a masked-LM model of a mapped family).
        """
        base = masked_lm.base_model
        missing, unexpected = self.mlm.encoder.load_state_dict(base.state_dict(), strict=False)
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]
        if missing or unexpected:
            raise UsageError(
                f"the encoder weights do not fit config.encoder: missing {missing}, unexpected {unexpected}"
            )
        layout = head_layout(self.config.encoder)
        if head and layout is not None and base is not masked_lm:
            family = masked_lm.state_dict()
            with torch.no_grad():
                for ours, theirs in _head_name_pairs(layout):
                    self.lm_head.get_parameter(ours).copy_(family[theirs])

    @classmethod
    def from_encoder(cls, name_or_path: str, **config_overrides: Any) -> MLMForPreTraining:
        """Start MLM from an existing checkpoint: its encoder weights, and its MLM head weights when it has them.

        Args:
            name_or_path: a Hub id or folder of any encoder family (``bert-base-uncased``, a RoBERTa or DistilBERT
                checkpoint, an :func:`~hf_ssl.models.mlm.save_encoder_export` folder), or an ``hf_ssl_mlm``
                checkpoint (loaded as it is).
            **config_overrides: :class:`MLMConfig` fields (``mlm_probability``, ``whole_word_masking``, ...).

        Returns:
            The model; its head is freshly initialised when the checkpoint has none (e.g. a bare ``AutoModel``).
        """
        config = AutoConfig.from_pretrained(name_or_path)
        if isinstance(config, MLMConfig):
            return cls.from_pretrained(name_or_path, **config_overrides)
        model = cls(MLMConfig(encoder=config, **config_overrides))
        model.load_encoder_checkpoint(name_or_path)
        return model

    def load_encoder_checkpoint(self, name_or_path: str) -> bool:
        """Load the weights of an encoder checkpoint of ``config.encoder``'s family into this model: the encoder's,
        and the MLM head's when the checkpoint has one (a ``<Family>ForMaskedLM`` checkpoint of a mapped family).

        Args:
            name_or_path: a Hub id or folder of the encoder family (not an ``hf_ssl_mlm`` checkpoint).

        Returns:
            Whether the head was loaded too (else it keeps its fresh initialisation).

        Raises:
            UsageError: weights that do not fit ``config.encoder``.
        """
        config = AutoConfig.from_pretrained(name_or_path)
        if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
            source, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
            layout = head_layout(config)
            head_names = {theirs for _, theirs in _head_name_pairs(layout)} if layout else set()
            has_head = layout is not None and not head_names & set(info["missing_keys"])
        else:
            source, has_head = AutoModel.from_pretrained(name_or_path), False
        self.load_masked_lm(source, head=has_head)
        return has_head


def _head_name_pairs(layout: MLMHeadLayout) -> list[tuple[str, str]]:
    """(our parameter name in ``lm_head``, the family's name) for every head parameter."""
    return [
        ("dense.weight", f"{layout.dense}.weight"),
        ("dense.bias", f"{layout.dense}.bias"),
        ("layer_norm.weight", f"{layout.layer_norm}.weight"),
        ("layer_norm.bias", f"{layout.layer_norm}.bias"),
        ("bias", layout.bias),
    ]


def _head_state_to_family(head: MLMPredictionHead, layout: MLMHeadLayout) -> dict[str, torch.Tensor]:
    return {theirs: head.get_parameter(ours).detach() for ours, theirs in _head_name_pairs(layout)}


def _tied_parameter_names(model: PreTrainedModel) -> list[tuple[str, str]]:
    """The (tied target, source) names of a transformers model (``decoder.weight`` -> the embeddings)."""
    return list(model.get_expanded_tied_weights_keys(all_submodels=True).items())
