"""SimCLR: a timm backbone, an MLP projection head and the NT-Xent loss (Chen et al., 2020, arXiv:2002.05709)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from hf_ssl.heads import SimCLRProjectionHead
from hf_ssl.losses import nt_xent_loss
from hf_ssl.models.simclr.configuration_simclr import SimCLRConfig

# timm families whose stem is set by keyword arguments, so that a small-image stem survives export to timm.
_SMALL_STEM_KWARGS = {
    "timm.models.convnext": lambda size: {"patch_size": 2},
    "timm.models.vision_transformer": lambda size: {"img_size": size, "patch_size": max(1, size // 8)},
    "timm.models.mlp_mixer": lambda size: {"img_size": size, "patch_size": max(1, size // 8)},
}


def backbone_kwargs(config: SimCLRConfig) -> dict[str, Any]:
    """The keyword arguments ``timm.create_model(config.backbone, **kwargs)`` needs to rebuild the backbone.

    Raises:
        ValueError: ``small_image_stem`` is set for a timm family whose stem timm cannot resize by arguments.
    """
    kwargs: dict[str, Any] = {}
    if config.num_channels != 3:
        kwargs["in_chans"] = config.num_channels
    if config.small_image_stem:
        family = timm.models.model_entrypoint(config.backbone).__module__
        if family not in _SMALL_STEM_KWARGS:
            supported = ", ".join(sorted(m.rsplit(".", 1)[-1] for m in _SMALL_STEM_KWARGS))
            raise ValueError(
                f"small_image_stem is not available for {config.backbone!r} ({family}): timm has no argument that "
                f"resizes its stem, so an altered stem could not be exported. Families with one: {supported}; "
                "or pass the architecture's own arguments in backbone_kwargs."
            )
        kwargs.update(_SMALL_STEM_KWARGS[family](config.image_size))
    kwargs.update(config.backbone_kwargs)
    return kwargs


def create_backbone(config: SimCLRConfig, pretrained: bool = False) -> nn.Module:
    """The timm backbone described by ``config``, without classifier (its output is the pooled feature)."""
    return timm.create_model(config.backbone, pretrained=pretrained, num_classes=0, **backbone_kwargs(config))


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


_LOADING = contextvars.ContextVar("hf_ssl_simclr_loading_checkpoint", default=False)


class SimCLRPreTrainedModel(PreTrainedModel):
    config_class = SimCLRConfig
    config: SimCLRConfig
    base_model_prefix = "simclr"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any):
        token = _LOADING.set(True)
        try:
            return super().from_pretrained(*args, **kwargs)
        finally:
            _LOADING.reset(token)

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


class SimCLRModel(SimCLRPreTrainedModel):
    """The SimCLR backbone alone: images in, pooled features out. Loads from a pretraining checkpoint."""

    _keys_to_ignore_on_load_unexpected = [r"projection_head\."]

    def __init__(self, config: SimCLRConfig):
        super().__init__(config)
        # timm's weights are fetched for a new model only: a checkpoint being loaded replaces them anyway
        self.backbone = create_backbone(config, pretrained=config.pretrained_backbone and not _LOADING.get())
        self.post_init()

    @property
    def num_features(self) -> int:
        return self.backbone.num_features

    def forward(self, pixel_values: torch.Tensor, return_dict: bool | None = None) -> BaseModelOutputWithPooling:
        """``pixel_values (B, C, H, W)`` -> ``last_hidden_state`` (the unpooled feature map or tokens) and
        ``pooler_output (B, num_features)``."""
        hidden = self.backbone.forward_features(pixel_values)
        pooled = self.backbone.forward_head(hidden, pre_logits=True)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


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

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs: Any
    ) -> SimCLRForPreTrainingOutput:
        """Args:
        pixel_values: ``(B, 2, C, H, W)``, two augmented views of each of ``B`` images.
        """
        if pixel_values.ndim != 5 or pixel_values.shape[1] != 2:
            raise ValueError(f"SimCLR expects pixel_values of shape (B, 2, C, H, W), got {tuple(pixel_values.shape)}")
        batch, views = pixel_values.shape[:2]
        flat = pixel_values.flatten(0, 1)  # (B * 2, C, H, W), the views of one image side by side
        features = self.simclr(flat).pooler_output  # (B * 2, F)
        projections = self.projection_head(features)  # (B * 2, P)
        projections = projections.unflatten(0, (batch, views))  # (B, 2, P)
        loss = nt_xent_loss(
            projections[:, 0], projections[:, 1], self.config.loss_temperature, self.config.gather_distributed
        )
        return SimCLRForPreTrainingOutput(
            loss=loss, projections=projections, features=features.unflatten(0, (batch, views))
        )
