"""data2vec for speech (Baevski et al., 2022) on a transformers ``Data2VecAudioModel``."""

from hf_ssl.models.data2vec_audio.objective import DATA2VEC_AUDIO
from hf_ssl.objectives import register_objective

register_objective(DATA2VEC_AUDIO)
