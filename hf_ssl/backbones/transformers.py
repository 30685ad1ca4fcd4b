"""transformers text encoders as backbones: the encoder sub-config of a composite hf_ssl config (MLM, SimCSE) and
its checks, the bare encoder ``AutoModel`` builds from it, the models built around it (:class:`TextEncoderModel`:
what ``AutoModel`` loads from such a checkpoint), its fit to a tokenizer and a sequence length, and the mean of its
token states over the non-padding tokens."""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from hf_ssl.errors import UsageError, check_int, check_range

logger = logging.getLogger(__name__)

# families whose position ids start after the padding index, so a sequence needs pad_token_id + 1 more positions
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text")

DEFAULT_ENCODER: dict[str, Any] = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}
"""The default encoder of the text objectives: a small BERT (Devlin et al., 2019 layout at a quarter of BERT-base's
width, a third of its depth) over the bert-base-uncased WordPiece vocabulary (30,522 tokens); one for all, so an MLM
run is a drop-in start for SimCSE."""

ENCODER_SUB_CONFIGS = {
    "encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert", init_kwargs=DEFAULT_ENCODER),
}
"""``sub_configs_defaults`` of a composite config with an ``encoder`` of any family (transformers builds the dict a
config is given, or :data:`DEFAULT_ENCODER` for none, into its config class)."""


def resolve_encoder_config(encoder: str | dict[str, Any] | PretrainedConfig | None) -> PretrainedConfig | dict | None:
    """The encoder sub-config from what a user may pass: a model name or path is resolved to its config.

    An hf_ssl checkpoint whose config is composite (``hf_ssl_mlm``, ``hf_ssl_simcse``: an ``encoder`` sub-config)
    contributes that encoder config. Dicts and configs pass through.

    Raises:
        UsageError: the name or path has no readable config.
    """
    if encoder is not None and not isinstance(encoder, str | dict | PretrainedConfig):
        raise UsageError(
            f"encoder must be a config dict with a model_type, a PretrainedConfig or a model name/path, "
            f"got {type(encoder).__name__}"
        )
    if isinstance(encoder, PretrainedConfig):
        return inner_encoder_config(encoder)
    if not isinstance(encoder, str):
        return encoder
    try:
        config = AutoConfig.from_pretrained(encoder)
    except (OSError, ValueError) as error:
        raise UsageError(
            f"encoder must be a config dict with a model_type, or a model name/path with a config.json; "
            f"could not read the config of {encoder!r}: {error}"
        ) from error
    return inner_encoder_config(config)


def check_text_encoder(encoder: PretrainedConfig, why_bidirectional: str) -> None:
    """Refuse an encoder sub-config that is not a bidirectional text encoder.

    Args:
        encoder: the ``encoder`` sub-config.
        why_bidirectional: what needs bidirectional attention, for the message (``"masked language modelling"``).

    Raises:
        UsageError: no integer ``vocab_size`` / ``hidden_size``, or a decoder.
    """
    for field in ("vocab_size", "hidden_size"):
        if not isinstance(getattr(encoder, field, None), int):
            raise UsageError(f"encoder ({encoder.model_type!r}) must be a text encoder config with an integer {field}")
    if getattr(encoder, "is_decoder", False):
        raise UsageError(f"encoder.is_decoder must be False: {why_bidirectional} needs bidirectional attention")


def inner_encoder_config(config: PretrainedConfig) -> PretrainedConfig:
    """``config.encoder`` for a composite hf_ssl config (MLM, SimCSE), else ``config`` itself."""
    inner = getattr(config, "encoder", None)
    return inner if isinstance(inner, PretrainedConfig) else config


def create_encoder(encoder_config: PretrainedConfig) -> PreTrainedModel:
    """The bare encoder ``AutoModel`` builds for ``encoder_config``, without its pooling layer where it has one.

    Raises:
        UsageError: ``AutoModel`` knows no model for this config.
    """
    model_class = MODEL_MAPPING.get(type(encoder_config), None)
    if model_class is None:
        raise UsageError(f"encoder: AutoModel has no model for model_type {encoder_config.model_type!r}")
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False  # MLM never trains it; an untrained pooler would only mislead
    return AutoModel.from_config(encoder_config, **kwargs)


