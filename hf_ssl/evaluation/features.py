"""Frozen-feature extraction: ``model(**inputs)`` then a pooler, for several encoders in one decoding pass.

Which pooler a checkpoint's backbone needs is registered per ``model_type`` (:func:`register_features`, called when an
objective is registered, and for the exports read back through transformers' wrappers). A plain text encoder that
no objective registered (an MLM or SimCSE export, a sentence-transformers model, a Hub encoder such as
``bert-base-uncased``) is read as :func:`plain_text_features` says, a plain speech encoder (``Wav2Vec2Model``,
``HubertModel``, ``Data2VecAudioModel``, ...) as :func:`plain_audio_features` says, and ``timm:<architecture>`` is a
timm model by name (:func:`~hf_ssl.backbones.timm.wrapped_timm_model`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from hf_ssl.backbones import check_checkpoint_path, load_backbone
from hf_ssl.backbones.sentence_transformers import is_sentence_transformer, read_pooling
from hf_ssl.backbones.timm import timm_model_name, wrapped_timm_model
from hf_ssl.backbones.transformers import masked_mean
from hf_ssl.checkpoints import check_weights
from hf_ssl.data.loading import Modality
from hf_ssl.errors import UsageError

logger = logging.getLogger(__name__)

Features = torch.Tensor | dict[int, torch.Tensor]
"""``(B, F)`` features, or ``{layer index: (B, F)}``: one feature set per layer, in layer order."""

Encoder = Callable[[dict[str, torch.Tensor]], Features]
"""``inputs (e.g. {"pixel_values": (B, C, H, W)}) -> features (B, F)`` (or one set per layer)."""

Pooler = Callable[[Any, dict[str, torch.Tensor], nn.Module], Features]
"""``(model outputs, model inputs, model) -> features``: the model is there for what it computes from the inputs
(e.g. a speech encoder's frame mask)."""


def pooler_output(outputs: Any, inputs: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
    """The default pooler: the backbone's own ``pooler_output (B, F)``."""
    return outputs.pooler_output


@dataclass(frozen=True)
class FeatureSpec:
    """How evaluation gets features from an objective's backbone checkpoints.

    Args:
        modality: the data kind the backbone reads (chooses the task: preprocessing and baselines).
        pool: a :data:`Pooler`: ``(B, F)`` features, or ``{layer index: (B, F)}`` (e.g. each transformer layer's
            output): each layer is evaluated, the results report every layer, the best (by a linear probe on a
            held-out fifth of the fit split, never the scored split) and, at the top level, the last; default the
            backbone's ``pooler_output``.
        description: what the features are, in words, reported in the results (``"mean of patch tokens"``).
        extra_metrics: ``(model, test dataset, input column, preprocessor) -> {key: results}``: the objective's own
            measures on the evaluated split (e.g. masked-token accuracy), merged into the results.
        optional_weights: name prefixes of backbone weights that ``pool`` never reads, so a checkpoint may lack them
            (``"pooler."`` for mean-pooled text encoders).
    """

    modality: Modality
    pool: Pooler = pooler_output
    description: str = "pooler_output"
    extra_metrics: Callable[[Any, Any, str, Callable], dict[str, Any]] | None = None
    optional_weights: tuple[str, ...] = ()


FEATURE_SPECS: dict[str, FeatureSpec] = {}
# backbones exported by hf_ssl in their ecosystem's format, read back through transformers' wrappers
FEATURE_SPECS["timm_wrapper"] = FeatureSpec("image", description="pooled timm features (pooler_output)")


def register_features(model_type: str, spec: FeatureSpec) -> None:
    """Tell evaluation how to get features from checkpoints of ``model_type``."""
    FEATURE_SPECS[model_type] = spec


def mean_of_tokens(outputs: Any, inputs: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
    """``(B, F)``: the mean of ``last_hidden_state`` over the tokens where ``attention_mask`` is 1."""
    return masked_mean(outputs.last_hidden_state, inputs.get("attention_mask"))


def first_token(outputs: Any, inputs: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
    """``(B, F)``: the first token's state of ``last_hidden_state`` ([CLS])."""
    return outputs.last_hidden_state[:, 0]


def plain_text_features(model_name_or_path: str, config: PretrainedConfig) -> FeatureSpec | None:
    """How to read a text encoder that no objective registered, or ``None`` when the checkpoint is not one.

    A sentence-transformers folder is pooled as its ``Pooling`` module says (``cls`` or ``mean``); a family that
    transformers pretrains with a masked-LM head (BERT, RoBERTa, DeBERTa, ...) by the mean of its token states. The
    family's pooler, if any, is never read, so a checkpoint may lack it (our MLM export has none).

    Raises:
        UsageError: a sentence-transformers folder pooled otherwise (e.g. ``max``).
    """
    if is_sentence_transformer(model_name_or_path):
        pooling = read_pooling(model_name_or_path)
        if pooling not in ("cls", "mean"):
            raise UsageError(
                f"{model_name_or_path}: a sentence-transformers folder pooled by {pooling or 'a mode'} that evaluation "
                "does not read (it reads cls or mean pooling)"
            )
    elif config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        pooling = "mean"
    else:
        return None
    if pooling == "cls":
        return FeatureSpec("text", first_token, "the first token's state ([CLS])", optional_weights=("pooler.",))
    return FeatureSpec("text", mean_of_tokens, "mean of the token states", optional_weights=("pooler.",))


def frame_mask(model: nn.Module, attention_mask: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
    """``(B, T)`` bool mask of each clip's unpadded frames, as the speech encoder computes it from the sample-level
    ``attention_mask (B, L)`` (``_get_feature_vector_attention_mask`` of the transformers module inside ``model``:
    wav2vec 2.0, HuBERT, WavLM, data2vec-audio, ...); ``None`` without an attention mask.

    Raises:
        TypeError: an attention mask for a model with no speech encoder inside.
    """
    if attention_mask is None:
        return None
    speech = next((m for m in model.modules() if hasattr(m, "_get_feature_vector_attention_mask")), None)
    if speech is None:
        raise TypeError(f"{type(model).__name__} holds no speech encoder that computes a frame mask")
    return speech._get_feature_vector_attention_mask(num_frames, attention_mask).bool()


def mean_of_frames_per_layer(
    outputs: Any, inputs: dict[str, torch.Tensor], model: nn.Module
) -> torch.Tensor | dict[int, torch.Tensor]:
    """The mean over the unpadded frames (:func:`frame_mask`) of each layer's output of a speech encoder:
    ``{0: (B, H), ..., N: (B, H)}`` (layer 0: the transformer's input); without ``hidden_states`` (the audio task
    asks for them), the mean of ``last_hidden_state`` alone."""
    last = outputs.last_hidden_state  # (B, T, H)
    mask = frame_mask(model, inputs.get("attention_mask"), last.shape[1])

    def pool(states: torch.Tensor) -> torch.Tensor:
        return masked_mean(states, mask)  # (B, T, H) -> (B, H)

    hidden = getattr(outputs, "hidden_states", None)
    if not hidden:
        return pool(last)
    return dict(enumerate(pool(states) for states in hidden))


SPEECH_FEATURES = FeatureSpec(
    "audio",
    mean_of_frames_per_layer,
    "mean over unpadded frames of each transformer layer's output (layer_0: its input)",
)
"""How evaluation reads a speech encoder: the wav2vec objective's checkpoints and any plain speech encoder."""


def plain_audio_features(config: PretrainedConfig) -> FeatureSpec | None:
    """How to read a speech encoder that no objective registered, or ``None`` when the config is not one: a family
    that transformers fine-tunes for CTC and that reads raw waveforms through a convolutional front end
    (``conv_kernel`` / ``conv_stride`` in its config: wav2vec 2.0, HuBERT, data2vec-audio, WavLM, UniSpeech, SEW,
    ...) is pooled by the mean over its frames, per layer, as the wav2vec objective's features are."""
    if config.model_type not in MODEL_FOR_CTC_MAPPING_NAMES or not getattr(config, "conv_kernel", None):
        return None
    return SPEECH_FEATURES


def feature_spec(model_name_or_path: str, config: PretrainedConfig) -> FeatureSpec:
    """The :class:`FeatureSpec` of a checkpoint: registered for its ``model_type``, else that of a plain text
    encoder (:func:`plain_text_features`) or of a plain speech encoder (:func:`plain_audio_features`).

    Raises:
        UsageError: none of these.
    """
    spec = (
        FEATURE_SPECS.get(config.model_type)
        or plain_text_features(model_name_or_path, config)
        or plain_audio_features(config)
    )
    if spec is None:
        raise UsageError(
            f"--model_name_or_path {model_name_or_path}: cannot evaluate a {config.model_type!r} checkpoint; it reads "
            f"model types {', '.join(sorted(FEATURE_SPECS))}, text encoders with a masked-LM head, "
            "sentence-transformers folders, speech encoders with a convolutional front end, and timm:<architecture>"
        )
    return spec


def load_features(model_name_or_path: str, timm_checkpoint: str | None = None) -> tuple[PreTrainedModel, FeatureSpec]:
    """A checkpoint's backbone (eval mode) and how evaluation reads its features.

    Args:
        model_name_or_path: a checkpoint folder (a pretraining run, an export, any transformers, timm or
            sentence-transformers folder evaluation reads, see :func:`feature_spec`) or Hub id, or
            ``timm:<architecture>``: a timm model by name, at random initialisation unless ``timm_checkpoint``
            gives local weights (the results then say which).
        timm_checkpoint: weights of a ``timm:`` model, a file or a folder holding one.

    Raises:
        UsageError: no checkpoint there, one that evaluation cannot read, one whose ``model.safetensors`` is
            truncated or corrupt (named before anything is loaded), or one that lacks weights it reads; a
            ``timm_checkpoint`` for anything but a ``timm:`` name.
    """
    name = timm_model_name(model_name_or_path)
    if name is not None:
        model = wrapped_timm_model(name, timm_checkpoint)
        spec = FEATURE_SPECS["timm_wrapper"]
        if timm_checkpoint is None:
            logger.warning("%s has random weights (no --timm_checkpoint): a baseline, not a trained model", name)
            weights = f"{name} at random initialisation (no weights given: a baseline, not a trained model)"
        else:
            weights = f"{name} with the weights of {timm_checkpoint}"
        return model, dataclasses.replace(spec, description=f"{spec.description} of {weights}")
    if timm_checkpoint is not None:
        raise UsageError(
            f"--timm_checkpoint is for a timm architecture named as --model_name_or_path timm:<name>, not "
            f"{model_name_or_path} (a folder holds its own weights)"
        )
    try:
        path = check_checkpoint_path(model_name_or_path)
    except UsageError as error:
        raise UsageError(f"--model_name_or_path {error}") from error
    check_weights(path, what="--model_name_or_path")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"--model_name_or_path {path}: cannot read a checkpoint config (a folder, a Hub id, or timm:<architecture> "
            f"for a timm model by name): {first}"
        ) from error
    spec = feature_spec(path, config)
    return load_backbone(path, optional_weights=spec.optional_weights, config=config), spec


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_encoder(model: nn.Module, pool: Pooler = pooler_output) -> Encoder:
    """Wrap a backbone as an :data:`Encoder`: ``pool(model(**inputs), inputs, model)``.

    Floating-point inputs are cast to the model's dtype (a checkpoint may be stored in bfloat16); all are moved to
    its device.
    """
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")

    def encode(inputs: dict[str, torch.Tensor]) -> Features:
        moved = {
            key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()
        }
        return pool(model(**moved), moved, model)

    return encode


@torch.no_grad()
def extract_feature_sets(
    encoders: Mapping[str, Encoder | nn.Module],
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[dict[str, Features], torch.Tensor]:
    """Features of every row of ``dataset`` under each encoder, decoding and preprocessing each row once.

    Modules are put in eval mode for the pass (and restored afterwards) and moved to ``device``.

    Args:
        encoders: name -> an ``nn.Module`` backbone (pooled by ``pooler_output``) or an :data:`Encoder`.
        dataset: a map-style dataset whose rows ``collator`` accepts.
        collator: rows -> model inputs plus ``labels (B,)``.
        batch_size: rows per forward pass.
        device: where the encoders run; default: CUDA when available, else the CPU.
        num_workers: DataLoader worker processes decoding the rows.

    Returns:
        ``({name: (N, F_name) float32 CPU tensor}, labels (N,) int64)``, in dataset order; an encoder returning
        one feature set per layer gives ``{layer index: (N, F) tensor}`` under its name.
    """
    device = torch.device(device) if device is not None else default_device()
    modules = {name: enc for name, enc in encoders.items() if isinstance(enc, nn.Module)}
    was_training = {name: module.training for name, module in modules.items()}
    functions: dict[str, Encoder] = {}
    for name, encoder in encoders.items():
        if isinstance(encoder, nn.Module):
            encoder.to(device).eval()
            functions[name] = model_encoder(encoder)
        else:
            functions[name] = encoder
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator, num_workers=num_workers)
    chunks: dict[str, list[Features]] = {}
    labels: list[torch.Tensor] = []
    try:
        for batch in loader:
            batch_labels = batch.pop("labels")
            inputs = {key: value.to(device) for key, value in batch.items()}
            for name, encode in functions.items():
                chunks.setdefault(name, []).append(_to_cpu(encode(inputs)))
            labels.append(batch_labels.long())
    finally:
        for name, module in modules.items():
            module.train(was_training[name])
    if not labels:
        raise UsageError("the dataset is empty: there are no features to extract")
    return {name: _concatenated(parts) for name, parts in chunks.items()}, torch.cat(labels)


def _to_cpu(features: Features) -> Features:
    if isinstance(features, dict):
        return {layer: value.float().cpu() for layer, value in features.items()}
    return features.float().cpu()


def _concatenated(parts: list[Features]) -> Features:
    """The batches' features, concatenated along the rows (per layer for per-layer features)."""
    if isinstance(parts[0], dict):
        return {layer: torch.cat([part[layer] for part in parts]) for layer in parts[0]}
    return torch.cat(parts)


def last_layer(features: Features) -> torch.Tensor:
    """``(N, F)``: the features themselves, or the last layer's of per-layer features (what ``hf-ssl evaluate``
    reports at its top level)."""
    return features[max(features)] if isinstance(features, dict) else features


def extract_features(
    model: Encoder | nn.Module,
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[Features, torch.Tensor]:
    """Frozen features of every row of ``dataset`` under one encoder (see :func:`extract_feature_sets`).

    Returns:
        ``(features (N, F) float32, labels (N,) int64)``, both on the CPU, in dataset order (per-layer features:
        ``{layer index: (N, F)}``).
    """
    features, labels = extract_feature_sets(
        {"model": model}, dataset, collator, batch_size=batch_size, device=device, num_workers=num_workers
    )
    return features["model"], labels
