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
from transformers import Data2VecAudioConfig, Data2VecAudioModel, PretrainedConfig, Wav2Vec2FeatureExtractor

from hf_ssl.data.audio import DEFAULT_AUDIO_DATASET, AudioDataArguments, load_default_audio, prepare_audio
from hf_ssl.errors import UsageError
from hf_ssl.evaluation.features import SPEECH_FEATURES
from hf_ssl.export import ExportContext, Exporter, load_pretraining_model
from hf_ssl.export.model_card import write_card
from hf_ssl.models.data2vec_audio.configuration_data2vec_audio import Data2VecAudioPretrainingConfig
from hf_ssl.models.data2vec_audio.modeling_data2vec_audio import (
    Data2VecAudioForPreTraining,
    Data2VecAudioPretrainingModel,
)
from hf_ssl.models.wav2vec.collator import AudioCollator
from hf_ssl.models.wav2vec.objective import find_audio_column
from hf_ssl.objectives import NEW_MODEL, EncoderObjective, PreparedData, RunContext
from hf_ssl.teachers import MomentumTeacherCallback

logger = logging.getLogger(__name__)

EXPORT_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")


def feature_extractor_for(config: Data2VecAudioPretrainingConfig) -> Wav2Vec2FeatureExtractor:
    """The ``Wav2Vec2FeatureExtractor`` doing what pretraining's collator does (rate, zero-mean unit-variance
    normalisation, zero padding, attention masks), as wav2vec's."""
    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=config.sampling_rate,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )


def prepare_data(
    ds: Dataset | IterableDataset,
    config: Data2VecAudioPretrainingConfig,
    args: AudioDataArguments,
    run: RunContext = NEW_MODEL,
) -> PreparedData:
    """wav2vec's preparation (:func:`hf_ssl.models.wav2vec.objective.prepare_data`): clips checked (or filtered when
    streamed) to decode and last at least the receptive field; wav2vec's :class:`AudioCollator` crops them to
    ``max_duration_seconds``, normalises and pads them."""
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
    extractor = feature_extractor_for(config)
    collator = AudioCollator(
        extractor,
        column,
        max_length_samples=int(config.max_duration_seconds * config.sampling_rate),
        min_samples=config.receptive_field,
        array_sampling_rate=args.audio_sampling_rate,
    )
    return PreparedData(
        dataset=ds, collator=collator, columns={"audio": column}, num_skipped=skipped, processing_class=extractor
    )


def save_student_export(model: Data2VecAudioForPreTraining, output_dir: str | Path) -> Path:
    """Write the student as a plain transformers ``Data2VecAudioModel`` (``AutoModel``,
    ``Data2VecAudioForCTC``/``...ForSequenceClassification`` fine-tune from it) with its feature extractor; the
    mask embedding we add when the backbone's own SpecAugment is off has no place there and is dropped."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = model.config
    backbone_config = Data2VecAudioConfig.from_dict(config.backbone.to_dict())
    backbone_config.architectures = ["Data2VecAudioModel"]
    exported = Data2VecAudioModel(backbone_config)
    wanted = exported.state_dict().keys()
    state = {k: v for k, v in model.backbone.state_dict().items() if k in wanted}
    exported.load_state_dict(state, strict=True)
    exported.save_pretrained(output_dir)
    feature_extractor_for(config).save_pretrained(output_dir)
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
        try:
            weights, info = Data2VecAudioModel.from_pretrained(
                model_name_or_path, config=model.config.backbone, output_loading_info=True
            )
        except OSError as err:
            raise UsageError(f"--model_name_or_path {model_name_or_path}: cannot load its weights: {err}") from err
        missing = [k for k in info.get("missing_keys") or () if k != "masked_spec_embed"]
        if missing or info.get("mismatched_keys"):
            raise UsageError(
                f"--model_name_or_path {model_name_or_path}: its weights do not fit the backbone (missing "
                f"{missing[:5]}, mismatched {list(info.get('mismatched_keys') or [])[:5]})"
            )
        model.backbone.load_state_dict(weights.state_dict(), strict=False)
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