@functools.cache
def _forward_takes_token_type_ids(encoder_class: type) -> bool:
    return "token_type_ids" in inspect.signature(encoder_class.forward).parameters


def takes_token_type_ids(encoder: PreTrainedModel) -> bool:
    """Whether the encoder's ``forward`` has segment ids (BERT, RoBERTa) or not (DistilBERT); read once per class,
    since every forward pass asks."""
    return _forward_takes_token_type_ids(type(encoder))


class TextEncoderPreTrainedModel(PreTrainedModel):
    """Base of the hf_ssl models built around one transformers text encoder, ``base_model.encoder`` (MLM, SimCSE).

    The input embeddings are the encoder's; the attention implementation is the encoder's own, and these flags let a
    request (default: SDPA) reach it. Subclasses set ``config_class``, ``base_model_prefix`` and ``_init_weights``
    for their own layers (the encoder initialises itself).
    """

    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.encoder.set_input_embeddings(value)

    def token_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``input_ids (B, L)`` -> the encoder's ``last_hidden_state (B, L, H)``; ``token_type_ids`` are dropped for
        families without segments (DistilBERT)."""
        encoder = self.base_model.encoder
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if token_type_ids is not None and takes_token_type_ids(encoder):
            kwargs["token_type_ids"] = token_type_ids
        return encoder(input_ids=input_ids, **kwargs).last_hidden_state


class TextEncoderModel(TextEncoderPreTrainedModel):
    """The encoder alone, what ``AutoModel`` loads from the checkpoint of an objective built around a text encoder:
    token ids in, hidden states and one pooled vector per sequence (:meth:`pool`) out.

    An objective's model derives from this and from its own ``PreTrainedModel`` base (config class, prefix), names
    the weights of its training-only layers in ``_keys_to_ignore_on_load_unexpected`` and overrides :meth:`pool`
    where its sentence vector is not the mean over the tokens.
    """

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.encoder = create_encoder(config.encoder)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Args:
            input_ids: ``(B, L)`` token ids.
            attention_mask: ``(B, L)``, 1 for tokens, 0 for padding; ``None`` means all tokens.
            token_type_ids: ``(B, L)`` segment ids, for the families that have them (dropped otherwise).

        Returns:
            ``last_hidden_state (B, L, H)`` and ``pooler_output (B, H)``, the :meth:`pool` of the token states.
        """
        hidden = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, L, H)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=self.pool(hidden, attention_mask))

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Token states ``(B, L, H)`` -> one vector per sequence ``(B, H)``: the mean over the non-padding tokens."""
        return masked_mean(hidden, attention_mask)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Token states ``(B, L, H)`` -> ``(B, H)``: the mean over the tokens where ``attention_mask (B, L)`` is 1 (over
    all tokens when it is ``None``)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def fit_encoder_to_tokenizer(config: PretrainedConfig, tokenizer: Any, from_checkpoint: bool) -> None:
    """Make ``config.encoder`` agree with the tokenizer before the model is built.

    A new encoder gets the tokenizer's vocabulary size and padding id. A checkpoint's embeddings are fixed: the
    tokenizer must not have more tokens than they have rows.

    Raises:
        UsageError: a tokenizer larger than the checkpoint's vocabulary.
    """
    encoder = config.encoder
    size = len(tokenizer)
    if from_checkpoint:
        if size > encoder.vocab_size:
            raise UsageError(
                f"the tokenizer has {size} tokens but the checkpoint's embeddings only {encoder.vocab_size}: use the "
                "checkpoint's own tokenizer (leave out --tokenizer_name)"
            )
        return
    if encoder.vocab_size != size:
        logger.info("encoder vocab_size %d -> %d, the tokenizer's", encoder.vocab_size, size)
        encoder.vocab_size = size
    if tokenizer.pad_token_id is not None:
        encoder.pad_token_id = config.pad_token_id = tokenizer.pad_token_id


def position_offset(encoder_config: PretrainedConfig) -> int:
    """Position embeddings a sequence uses beyond its length: ``pad_token_id + 1`` for the families whose position
    ids start after the padding index (RoBERTa-style), else 0."""
    if getattr(encoder_config, "model_type", "") in _POSITIONS_AFTER_PADDING:
        return (getattr(encoder_config, "pad_token_id", None) or 0) + 1
    return 0


def max_sequence_length(config: PretrainedConfig) -> int | None:
    """The most tokens per sequence (special tokens included) the encoder of ``config`` reads: its
    ``max_position_embeddings`` less the positions its family reserves (:func:`position_offset`, e.g. RoBERTa's
    ``pad_token_id + 1``); the config's own, or that of its ``encoder`` / ``text_config`` sub-config (hf_ssl's
    composite configs). ``None`` for an encoder without absolute positions (no limit of its own).

    This is the limit sentence-transformers and transformers' pipelines should truncate to, not the length a run
    trained on (a tokenizer trained by hf_ssl records the training crop as its ``model_max_length``).
    """
    for candidate in (config, getattr(config, "encoder", None), getattr(config, "text_config", None)):
        positions = getattr(candidate, "max_position_embeddings", None)
        if isinstance(positions, int):
            return positions - position_offset(candidate)
    return None


def training_length(tokenizer: Any, config: PretrainedConfig) -> int | None:
    """The pretraining crop a checkpoint's tokenizer records, or ``None``: hf_ssl's text objectives save the tokenizer
    with ``model_max_length`` set to ``--max_seq_length`` (SimCSE always, MLM when it trained the tokenizer), so a
    value below the encoder's own limit (:func:`max_sequence_length`) is the training length."""
    recorded = getattr(tokenizer, "model_max_length", None)
    limit = max_sequence_length(config)
    if not isinstance(recorded, int) or recorded <= 0 or (limit is not None and recorded >= limit):
        return None
    return recorded if limit is not None or recorded < 100_000 else None


