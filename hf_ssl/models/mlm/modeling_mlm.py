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
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING
from transformers.utils import ModelOutput

from hf_ssl.backbones.transformers import TextEncoderModel, TextEncoderPreTrainedModel
from hf_ssl.errors import UsageError
from hf_ssl.health import HealthOutput
from hf_ssl.losses import mean_over_items
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
    """BERT's MLM head: dense -> activation -> LayerNorm, then the output projection ``decoder`` plus a per-token
    bias, as transformers' ``BertLMPredictionHead``.

    The decoder's weight is the input embedding matrix: :class:`MLMForPreTraining` declares the tie
    (``_tied_weights_keys``) and transformers' ``tie_weights`` makes ``decoder.weight`` the embeddings' own parameter.
    The projection runs inside this module, so a wrapper that gathers a module's parameters around its forward (FSDP)
    gathers the embedding matrix for it. The bias is this module's own parameter, added after the decoder (the
    checkpoint name ``lm_head.bias`` is unchanged). ``BertLMPredictionHead`` instead ties it to ``decoder.bias``: one
    parameter in two modules that Accelerate's FSDP2 wrapping puts in two units, which torch refuses ("shared with a
    parameter already managed by another FSDP group", as ``BertForMaskedLM`` itself does under that wrapping).

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
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)  # weight tied to the input embeddings (V, H)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states (..., H)`` -> logits ``(..., V)``."""
        hidden_states = self.layer_norm(self.activation(self.dense(hidden_states)))
        return self.decoder(hidden_states) + self.bias

    def resize_bias(self, vocab_size: int) -> None:
        """Give the bias ``vocab_size`` entries: the first ones keep their values, new ones start at zero."""
        old = self.bias
        if old.shape[0] == vocab_size:
            return
        new = torch.zeros(vocab_size, dtype=old.dtype, device=old.device)
        kept = min(vocab_size, old.shape[0])
        new[:kept] = old.detach()[:kept]
        self.bias = nn.Parameter(new, requires_grad=old.requires_grad)


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

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """transformers' ``resize_token_embeddings`` (the MLM head, tied to the embeddings, follows them), with the
        new size written to ``config.encoder.vocab_size``, where the encoder is rebuilt from.

        transformers writes it to ``config.get_text_config()``, which for this composite config is the top level.
        """
        had_top_level_size = "vocab_size" in self.config.__dict__
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.encoder.vocab_size = embeddings.num_embeddings
        if not had_top_level_size:
            self.config.__dict__.pop("vocab_size", None)
        return embeddings


class MLMModel(TextEncoderModel, MLMPreTrainedModel):
    """The encoder alone (what ``AutoModel`` loads from an MLM checkpoint): token ids in, hidden states out.

    ``pooler_output`` is the attention-masked mean of the token states, not the family's pooler (MLM does not train
    one, so none is built).
    """

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]


