from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig
from hf_ssl.models.simclr.modeling_simclr import (
    SimCLRForPreTraining,
    SimCLRForPreTrainingOutput,
    SimCLRModel,
    SimCLRPreTrainedModel,
    backbone_kwargs,
    create_backbone,
)
from hf_ssl.objectives import Objective, register_objective

AutoConfig.register(SimCLRConfig.model_type, SimCLRConfig, exist_ok=True)
AutoModel.register(SimCLRConfig, SimCLRModel, exist_ok=True)
AutoModelForPreTraining.register(SimCLRConfig, SimCLRForPreTraining, exist_ok=True)

__all__ = [
    "SimCLRConfig",
    "SimCLRForPreTraining",
    "SimCLRForPreTrainingOutput",
    "SimCLRModel",
    "SimCLRPreTrainedModel",
    "backbone_kwargs",
    "create_backbone",
]


def _simclr_collator(config: SimCLRConfig, column: str):
    from hf_ssl.data import ImageViewsCollator, SimCLRTransform

    return ImageViewsCollator(SimCLRTransform(config), column, mode="L" if config.num_channels == 1 else "RGB")


register_objective(Objective("simclr", SimCLRConfig, SimCLRForPreTraining, "image", _simclr_collator))