def check_sequence_length(config: PretrainedConfig, max_seq_length: int) -> None:
    """Raise :class:`UsageError` when the encoder has fewer positions than ``max_seq_length`` needs."""
    encoder = config.encoder
    positions = getattr(encoder, "max_position_embeddings", None)
    if positions is None:
        return
    needed = max_seq_length + position_offset(encoder)
    if needed > positions:
        raise UsageError(
            f"--max_seq_length {max_seq_length} needs {needed} position embeddings but the encoder has {positions}; "
            "lower --max_seq_length or raise the encoder's max_position_embeddings"
        )


# --- speech backbones (wav2vec 2.0's layout: a CNN feature encoder, then a transformer) ------------------------------


def receptive_field(conv_kernel: list[int] | tuple[int, ...], conv_stride: list[int] | tuple[int, ...]) -> int:
    """Samples one output frame of a stack of 1-D convolutions sees: ``1 + sum_i (k_i - 1) * prod_{j<i} s_j``.

    It is also the shortest input that yields one frame (400 samples, 25 ms at 16 kHz, for wav2vec 2.0's encoder,
    as transformers' ``Wav2Vec2Model._get_feat_extract_output_lengths`` computes frames).
    """
    field, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride, strict=True):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def frame_stride(conv_stride: list[int] | tuple[int, ...]) -> int:
    """Samples between consecutive frames of a stack of 1-D convolutions (320, 20 ms at 16 kHz, for wav2vec 2.0)."""
    stride = 1
    for s in conv_stride:
        stride *= s
    return stride


def check_speech_pretraining(config: PretrainedConfig) -> None:
    """The checks every span-masked speech pretraining config shares (wav2vec 2.0, data2vec audio): its masking
    (``mask_time_prob``, ``mask_time_length``, ``mask_time_min_masks``), clip rate and length, no fine-tuning adapter
    on ``config.backbone``, and clips long enough for one mask span plus one frame.

    Raises:
        UsageError: the first value out of range.
    """
    check_range("mask_time_prob", config.mask_time_prob, 0.0, 1.0, low_inclusive=False)
    check_int("mask_time_length", config.mask_time_length, 1)
    check_int("mask_time_min_masks", config.mask_time_min_masks, 0)
    check_int("sampling_rate", config.sampling_rate, 1)
    check_range("max_duration_seconds", config.max_duration_seconds, 0.0, low_inclusive=False)
    backbone = config.backbone
    if backbone.add_adapter:
        raise UsageError("backbone.add_adapter must be False for pretraining (the adapter is for fine-tuning)")
    shortest = receptive_field(backbone.conv_kernel, backbone.conv_stride)
    shortest += config.mask_time_length * frame_stride(backbone.conv_stride)
    if shortest > config.max_duration_seconds * config.sampling_rate:
        raise UsageError(
            f"max_duration_seconds ({config.max_duration_seconds}) is too short: at {config.sampling_rate} Hz the "
            f"backbone needs {shortest} samples for mask_time_length ({config.mask_time_length}) + 1 frames"
        )


