"""wav2vec 2.0-style pretraining of a transformers ``Wav2Vec2Model`` (Baevski et al., 2020, arXiv:2006.11477)."""

from hf_ssl.evaluation.features import register_features
from hf_ssl.models.wav2vec.objective import FEATURES, WAV2VEC
from hf_ssl.objectives import register_objective

register_objective(WAV2VEC)
# the export is a plain transformers Wav2Vec2Model: evaluated with the same features
register_features("wav2vec2", FEATURES)
