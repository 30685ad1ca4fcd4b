"""wav2vec 2.0 as an objective: its data (clips checked before training, cropped and normalised in the collator),
its features for evaluation (mean-pooled output of every transformer layer), its export (a plain ``Wav2Vec2Model``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import torch
from datasets import Dataset, IterableDataset
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, TrainerCallback, Wav2Vec2Config, Wav2Vec2Model

from hf_ssl._version import __version__
from hf_ssl.backbones import load_backbone
from hf_ssl.data import find_column
from hf_ssl.data.audio import DEFAULT_AUDIO_DATASET, AudioDataArguments, load_default_audio, prepare_audio
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.export import ExportContext, Exporter
from hf_ssl.export.model_card import (
    REPO_ID_PLACEHOLDER,
    card_metadata,
    evaluation_summary,
    render_model_card,
    training_rows,
)
from hf_ssl.models.wav2vec.callbacks import GumbelTemperatureCallback
from hf_ssl.models.wav2vec.collator import AudioCollator, feature_extractor_for
from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig
from hf_ssl.models.wav2vec.export import save_backbone_export
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining, Wav2VecModel
from hf_ssl.models.wav2vec.report import report_pictures
from hf_ssl.objectives import Objective, PreparedData

PAPER = ("arXiv:2006.11477", "wav2vec 2.0: A Framework for Self-Supervised Learning of Speech Representations")
EXPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")


def _is_array_column(feature: Any) -> bool:
    """A column of bare sample arrays (a list of numbers per row)."""
    inner = getattr(feature, "feature", None)
    return isinstance(feature, datasets.List | datasets.Sequence) and isinstance(inner, datasets.Value)


def find_audio_column(ds: Dataset | IterableDataset, column: str | None) -> str:
    """The audio column: detected (an ``Audio`` feature or a column of paths) or named; a named column may also
    hold bare sample arrays (at ``--audio_sampling_rate``)."""
    features = ds.features
    if column is not None and features is not None and column in features and _is_array_column(features[column]):
        return column
    return find_column(ds, "audio", column)


def prepare_data(ds: Dataset | IterableDataset, config: Wav2VecConfig, args: AudioDataArguments) -> PreparedData:
    """Clips checked (or filtered when streamed) before training: each must decode and last at least the backbone's
    receptive field at ``config.sampling_rate``; cropping and normalisation happen in the collator."""
    column = find_audio_column(ds, args.audio_column)
    if args.audio_sampling_rate is not None and args.audio_sampling_rate < 1:
        raise UsageError(f"--audio_sampling_rate must be a positive number of Hz, got {args.audio_sampling_rate}")
    ds, skipped = prepare_audio(
        ds,
        column,
        config.sampling_rate,
        min_samples=config.receptive_field,
        on_bad_example=args.on_bad_example,
        array_sampling_rate=args.audio_sampling_rate,
    )
    return PreparedData(
        dataset=ds,
        collator=AudioCollator(config, column, array_sampling_rate=args.audio_sampling_rate),
        columns={"audio": column},
        num_skipped=skipped,
        processing_class=feature_extractor_for(config),
    )


def callbacks(config: PretrainedConfig) -> list[TrainerCallback]:
    """Gumbel temperature annealing (from the config's schedule); collapse is the health monitor's
    (:meth:`Wav2VecForPreTraining.health`)."""
    return [GumbelTemperatureCallback()]


# --- features for evaluation ---------------------------------------------------------------------------------------


def frame_mask(attention_mask: torch.Tensor | None, num_frames: int, batch_size: int) -> torch.Tensor:
    """``(B, T)`` float weights of the unpadded frames, from the sample-level ``attention_mask (B, L)``.

    Clip ``b`` of ``n_b`` samples padded to ``L`` keeps its first ``floor(n_b * T / L)`` frames (at least one). The
    pooler sees the inputs and outputs but not the backbone's convolution geometry, so this is exact for unpadded
    clips and within one frame at the end of a padded clip (the exact count is
    ``floor((n_b - receptive_field) / stride) + 1``).
    """
    if attention_mask is None:
        return torch.ones(batch_size, num_frames)
    samples = attention_mask.shape[1]
    lengths = (attention_mask.sum(-1).long() * num_frames) // samples  # (B,)
    lengths = lengths.clamp(min=1, max=num_frames)
    return (torch.arange(num_frames, device=attention_mask.device)[None, :] < lengths[:, None]).float()


def layer_means(outputs: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
    """Mean over unpadded frames of each transformer layer's output: ``{"layer_0": (B, H), ..., "layer_N": (B, H)}``
    (``layer_0`` is the transformer's input, the projected convolutional features with positional convolution).

    Needs ``output_hidden_states`` (the audio evaluation task turns it on in the checkpoint's config); without hidden
    states, the mean of ``last_hidden_state`` alone.
    """
    hidden = outputs.hidden_states
    last = outputs.last_hidden_state
    weights = frame_mask(inputs.get("attention_mask"), last.shape[1], last.shape[0]).to(last.device, last.dtype)
    weights = weights[..., None] / weights.sum(1)[:, None, None]  # (B, T, 1), summing to 1 over each clip's frames

    def pool(states: torch.Tensor) -> torch.Tensor:
        return (states * weights).sum(1)  # (B, T, H) -> (B, H)

    if not hidden:
        return pool(last)
    return {f"layer_{i}": pool(states) for i, states in enumerate(hidden)}


FEATURES = FeatureSpec(
    "audio",
    pool=layer_means,
    description="mean over unpadded frames of each transformer layer's output (layer_0: its input)",
)
"""How evaluation reads a wav2vec checkpoint (``hf_ssl_wav2vec``) and its export (a plain ``wav2vec2`` model)."""


# --- export --------------------------------------------------------------------------------------------------------


def _layer_rows(evaluation: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per layer of a layer-wise evaluation: pretrained and random-init kNN / linear probe accuracy."""
    layers = (evaluation or {}).get("layers") or {}
    random_layers = ((evaluation or {}).get("baselines") or {}).get("random_init", {}).get("layers") or {}

    def cell(entry: dict[str, Any] | None, key: str) -> str:
        value = ((entry or {}).get(key) or {}).get("accuracy")
        return "-" if value is None else f"{100 * value:.1f}%"

    return [
        {
            "layer": name,
            "knn": cell(entry, "knn"),
            "linear_probe": cell(entry, "linear_probe"),
            "random_knn": cell(random_layers.get(name), "knn"),
            "random_linear_probe": cell(random_layers.get(name), "linear_probe"),
        }
        for name, entry in layers.items()
    ]


def export(context: ExportContext) -> None:
    """Write the backbone as a plain transformers ``Wav2Vec2Model`` with its ``Wav2Vec2FeatureExtractor`` (see
    :func:`~hf_ssl.models.wav2vec.export.save_backbone_export`) and its model card."""
    config: Wav2VecConfig = context.config  # type: ignore[assignment]
    model = load_backbone(context.model_dir)
    if not isinstance(model, Wav2VecModel):
        raise TypeError(f"expected AutoModel to build a Wav2VecModel from {context.model_dir}, got {type(model)}")
    save_backbone_export(model, context.output_dir)
    backbone = config.backbone
    evaluation = context.evaluation
    label = f"wav2vec 2.0 ({backbone.num_hidden_layers} layers, hidden {backbone.hidden_size})"
    card = render_model_card(
        "wav2vec.md",
        metadata=card_metadata(
            model_name=label,
            library_name="transformers",
            pipeline_tag="feature-extraction",
            license="apache-2.0",
            tags=["hf_ssl", "self-supervised", "wav2vec2", "audio", "speech", "feature-extraction"],
            run_info=context.run_info,
            evaluation=evaluation,
        ),
        repo_id=REPO_ID_PLACEHOLDER,
        dataset_name=context.run_info.dataset_name if context.run_info else None,
        hf_ssl_version=__version__,
        config=config,
        backbone=backbone,
        num_parameters=sum(p.numel() for p in model.backbone.parameters()),
        receptive_field=config.receptive_field,
        frame_stride=config.frame_stride,
        training_rows=training_rows(context.run_info, unit="clips"),
        evaluation=evaluation_summary(evaluation, f"{label} (this model)") if evaluation else None,
        best_layer=(evaluation or {}).get("best_layer"),
        last_layer=(evaluation or {}).get("layer"),
        layer_rows=_layer_rows(evaluation),
    )
    (context.output_dir / "README.md").write_text(card, encoding="utf-8")


# --- the objective -------------------------------------------------------------------------------------------------


def _wav2vec2_config(model_name_or_path: str) -> Wav2Vec2Config | None:
    """The ``Wav2Vec2Config`` of a transformers wav2vec 2.0 checkpoint (folder or Hub id); ``None`` for any other."""
    try:
        config = AutoConfig.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as err:
        raise UsageError(f"--model_name_or_path {model_name_or_path}: cannot read its config: {err}") from err
    return config if isinstance(config, Wav2Vec2Config) else None


@dataclass(frozen=True)
class Wav2VecObjective(Objective):
    """The wav2vec objective; ``--model_name_or_path`` also takes a transformers wav2vec 2.0 checkpoint (a folder,
    e.g. one of our exports, or a Hub id such as ``facebook/wav2vec2-base``): its backbone starts from those
    weights, the quantizer and projections from scratch."""

    def make_config(self, overrides: dict[str, Any], model_name_or_path: str | None = None) -> PretrainedConfig:
        backbone = _wav2vec2_config(model_name_or_path) if model_name_or_path else None
        if backbone is None:
            return super().make_config(overrides, model_name_or_path)
        if "backbone" in overrides:
            raise UsageError(
                f"--backbone and --model_name_or_path {model_name_or_path} both describe the backbone; give one"
            )
        backbone.add_adapter = False  # the adapter is for fine-tuning; pretraining runs without it
        return self.config_class(backbone=backbone, **overrides)

    def make_model(self, config: PretrainedConfig, model_name_or_path: str | None = None) -> PreTrainedModel:
        if not model_name_or_path or _wav2vec2_config(model_name_or_path) is None:
            return super().make_model(config, model_name_or_path)
        model = self.model_class(config)
        try:
            source, info = Wav2Vec2Model.from_pretrained(
                model_name_or_path, config=config.backbone, output_loading_info=True
            )
        except OSError as err:
            raise UsageError(f"--model_name_or_path {model_name_or_path}: cannot load its weights: {err}") from err
        # the mask embedding exists only when the source's own SpecAugment was on; ours then starts fresh
        missing = [k for k in info.get("missing_keys") or () if k != "masked_spec_embed"]
        if missing or info.get("mismatched_keys"):
            raise UsageError(
                f"--model_name_or_path {model_name_or_path}: its weights do not fit the backbone (missing "
                f"{missing[:5]}, mismatched {list(info.get('mismatched_keys') or [])[:5]})"
            )
        model.backbone.load_state_dict(source.state_dict(), strict=False)
        return model


WAV2VEC = Wav2VecObjective(
    name="wav2vec",
    config_class=Wav2VecConfig,
    model_class=Wav2VecForPreTraining,
    modality="audio",
    data_arguments=AudioDataArguments,
    prepare_data=prepare_data,
    features=FEATURES,
    exporter=Exporter(export, EXPORT_FILES),
    default_dataset=(DEFAULT_AUDIO_DATASET, load_default_audio),
    min_batch_size=1,
    callbacks=callbacks,
    report_pictures=report_pictures,
    summary="wav2vec 2.0: contrastive prediction of quantized speech features, a transformers Wav2Vec2Model",
)
