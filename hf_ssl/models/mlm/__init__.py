"""Masked language modelling (BERT's MLM) on any Hugging Face text encoder."""

from hf_ssl.models.mlm.objective import MLM
from hf_ssl.objectives import register_objective

register_objective(MLM)
