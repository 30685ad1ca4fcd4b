"""MAE (He et al., 2021, arXiv:2111.06377): masked autoencoding of image patches with a ViT of timm blocks."""

from hf_ssl.models.mae.objective import MAE
from hf_ssl.objectives import register_objective

register_objective(MAE)