class SpeechEncoderModel(PreTrainedModel):
    """The speech backbone alone, what ``AutoModel`` loads from the checkpoint of a span-masked speech objective
    (wav2vec 2.0, data2vec audio): a transformers model of wav2vec 2.0's layout (``Wav2Vec2Model``,
    ``Data2VecAudioModel``) built from ``config.backbone`` at ``self.backbone``, with the mask embedding pretraining
    always needs (the backbone makes its ``masked_spec_embed`` only when its own SpecAugment is on).

    An objective's model derives from this and from its own ``PreTrainedModel`` base (config class, prefix), sets
    ``backbone_class`` and names the weights of its training-only layers in ``_keys_to_ignore_on_load_unexpected``.
    ``forward(input_values (B, L), attention_mask (B, L), mask_time_indices (B, T))`` returns the backbone's output
    (``hidden_states``, the transformer's input then each layer's output, when ``output_hidden_states`` is given or
    set on this model's config: the backbone's own config is a sub-config, so the flag is passed down explicitly).
    """

    backbone_class: type[PreTrainedModel]

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.backbone = self.backbone_class(config.backbone)
        if getattr(self.backbone, "masked_spec_embed", None) is None:
            self.backbone.masked_spec_embed = nn.Parameter(torch.empty(config.backbone.hidden_size).uniform_())
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        return self.backbone(
            input_values,
            attention_mask=attention_mask,
            mask_time_indices=mask_time_indices,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )


def save_plain_backbone(
    backbone: nn.Module,
    backbone_config: PretrainedConfig,
    model_class: type[PreTrainedModel],
    output_dir: str | Path,
    safe_serialization: bool = True,
) -> Path:
    """Write ``backbone``'s weights as a plain transformers ``model_class`` built from a copy of ``backbone_config``
    (``AutoModel`` loads it without ``hf_ssl``): the weights ``model_class`` has not (the mask embedding
    :class:`SpeechEncoderModel` adds when the backbone's SpecAugment is off) are dropped; every one it has must be
    there.

    Returns:
        ``output_dir`` as a ``Path`` (created if needed).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = backbone_config.__class__.from_dict(backbone_config.to_dict())
    config.architectures = [model_class.__name__]
    exported = model_class(config)
    wanted = exported.state_dict().keys()
    exported.load_state_dict({k: v for k, v in backbone.state_dict().items() if k in wanted}, strict=True)
    exported.save_pretrained(output_dir, safe_serialization=safe_serialization)
    return output_dir


def load_plain_backbone(
    backbone: nn.Module, model_class: type[PreTrainedModel], model_name_or_path: str, backbone_config: PretrainedConfig
) -> None:
    """Load a plain transformers checkpoint of ``model_class`` (a folder or Hub id) into ``backbone`` (built from
    ``backbone_config``); a checkpoint without the mask embedding (its SpecAugment was off) leaves ours as it is.

    Raises:
        UsageError: weights that cannot be read or do not fit ``backbone_config``.
    """
    try:
        weights, info = model_class.from_pretrained(
            model_name_or_path, config=backbone_config, output_loading_info=True
        )
    except OSError as err:
        raise UsageError(f"--model_name_or_path {model_name_or_path}: cannot load its weights: {err}") from err
    except RuntimeError as err:  # transformers raises on weights of another shape (ignore_mismatched_sizes off)
        raise UsageError(
            f"--model_name_or_path {model_name_or_path}: its weights do not fit the backbone (other shapes)"
        ) from err
    missing = [k for k in info.get("missing_keys") or () if k != "masked_spec_embed"]
    if missing or info.get("mismatched_keys"):
        raise UsageError(
            f"--model_name_or_path {model_name_or_path}: its weights do not fit the backbone (missing "
            f"{missing[:5]}, mismatched {list(info.get('mismatched_keys') or [])[:5]})"
        )
    backbone.load_state_dict(weights.state_dict(), strict=False)
