"""Frozen-feature extraction: ``model(**inputs)`` then a pooler, for several encoders in one decoding pass.

Which pooler a checkpoint's backbone needs is registered per ``model_type`` (:func:`register_features`, called when an
objective is registered); checkpoints with no registration (e.g. an exported timm backbone) use ``pooler_output``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import PretrainedConfig

from hf_ssl.data.loading import Modality
from hf_ssl.errors import UsageError

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
            (by linear probe) and, at the top level, the last; default the backbone's ``pooler_output``.
        description: what the features are, in words, reported in the results (``"mean of patch tokens"``).
        extra_metrics: ``(model, test dataset, input column, preprocessor) -> {key: results}``: the objective's own
            measures on the evaluated split (e.g. masked-token accuracy), merged into the results.
    """

    modality: Modality
    pool: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor] = pooler_output
    description: str = "pooler_output"
    extra_metrics: Callable[[Any, Any, str, Callable], dict[str, Any]] | None = None


FEATURE_SPECS: dict[str, FeatureSpec] = {}
# backbones exported by hf_ssl in their ecosystem's format, read back through transformers' wrappers
FEATURE_SPECS["timm_wrapper"] = FeatureSpec("image", description="pooled timm features (pooler_output)")


def register_features(model_type: str, spec: FeatureSpec) -> None:
    """Tell evaluation how to get features from checkpoints of ``model_type``."""
    FEATURE_SPECS[model_type] = spec


def feature_spec(config: PretrainedConfig) -> FeatureSpec:
    """The :class:`FeatureSpec` of a checkpoint's config.

    Raises:
        UsageError: no objective registered features for its ``model_type``.
    """
    spec = FEATURE_SPECS.get(config.model_type)
    if spec is None:
        raise UsageError(
            f"cannot evaluate a {config.model_type!r} checkpoint; known model types: {', '.join(sorted(FEATURE_SPECS))}"
        )
    return spec


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
