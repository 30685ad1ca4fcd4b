"""DINO (Caron et al., 2021, arXiv:2104.14294): self-distillation with no labels, on any timm model (in progress:
not registered yet)."""
