"""MAE (He et al., 2021, arXiv:2111.06377): registered with the Auto classes on import."""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.models.mae.configuration_mae import MAEConfig
from hf_ssl.models.mae.modeling_mae import (
    TIMM_ARCHITECTURE,
    MAEDecoder,
    MAEForPreTraining,
    MAEForPreTrainingOutput,
    MAEModel,
    MAEPreTrainedModel,
    create_encoder,
    load_vit_mae_state_dict,
    sincos_2d_position_embedding,
    timm_model_args,
    timm_pretrained_cfg,
    to_vit_mae_state_dict,
)
from hf_ssl.models.mae.objective import MAE
from hf_ssl.objectives import register_objective

AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)
AutoModel.register(MAEConfig, MAEModel, exist_ok=True)
AutoModelForPreTraining.register(MAEConfig, MAEForPreTraining, exist_ok=True)
register_objective(MAE)

__all__ = [
    "MAE",
    "TIMM_ARCHITECTURE",
    "MAEConfig",
    "MAEDecoder",
    "MAEForPreTraining",
    "MAEForPreTrainingOutput",
    "MAEModel",
    "MAEPreTrainedModel",
    "create_encoder",
    "load_vit_mae_state_dict",
    "sincos_2d_position_embedding",
    "timm_model_args",
    "timm_pretrained_cfg",
    "to_vit_mae_state_dict",
]
