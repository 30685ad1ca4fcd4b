"""wav2vec 2.0-style pretraining of a transformers ``Wav2Vec2Model`` (Baevski et al., 2020, arXiv:2006.11477)."""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.evaluation.features import register_features
from hf_ssl.models.wav2vec.callbacks import GumbelTemperatureCallback
from hf_ssl.models.wav2vec.collator import AudioCollator, feature_extractor_for
from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig, receptive_field
from hf_ssl.models.wav2vec.export import save_backbone_export
from hf_ssl.models.wav2vec.modeling_wav2vec import (
    Wav2VecForPreTraining,
    Wav2VecForPreTrainingOutput,
    Wav2VecGumbelQuantizer,
    Wav2VecModel,
    Wav2VecPreTrainedModel,
)
from hf_ssl.models.wav2vec.objective import FEATURES, WAV2VEC, Wav2VecObjective
from hf_ssl.objectives import register_objective

AutoConfig.register(Wav2VecConfig.model_type, Wav2VecConfig, exist_ok=True)
AutoModel.register(Wav2VecConfig, Wav2VecModel, exist_ok=True)
AutoModelForPreTraining.register(Wav2VecConfig, Wav2VecForPreTraining, exist_ok=True)
register_objective(WAV2VEC)
# the export is a plain transformers Wav2Vec2Model: evaluated with the same features
register_features("wav2vec2", FEATURES)

__all__ = [
    "WAV2VEC",
    "AudioCollator",
    "GumbelTemperatureCallback",
    "Wav2VecConfig",
    "Wav2VecForPreTraining",
    "Wav2VecForPreTrainingOutput",
    "Wav2VecGumbelQuantizer",
    "Wav2VecModel",
    "Wav2VecObjective",
    "Wav2VecPreTrainedModel",
    "feature_extractor_for",
    "receptive_field",
    "save_backbone_export",
]
