"""SimCSE (Gao et al., 2021) on any Hugging Face text encoder; registered with the Auto classes and the CLI."""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.models.simcse.collator import SimCSECollator
from hf_ssl.models.simcse.configuration_simcse import POOLER_TYPES, SimCSEConfig
from hf_ssl.models.simcse.modeling_simcse import (
    SimCSEForPreTraining,
    SimCSEForPreTrainingOutput,
    SimCSEMLP,
    SimCSEModel,
    SimCSEPreTrainedModel,
    pool_sentences,
)
from hf_ssl.models.simcse.objective import SIMCSE, SimCSEDataArguments, SimCSEObjective, sts_compute_metrics
from hf_ssl.objectives import register_objective

AutoConfig.register(SimCSEConfig.model_type, SimCSEConfig, exist_ok=True)
AutoModel.register(SimCSEConfig, SimCSEModel, exist_ok=True)
AutoModelForPreTraining.register(SimCSEConfig, SimCSEForPreTraining, exist_ok=True)
register_objective(SIMCSE)

__all__ = [
    "POOLER_TYPES",
    "SIMCSE",
    "SimCSECollator",
    "SimCSEConfig",
    "SimCSEDataArguments",
    "SimCSEForPreTraining",
    "SimCSEForPreTrainingOutput",
    "SimCSEMLP",
    "SimCSEModel",
    "SimCSEObjective",
    "SimCSEPreTrainedModel",
    "pool_sentences",
    "sts_compute_metrics",
]
