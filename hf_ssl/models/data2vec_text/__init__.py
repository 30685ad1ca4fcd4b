"""data2vec for text (Baevski et al., 2022) on any Hugging Face text encoder, a ``Data2VecTextModel`` by default."""

from hf_ssl.models.data2vec_text.objective import DATA2VEC_TEXT
from hf_ssl.objectives import register_objective

register_objective(DATA2VEC_TEXT)
