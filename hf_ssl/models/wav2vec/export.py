"""Export of a pretrained backbone as a plain transformers ``Wav2Vec2Model`` + ``Wav2Vec2FeatureExtractor``."""

from __future__ import annotations

from pathlib import Path

from transformers import Wav2Vec2Model

from hf_ssl.backbones.transformers import save_plain_backbone
from hf_ssl.data.audio import feature_extractor_for
from hf_ssl.models.wav2vec.modeling_wav2vec import Wav2VecForPreTraining, Wav2VecModel


def save_backbone_export(
    model: Wav2VecForPreTraining | Wav2VecModel, output_dir: str | Path, safe_serialization: bool = True
) -> Path:
    """Write the backbone to ``output_dir`` in the format transformers loads without ``hf_ssl``.

    The folder holds ``config.json`` (``model_type: wav2vec2``), ``model.safetensors`` and
    ``preprocessor_config.json``: ``AutoModel.from_pretrained`` gives the ``Wav2Vec2Model``, and
    ``AutoModelForAudioClassification`` / ``Wav2Vec2ForCTC`` start fine-tuning from it. The feature extractor
    carries the pretraining's preprocessing (rate, zero-mean unit-variance normalisation, attention masks).

    Args:
        model: a pretraining model or the backbone-only model.
        output_dir: created if needed.

    Returns:
        ``output_dir`` as a ``Path``.
    """
    wrapper = model.wav2vec if isinstance(model, Wav2VecForPreTraining) else model
    config = wrapper.config
    output_dir = save_plain_backbone(wrapper.backbone, config.backbone, Wav2Vec2Model, output_dir, safe_serialization)
    feature_extractor_for(config).save_pretrained(output_dir)
    return output_dir
