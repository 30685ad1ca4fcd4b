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

Encoder = Callable[[dict[str, torch.Tensor]], torch.Tensor]
"""``inputs (e.g. {"pixel_values": (B, C, H, W)}) -> features (B, F)``."""


def pooler_output(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The default pooler: the backbone's own ``pooler_output (B, F)``."""
    return outputs.pooler_output


@dataclass(frozen=True)
class FeatureSpec:
    """How evaluation gets features from an objective's backbone checkpoints.

    Args:
        modality: the data kind the backbone reads (chooses the task: preprocessing and baselines).
        pool: ``(model outputs, inputs) -> (B, F)`` features, or an ordered ``{layer: (B, F)}`` of several feature
            sets (e.g. each transformer layer's output): each is evaluated, the results report every layer, the best
            (by a linear probe on a held-out fifth of the fit split, never the scored split) and, at the top level,
            the last; default the backbone's ``pooler_output``.
        description: what the features are, in words, reported in the results (``"mean of patch tokens"``).
        extra_metrics: ``(model, test dataset, input column, preprocessor) -> {key: results}``: the objective's own
            measures on the evaluated split (e.g. masked-token accuracy), merged into the results.
        optional_weights: name prefixes of backbone weights that ``pool`` never reads, so a checkpoint may lack them
            (``"pooler."`` for mean-pooled text encoders).
    """

    modality: Modality
    pool: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] = pooler_output
    description: str = "pooler_output"
    extra_metrics: Callable[[Any, Any, str, Callable], dict[str, Any]] | None = None
    optional_weights: tuple[str, ...] = ()


FEATURE_SPECS: dict[str, FeatureSpec] = {}
# backbones exported by hf_ssl in their ecosystem's format, read back through transformers' wrappers
FEATURE_SPECS["timm_wrapper"] = FeatureSpec("image", description="pooled timm features (pooler_output)")


def register_features(model_type: str, spec: FeatureSpec) -> None:
    """Tell evaluation how to get features from checkpoints of ``model_type``."""
    FEATURE_SPECS[model_type] = spec


def mean_of_tokens(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(B, F)``: the mean of ``last_hidden_state`` over the tokens where ``attention_mask`` is 1."""
    return masked_mean(outputs.last_hidden_state, inputs.get("attention_mask"))


def first_token(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
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


def frame_weights(attention_mask: torch.Tensor | None, num_frames: int, batch_size: int) -> torch.Tensor:
    """``(B, T)`` weights that average over each clip's unpadded frames (rows sum to 1).

    A clip's frame count is its share of the padded sample length, ``num_frames * samples // padded samples``
    (at least 1): the frames of the padding are left out, as in the wav2vec objective's pooling.
    """
    if attention_mask is None:
        return torch.full((batch_size, num_frames), 1.0 / num_frames)
    lengths = (attention_mask.sum(-1).long() * num_frames) // attention_mask.shape[1]  # (B,)
    lengths = lengths.clamp(min=1, max=num_frames)
    mask = (torch.arange(num_frames, device=attention_mask.device)[None, :] < lengths[:, None]).float()  # (B, T)
    return mask / mask.sum(1, keepdim=True)


def mean_of_frames_per_layer(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
    """The mean over unpadded frames of each layer's output of a speech encoder: ``{"layer_0": (B, H), ...,
    "layer_N": (B, H)}`` (``layer_0``: the transformer's input); without ``hidden_states`` (the audio task asks for
    them), the mean of ``last_hidden_state`` alone."""
    last = outputs.last_hidden_state  # (B, T, H)
    weights = frame_weights(inputs.get("attention_mask"), last.shape[1], last.shape[0]).to(last.device, last.dtype)

    def pool(states: torch.Tensor) -> torch.Tensor:
        return (states * weights[..., None]).sum(1)  # (B, T, H) -> (B, H)

    hidden = getattr(outputs, "hidden_states", None)
    if not hidden:
        return pool(last)
    return {f"layer_{i}": pool(states) for i, states in enumerate(hidden)}


def plain_audio_features(config: PretrainedConfig) -> FeatureSpec | None:
    """How to read a speech encoder that no objective registered, or ``None`` when the config is not one: a family
    that transformers fine-tunes for CTC and that reads raw waveforms through a convolutional front end
    (``conv_kernel`` / ``conv_stride`` in its config: wav2vec 2.0, HuBERT, data2vec-audio, WavLM, UniSpeech, SEW,
    ...) is pooled by the mean over its frames, per layer, as the wav2vec objective's features are."""
    if config.model_type not in MODEL_FOR_CTC_MAPPING_NAMES or not getattr(config, "conv_kernel", None):
        return None
    return FeatureSpec(
        "audio",
        mean_of_frames_per_layer,
        "mean over unpadded frames of each transformer layer's output (layer_0: its input)",
    )


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
    return load_backbone(path, optional_weights=spec.optional_weights), spec


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_encoder(model: nn.Module, pool: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] = pooler_output):
    """Wrap a backbone as an :data:`Encoder`: ``pool(model(**inputs), inputs)``.

    Floating-point inputs are cast to the model's dtype (a checkpoint may be stored in bfloat16); all are moved to
    its device.
    """
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")

    def encode(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = {
            key: value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()
        }
        return pool(model(**moved), moved)

    return encode


@torch.no_grad()
def extract_feature_sets(
    encoders: Mapping[str, Encoder | nn.Module],
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
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
        ``({name: (N, F_name) float32 CPU tensor}, labels (N,) int64)``, in dataset order; an encoder returning a
        dict of feature sets (one per layer) gives one entry ``"name/key"`` per set.
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
    chunks: dict[str, list[torch.Tensor]] = {}
    labels: list[torch.Tensor] = []
    try:
        for batch in loader:
            batch_labels = batch.pop("labels")
            inputs = {key: value.to(device) for key, value in batch.items()}
            for name, encode in functions.items():
                features = encode(inputs)  # (B, F), or {layer: (B, F)} for a pooler reporting several layers
                named = features.items() if isinstance(features, dict) else [(None, features)]
                for key, value in named:
                    chunks.setdefault(name if key is None else f"{name}/{key}", []).append(value.float().cpu())
            labels.append(batch_labels.long())
    finally:
        for name, module in modules.items():
            module.train(was_training[name])
    if not labels:
        raise UsageError("the dataset is empty: there are no features to extract")
    return {name: torch.cat(parts) for name, parts in chunks.items()}, torch.cat(labels)


def extract_features(
    model: Encoder | nn.Module,
    dataset: Any,
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int = 256,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every row of ``dataset`` under one encoder (see :func:`extract_feature_sets`).

    Returns:
        ``(features (N, F) float32, labels (N,) int64)``, both on the CPU, in dataset order.
    """
    features, labels = extract_feature_sets(
        {"model": model}, dataset, collator, batch_size=batch_size, device=device, num_workers=num_workers
    )
    return features["model"], labels
