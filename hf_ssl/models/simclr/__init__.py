from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig
from hf_ssl.models.simclr.modeling_simclr import (
    SimCLRForPreTraining,
    SimCLRForPreTrainingOutput,
    SimCLRModel,
    SimCLRPreTrainedModel,
)
from hf_ssl.models.simclr.objective import SIMCLR
from hf_ssl.objectives import register_objective

AutoConfig.register(SimCLRConfig.model_type, SimCLRConfig, exist_ok=True)
AutoModel.register(SimCLRConfig, SimCLRModel, exist_ok=True)
AutoModelForPreTraining.register(SimCLRConfig, SimCLRForPreTraining, exist_ok=True)
register_objective(SIMCLR)

__all__ = [
    "SIMCLR",
    "SimCLRConfig",
    "SimCLRForPreTraining",
    "SimCLRForPreTrainingOutput",
    "SimCLRModel",
    "SimCLRPreTrainedModel",
]
