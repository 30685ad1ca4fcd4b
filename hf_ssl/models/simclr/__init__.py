"""SimCLR (Chen et al., 2020, arXiv:2002.05709): contrastive learning of two augmented views, on any timm model."""

from hf_ssl.models.simclr.objective import SIMCLR
from hf_ssl.objectives import register_objective

register_objective(SIMCLR)
