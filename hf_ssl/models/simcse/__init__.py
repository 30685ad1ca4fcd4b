"""SimCSE (Gao et al., 2021) on any Hugging Face text encoder."""

from hf_ssl.models.simcse.objective import SIMCSE
from hf_ssl.objectives import register_objective

register_objective(SIMCSE)
