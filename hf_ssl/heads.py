"""Projection heads, poolers and small decoders shared by the objectives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SimCLRProjectionHead(nn.Module):
    """MLP projection head ``g(.)`` of SimCLR (Chen et al., 2020, sec. 2.1; v2 uses 3 layers).

    ``num_layers - 1`` blocks of Linear -> BatchNorm1d -> ReLU, then a Linear (without bias) to ``output_dim``.

    Args:
        input_dim: backbone feature size.
        hidden_dim: width of the hidden layers.
        output_dim: size of the projected embedding on which the loss is computed.
        num_layers: number of Linear layers (>= 1).
    """

    def __init__(self, input_dim: int, hidden_dim: int = 2048, output_dim: int = 128, num_layers: int = 2):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = input_dim
        for _ in range(num_layers - 1):
            layers += [
                nn.Linear(dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            dim = hidden_dim
        layers.append(nn.Linear(dim, output_dim, bias=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, input_dim)`` -> ``(B, output_dim)``."""
        return self.layers(features)


@torch.no_grad()
def representation_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean over dimensions of the batch std of L2-normalised embeddings ``(..., D)`` (a monitor, no gradient).

    About ``1 / sqrt(D)`` for spread-out embeddings, near 0 when they collapse to one point
    (the collapse monitor of SimSiam, Chen & He 2021, sec. 4.1).
    """
    return F.normalize(embeddings.float().flatten(0, -2), dim=-1).std(dim=0).mean()
