"""data2vec audio as an objective: wav2vec's audio data (clips checked before training; cropped, normalised and
padded by its collator; span masks drawn on the device by the model), the momentum teacher's schedule, evaluation
of the student's frame features (wav2vec's speech pooler), and the export of the student as a plain transformers
``Data2VecAudioModel`` with its ``Wav2Vec2FeatureExtractor``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from datasets import Dataset, IterableDataset
from transformers import Data2VecAudioConfig, Data2VecAudioModel, PretrainedConfig

from hf_ssl.backbones.transformers import load_plain_backbone, save_plain_backbone
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
from hf_ssl.export import ExportContext, Exporter, load_pretraining_model
from hf_ssl.export.model_card import write_card
from hf_ssl.models.data2vec_audio.configuration_data2vec_audio import Data2VecAudioPretrainingConfig
from hf_ssl.models.data2vec_audio.modeling_data2vec_audio import (
    Data2VecAudioForPreTraining,
    Data2VecAudioPretrainingModel,
)
from hf_ssl.objectives import NEW_MODEL, EncoderObjective, PreparedData, RunContext
from hf_ssl.teachers import MomentumTeacherCallback

logger = logging.getLogger(__name__)

EXPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")


def prepare_data(
    ds: Dataset | IterableDataset,
    config: Data2VecAudioPretrainingConfig,
    args: AudioDataArguments,
    run: RunContext = NEW_MODEL,
) -> PreparedData:
    """The speech preparation wav2vec shares (:func:`~hf_ssl.data.audio.prepare_speech_pretraining`): clips checked
    (or filtered when streamed) to decode and last at least the receptive field; the
    :class:`~hf_ssl.data.collators.AudioCollator` crops them to ``max_duration_seconds``, normalises and pads them."""
    ds, column, skipped = prepare_speech_pretraining(ds, args, config.sampling_rate, config.receptive_field)
    return PreparedData(
        dataset=ds,
        collator=AudioCollator(config, column, array_sampling_rate=args.audio_sampling_rate),
        columns={"audio": column},
        num_skipped=skipped,
        processing_class=feature_extractor_for(config),
    )


def save_student_export(model: Data2VecAudioForPreTraining, output_dir: str | Path) -> Path:
    """Write the student as a plain transformers ``Data2VecAudioModel`` (``AutoModel``,
    ``Data2VecAudioForCTC``/``...ForSequenceClassification`` fine-tune from it) with its feature extractor; the
    mask embedding we add when the backbone's own SpecAugment is off has no place there and is dropped."""
    output_dir = save_plain_backbone(model.backbone, model.config.backbone, Data2VecAudioModel, output_dir)
    feature_extractor_for(model.config).save_pretrained(output_dir)
    return output_dir


def export(context: ExportContext) -> None:
    """The student backbone (no teacher, no regression head) as a plain ``Data2VecAudioModel`` folder, and the
    card."""
    model = load_pretraining_model(context, Data2VecAudioForPreTraining)
    save_student_export(model, context.output_dir)
    config: Data2VecAudioPretrainingConfig = model.config
    backbone = config.backbone
    write_card(
        context,
        model_name=f"data2vec audio ({backbone.num_hidden_layers} layers, hidden {backbone.hidden_size})",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=["hf_ssl", "self-supervised", "data2vec", "data2vec-audio", "audio", "speech", "feature-extraction"],
        unit="clips",
        config=config,
        backbone=backbone,
        num_parameters=sum(p.numel() for p in model.backbone.parameters()),
        receptive_field=config.receptive_field,
        frame_stride=config.frame_stride,
    )


@dataclass(frozen=True)
class Data2VecAudioObjective(EncoderObjective):
    """data2vec audio: ``--model_name_or_path`` is a transformers data2vec-audio checkpoint (a folder, e.g. one of our
    exports, or a Hub id such as ``facebook/data2vec-audio-base``), whose weights start the student and its teacher,
    or an ``hf_ssl_data2vec_audio`` checkpoint to continue."""

    backbone_field: ClassVar[str] = "backbone"
    backbone_kind: ClassVar[str] = "a transformers data2vec-audio model"

    def starting_backbone(self, source: PretrainedConfig) -> PretrainedConfig | None:
        """A ``Data2VecAudioConfig``, without the adapter (it is for fine-tuning)."""
        if not isinstance(source, Data2VecAudioConfig):
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

    def load_start(self, model: Data2VecAudioForPreTraining, model_name_or_path: str, source: PretrainedConfig) -> None:
        """The backbone's weights, into the student and its teacher (a new mask embedding where there is none)."""
        load_plain_backbone(model.backbone, Data2VecAudioModel, model_name_or_path, model.config.backbone)
        model.teacher.reset_from(model)
        logger.info("started the student and teacher from %s", model_name_or_path)


DATA2VEC_AUDIO = Data2VecAudioObjective(
    name="data2vec_audio",
    config_class=Data2VecAudioPretrainingConfig,
    model_class=Data2VecAudioForPreTraining,
    base_model_class=Data2VecAudioPretrainingModel,
    modality="audio",
    data_arguments=AudioDataArguments,
    prepare_data=prepare_data,
    features=SPEECH_FEATURES,
    exporter=Exporter(export, EXPORT_FILES),
    default_dataset=(DEFAULT_AUDIO_DATASET, load_default_audio),
    min_batch_size=1,
    callbacks=lambda config: [MomentumTeacherCallback(config.teacher_momentum, config.teacher_momentum_final)],
    summary="data2vec for speech: regress a momentum teacher's averaged top layers at masked frames",
)
