"""DINO (Caron et al., 2021, arXiv:2104.14294): self-distillation with no labels, on any timm model."""

from hf_ssl.models.dino.objective import DINO
from hf_ssl.objectives import register_objective

register_objective(DINO)