class MLMForPreTraining(MLMPreTrainedModel):
    """An encoder and BERT's MLM head, trained to predict the selected tokens (Devlin et al., 2019).

    The vocabulary projection (the costly part: ``H x V`` per position) runs only on the labelled positions when
    ``config.sparse_prediction`` is set (the default): the loss and gradients are those of projecting every position
    and ignoring the unlabelled ones, at ~15% of the cost.

    The head's decoder is tied to the input embeddings the way transformers ties ``BertForMaskedLM``'s:
    ``_tied_weights_keys`` names the pair, ``get_output_embeddings`` returns the decoder, and ``tie_weights`` (run by
    ``post_init``, ``from_pretrained`` and ``resize_token_embeddings``) makes them one parameter. Saved checkpoints
    hold the matrix once, under the embeddings' name, as they did before the decoder existed.
    """

    _keys_to_ignore_on_load_unexpected = [r"pooler\."]
    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch: the loss is a mean over the whole step

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
        # the embeddings' parameter name depends on the family (BERT, DistilBERT: embeddings.word_embeddings)
        self._tied_weights_keys = {"lm_head.decoder.weight": self._input_embedding_weight_name()}
        self.post_init()

    def _input_embedding_weight_name(self) -> str:
        embeddings = self.get_input_embeddings()
        return next(f"{name}.weight" for name, module in self.named_modules() if module is embeddings)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict[str, str]:
        """transformers' tied-weight mapping; for this model alone, the decoder -> embeddings tie, always.

        BERT's MLM ties them by definition, so the tie does not depend on ``tie_word_embeddings`` (which the composite
        :class:`MLMConfig` does not carry; transformers would read its absence as "do not tie").
        """
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)  # calls this one for the top level
        return dict(self._tied_weights_keys)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        """Install a new decoder (``resize_token_embeddings`` does); the bias follows its vocabulary size."""
        self.lm_head.decoder = new_embeddings
        self.lm_head.resize_bias(new_embeddings.out_features)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # ``load_state_dict`` of a saved checkpoint's tensors (a ``model.safetensors``, also those written before the
        # head had a decoder): a tied decoder weight is stored once, under the embeddings' name; read it from there.
        for target, source in self._tied_weights_keys.items():
            if prefix + target not in state_dict and prefix + source in state_dict:
                state_dict[prefix + target] = state_dict[prefix + source]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> MLMForPreTrainingOutput:
        """Args:
            input_ids: ``(B, L)`` token ids, already masked (see :class:`~hf_ssl.models.mlm.collator.MLMCollator`).
            attention_mask: ``(B, L)``, 1 for tokens, 0 for padding.
            labels: ``(B, L)``, the original token at each selected position and -100 elsewhere.
            token_type_ids: ``(B, L)`` segment ids, for the families that have them.
            num_items_in_batch: labelled tokens in the whole optimisation step (all micro-batches and processes);
                the summed cross entropy is divided by it. ``None``: the mean over this batch's labelled tokens.

        Returns:
            :class:`MLMForPreTrainingOutput`. With ``labels`` and sparse prediction, ``logits`` holds only the
            labelled positions, ``(N, V)``; without ``labels``, the logits of every position ``(B, L, V)``.
        """
        hidden = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, L, H)
        if labels is None:
            return MLMForPreTrainingOutput(logits=self.lm_head(hidden), last_hidden_state=hidden)

        selected = labels != IGNORE_INDEX  # (B, L)
        targets = labels[selected]  # (N,)
        if self.config.sparse_prediction:
            logits = self.lm_head(hidden[selected])  # (N, H) -> (N, V)
            selected_logits = logits
        else:
            logits = self.lm_head(hidden)  # (B, L, V)
            selected_logits = logits[selected]  # (N, V)
        if targets.numel() == 0:
            # nothing to predict: a zero loss that still reaches every parameter (keeps DDP's gradient sync intact)
            loss = selected_logits.sum() * 0.0
            accuracy = loss.detach()
        else:
            summed = F.cross_entropy(selected_logits.float(), targets, reduction="sum")
            loss = mean_over_items(summed, targets.numel(), num_items_in_batch)
            accuracy = (selected_logits.detach().argmax(dim=-1) == targets).float().mean()
        return MLMForPreTrainingOutput(loss=loss, accuracy=accuracy, logits=logits, last_hidden_state=hidden)

    def health(self, batch: dict[str, Any]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the loss and ``masked_accuracy`` on its masked
        tokens, and the encoder's sentence features (the mean over tokens, as :class:`MLMModel`) of the unmasked text
        (each selected token put back)."""
        labels, mask, types = batch["labels"], batch.get("attention_mask"), batch.get("token_type_ids")
        output = self(batch["input_ids"], attention_mask=mask, labels=labels, token_type_ids=types)
        original = torch.where(labels != IGNORE_INDEX, labels, batch["input_ids"])  # (B, L)
        features = self.mlm(original, attention_mask=mask, token_type_ids=types).pooler_output  # (B, H)
        scalars = {"masked_accuracy": output.accuracy}
        return HealthOutput(embeddings=features, loss=output.loss, scalars=scalars, isotropic=False)

    def num_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """The tokens this batch predicts (its labels that are not -100)."""
        return (batch["labels"] != IGNORE_INDEX).sum()

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
                checkpoint, an :func:`~hf_ssl.models.mlm.export.save_encoder_export` folder), or an ``hf_ssl_mlm``
                checkpoint (loaded as it is).
            **config_overrides: :class:`MLMConfig` fields (``mlm_probability``, ``whole_word_masking``, ...).

        Returns:
            The model; its head is freshly initialised when the checkpoint has none (e.g. a bare ``AutoModel``).
        """
        config = AutoConfig.from_pretrained(name_or_path)
        if isinstance(config, MLMConfig):
            return cls.from_pretrained(name_or_path, **config_overrides)
        model = cls(MLMConfig(encoder=config, **config_overrides))
        model.load_encoder_checkpoint(name_or_path, config)
        return model

    def load_encoder_checkpoint(self, name_or_path: str, config: PretrainedConfig) -> bool:
        """Load the weights of an encoder checkpoint of ``config.encoder``'s family into this model: the encoder's,
        and the MLM head's when the checkpoint has one (a ``<Family>ForMaskedLM`` checkpoint of a mapped family).

        Args:
            name_or_path: a Hub id or folder of the encoder family (not an ``hf_ssl_mlm`` checkpoint).
            config: the checkpoint's config, as read from ``name_or_path``.

        Returns:
            Whether the head was loaded too (else it keeps its fresh initialisation).

        Raises:
            UsageError: weights that do not fit ``config.encoder``.
        """
        if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
            source, info = AutoModelForMaskedLM.from_pretrained(name_or_path, config=config, output_loading_info=True)
            layout = head_layout(config)
            head_names = {theirs for _, theirs in _head_name_pairs(layout)} if layout else set()
            has_head = layout is not None and not head_names & set(info["missing_keys"])
        else:
            source, has_head = AutoModel.from_pretrained(name_or_path, config=config), False
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
