"""Masked language modelling (BERT's MLM) on any Hugging Face text encoder; registered with the Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from hf_ssl.models.mlm.collator import MLMCollator
from hf_ssl.models.mlm.configuration_mlm import MLMConfig
from hf_ssl.models.mlm.export import save_encoder_export
from hf_ssl.models.mlm.modeling_mlm import (
    MLM_HEAD_LAYOUTS,
    MLMForPreTraining,
    MLMForPreTrainingOutput,
    MLMHeadLayout,
    MLMModel,
    MLMPredictionHead,
    MLMPreTrainedModel,
    create_encoder,
)
from hf_ssl.models.mlm.objective import MLM, MLMDataArguments, MLMObjective
from hf_ssl.objectives import register_objective

AutoConfig.register(MLMConfig.model_type, MLMConfig, exist_ok=True)
AutoModel.register(MLMConfig, MLMModel, exist_ok=True)
AutoModelForPreTraining.register(MLMConfig, MLMForPreTraining, exist_ok=True)
register_objective(MLM)

__all__ = [
    "MLM",
    "MLM_HEAD_LAYOUTS",
    "MLMCollator",
    "MLMConfig",
    "MLMDataArguments",
    "MLMForPreTraining",
    "MLMForPreTrainingOutput",
    "MLMHeadLayout",
    "MLMModel",
    "MLMObjective",
    "MLMPredictionHead",
    "MLMPreTrainedModel",
    "create_encoder",
    "save_encoder_export",
]
