"""SimCLR: a timm backbone, an MLP projection head and the NT-Xent loss (Chen et al., 2020, arXiv:2002.05709)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from hf_ssl.backbones.timm import TimmBackboneModel
from hf_ssl.gradient_cache import chunk_slices, encode_in_chunks, uses_gradient_cache
from hf_ssl.health import HealthOutput
from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig
from hf_ssl.models.simclr.loss import nt_xent_loss


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


@dataclass
class SimCLRForPreTrainingOutput(ModelOutput):
    """Output of :class:`SimCLRForPreTraining`.

    Args:
        loss: NT-Xent loss (scalar).
        projections: ``(B, 2, projection_dim)`` projected embeddings of the two views.
        features: ``(B, 2, num_features)`` backbone features of the two views (what downstream tasks use).
    """

    loss: torch.Tensor | None = None
    projections: torch.Tensor | None = None
    features: torch.Tensor | None = None


class SimCLRPreTrainedModel(PreTrainedModel):
    config_class = SimCLRConfig
    config: SimCLRConfig
    base_model_prefix = "simclr"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        # The timm backbone initialises itself when it is built (and is overwritten when loaded); only our own
        # head layers are initialised here, plus the non-persistent buffers that a meta-device build leaves empty.
        if isinstance(module, SimCLRProjectionHead):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_uniform_(layer.weight, a=5**0.5)
                elif isinstance(layer, nn.BatchNorm1d):
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)
        elif hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        for module in self.modules():
            if isinstance(module, SimCLRModel):
                module.backbone.set_grad_checkpointing(enable)


class SimCLRModel(TimmBackboneModel, SimCLRPreTrainedModel):
    """The SimCLR backbone alone: images in, pooled features out. Loads from a pretraining checkpoint."""

    _keys_to_ignore_on_load_unexpected = [r"projection_head\."]


class SimCLRForPreTraining(SimCLRPreTrainedModel):
    """SimCLR backbone + projection head, trained with NT-Xent on two augmented views of each image."""

    def __init__(self, config: SimCLRConfig):
        super().__init__(config)
        self.simclr = SimCLRModel(config)
        self.projection_head = SimCLRProjectionHead(
            self.simclr.num_features,
            config.projection_hidden_dim,
            config.projection_dim,
            config.projection_layers,
        )
        self.post_init()

    def load_pretrained_backbone(self) -> None:
        """Start the backbone from timm's pretrained weights (see :meth:`SimCLRModel.load_pretrained_backbone`)."""
        self.simclr.load_pretrained_backbone()

    def forward(self, pixel_values: torch.Tensor, **kwargs: Any) -> SimCLRForPreTrainingOutput:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each of ``B`` images.

        In training, with ``config.gradient_cache_chunk_size`` set below ``B``, the views are encoded in chunks of
        that many images with the gradient cache (:mod:`hf_ssl.gradient_cache`): the loss and gradients of the
        whole batch (each chunk's BatchNorm statistics its own), the activations of one chunk at a time.
        """
        if pixel_values.ndim != 5 or pixel_values.shape[1] != 2 or pixel_values.shape[0] < 2:
            raise ValueError(
                f"SimCLR expects pixel_values of shape (B, 2, C, H, W) with B >= 2 (the other images are the "
                f"negatives), got {tuple(pixel_values.shape)}"
            )
        batch = pixel_values.shape[0]
        chunk_size = self.config.gradient_cache_chunk_size
        if uses_gradient_cache(self, chunk_size, batch):  # same loss and gradients, one chunk's activations
            chunks = [pixel_values[rows] for rows in chunk_slices(batch, chunk_size)]
            projections, features = encode_in_chunks(self.encode_views, chunks, self)
        else:
            projections, features = self.encode_views(pixel_values)  # (B, 2, P), (B, 2, F)
        loss = nt_xent_loss(
            projections[:, 0], projections[:, 1], self.config.loss_temperature, self.config.gather_distributed
        )
        return SimCLRForPreTrainingOutput(loss=loss, projections=projections, features=features)

    def health(self, batch: dict[str, torch.Tensor]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the backbone features of the two views (the
        positives of each other) and the NT-Xent loss of this batch alone (no gathering across processes)."""
        projections, features = self.encode_views(batch["pixel_values"])  # (B, 2, P), (B, 2, F)
        loss = nt_xent_loss(projections[:, 0], projections[:, 1], self.config.loss_temperature, False)
        return HealthOutput(embeddings=features[:, 0], positives=features[:, 1], loss=loss)

    def encode_views(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``(B, V, C, H, W)`` -> projections ``(B, V, P)`` and backbone features ``(B, V, F)``."""
        batch, views = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1)  # (B * V, C, H, W), the views of one image side by side
        features = self.simclr(flat).pooler_output  # (B * V, F)
        projections = self.projection_head(features)  # (B * V, P)
        return projections.unflatten(0, (batch, views)), features.unflatten(0, (batch, views))
