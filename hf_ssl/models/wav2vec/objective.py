"""wav2vec 2.0 as an objective: its data (clips checked before training, cropped and normalised in the collator),
its features for evaluation (mean-pooled output of every transformer layer), its export (a plain ``Wav2Vec2Model``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from datasets import Dataset, IterableDataset
from transformers import PretrainedConfig, TrainerCallback, Wav2Vec2Config, Wav2Vec2Model

from hf_ssl.backbones import load_backbone
from hf_ssl.backbones.transformers import load_plain_backbone
from hf_ssl.data.audio import (
    DEFAULT_AUDIO_DATASET,
    AudioDataArguments,
    feature_extractor_for,
    load_default_audio,
    prepare_speech_pretraining,
)
from hf_ssl.data.collators import AudioCollator
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.features import SPEECH_FEATURES
from hf_ssl.export import ExportContext, Exporter
from hf_ssl.export.model_card import write_card
from hf_ssl.models.wav2vec.callbacks import GumbelTemperatureCallback
from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig
from hf_ssl.models.wav2vec.export import save_backbone_export
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining, Wav2VecModel
from hf_ssl.models.wav2vec.report import report_pictures
from hf_ssl.objectives import NEW_MODEL, EncoderObjective, PreparedData, RunContext

EXPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")


def prepare_data(
    ds: Dataset | IterableDataset, config: Wav2VecConfig, args: AudioDataArguments, run: RunContext = NEW_MODEL
) -> PreparedData:
    """Clips checked (or filtered when streamed) before training: each must decode and last at least the backbone's
    receptive field at ``config.sampling_rate``; cropping and normalisation happen in the collator."""
    ds, column, skipped = prepare_speech_pretraining(ds, args, config.sampling_rate, config.receptive_field)
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


FEATURES = SPEECH_FEATURES
"""How evaluation reads a wav2vec checkpoint (``hf_ssl_wav2vec``) and its export (a plain ``wav2vec2`` model): the
mean over each clip's unpadded frames (the backbone's own frame mask) of every transformer layer's output."""


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
    model = load_backbone(context.model_dir, config=config)
    if not isinstance(model, Wav2VecModel):
        raise TypeError(f"expected AutoModel to build a Wav2VecModel from {context.model_dir}, got {type(model)}")
    save_backbone_export(model, context.output_dir)
    backbone, evaluation = config.backbone, context.evaluation
    write_card(
        context,
        model_name=f"wav2vec 2.0 ({backbone.num_hidden_layers} layers, hidden {backbone.hidden_size})",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=["hf_ssl", "self-supervised", "wav2vec2", "audio", "speech", "feature-extraction"],
        unit="clips",
        config=config,
        backbone=backbone,
        num_parameters=sum(p.numel() for p in model.backbone.parameters()),
        receptive_field=config.receptive_field,
        frame_stride=config.frame_stride,
        best_layer=(evaluation or {}).get("best_layer"),
        last_layer=(evaluation or {}).get("layer"),
        layer_rows=_layer_rows(evaluation),
    )


# --- the objective -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wav2VecObjective(EncoderObjective):
    """The wav2vec objective; ``--model_name_or_path`` also takes a transformers wav2vec 2.0 checkpoint (a folder,
    e.g. one of our exports, or a Hub id such as ``facebook/wav2vec2-base``): its backbone starts from those
    weights, the quantizer and projections from scratch."""

    backbone_field: ClassVar[str] = "backbone"
    backbone_kind: ClassVar[str] = "a transformers wav2vec 2.0 model"

    def starting_backbone(self, source: PretrainedConfig) -> PretrainedConfig | None:
        """A ``Wav2Vec2Config``, without the adapter (it is for fine-tuning; pretraining runs without it)."""
        if not isinstance(source, Wav2Vec2Config):
            return None
        source.add_adapter = False
        return source

    def update_backbone(self, backbone: dict[str, Any], update: Any, model_name_or_path: str) -> dict[str, Any]:
        """No changes: the checkpoint describes the whole backbone.

        Raises:
            UsageError: ``--backbone`` given too.
        """
        if update is not None:
            raise UsageError(
                f"--backbone and --model_name_or_path {model_name_or_path} both describe the backbone; give one"
            )
        return backbone

    def load_start(self, model: Wav2VecForPreTraining, model_name_or_path: str, source: PretrainedConfig) -> None:
        """The backbone's weights (a new mask embedding where the checkpoint has none)."""
        load_plain_backbone(model.backbone, Wav2Vec2Model, model_name_or_path, model.config.backbone)


WAV2VEC = Wav2VecObjective(
    name="wav2vec",
    config_class=Wav2VecConfig,
    model_class=Wav2VecForPreTraining,
    base_model_class=Wav2VecModel,
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
