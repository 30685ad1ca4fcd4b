"""MAE: masked autoencoders with a timm ViT encoder (He et al., 2021, arXiv:2111.06377).

The model reads as the paper's pipeline (and as facebookresearch/mae ``models_mae.py``, which the formulas were
checked against, together with transformers' ``modeling_vit_mae.py``): :meth:`MAEForPreTraining.patchify`,
:meth:`~MAEForPreTraining.random_masking`, :meth:`~MAEForPreTraining.forward_encoder` on the visible patches only,
:meth:`~MAEForPreTraining.forward_decoder` (a light decoder with mask tokens), :meth:`~MAEForPreTraining.forward_loss`
(MSE on the removed patches).

The encoder is a plain timm ``VisionTransformer`` (class token, fixed 2-D sin-cos position embedding in its
``pos_embed``, mean pooling of the patch tokens), built by ``timm.create_model(TIMM_ARCHITECTURE,
**timm_model_args(config))``, so its state dict is a native timm checkpoint: ``timm.models.save_for_hf`` saves it and
``timm.create_model("local-dir:...")`` rebuilds it, ready for fine-tuning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Any

import timm
import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from hf_ssl.health import HealthOutput
from hf_ssl.losses import mean_over_items
from hf_ssl.models.mae.configuration_mae import MAEConfig
from hf_ssl.models.mae.masking import num_visible_patches, random_patch_masking

# Every structural argument is passed explicitly (timm_model_args), so the name only selects timm's
# VisionTransformer class; the preprocessing it carries is replaced by timm_pretrained_cfg(config).
TIMM_ARCHITECTURE = "vit_base_patch16_224"
TIMM_LAYER_NORM_EPS = 1e-6  # timm's ViT LayerNorm; no JSON-serialisable argument changes it


def sincos_2d_position_embedding(grid_size: int, dim: int, class_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding of a ``grid_size x grid_size`` patch grid (MAE, sec. A.1).

    Laid out as in facebookresearch/mae ``util/pos_embed.py`` (and transformers' ViTMAE after its half swap):
    ``[sin(w * omega) | cos(w * omega) | sin(h * omega) | cos(h * omega)]`` with ``omega_i = 10000^(-i / (dim/4))``,
    ``w`` the column and ``h`` the row of each patch in row-major order; the class token's row is zeros.

    Returns:
        ``(1 + grid_size**2, dim)`` if ``class_token`` else ``(grid_size**2, dim)``, float32.
    """
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    rows, cols = torch.meshgrid(
        torch.arange(grid_size, dtype=torch.float64), torch.arange(grid_size, dtype=torch.float64), indexing="ij"
    )
    out_w = cols.flatten().outer(omega)  # (L, D/4)
    out_h = rows.flatten().outer(omega)  # (L, D/4)
    emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)  # (L, D)
    if class_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)  # (1 + L, D)
    return emb.float()


def timm_model_args(config: MAEConfig) -> dict[str, Any]:
    """Keyword arguments of ``timm.create_model(TIMM_ARCHITECTURE, **kwargs)`` that rebuild the MAE encoder.

    The result has no classifier (``num_classes=0``), pools the mean of the patch tokens after the final norm
    (``global_pool="avg"``, ``fc_norm=False``: the pretrained per-token norm is kept), and is JSON-serialisable,
    as ``timm.models.save_for_hf`` needs. The position embedding is a learnable ``pos_embed`` in timm (fixed only
    during pretraining); for fine-tuning as in MAE, pass ``global_pool``/``fc_norm``/``num_classes`` overrides.

    Raises:
        ValueError: ``config.layer_norm_eps`` is not timm's 1e-6 (no serialisable timm argument can express it).
    """
    if not math.isclose(config.layer_norm_eps, TIMM_LAYER_NORM_EPS, rel_tol=1e-9):
        raise ValueError(
            f"layer_norm_eps={config.layer_norm_eps:g} cannot be exported to timm, whose ViT uses "
            f"{TIMM_LAYER_NORM_EPS:g}; pretrain with layer_norm_eps=1e-6 to export the encoder"
        )
    return _encoder_args(config)


def _encoder_args(config: MAEConfig) -> dict[str, Any]:
    return {
        "img_size": config.image_size,
        "patch_size": config.patch_size,
        "in_chans": config.num_channels,
        "num_classes": 0,
        "global_pool": "avg",
        "fc_norm": False,
        "class_token": True,
        "embed_dim": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "mlp_ratio": config.intermediate_size / config.hidden_size,
        "qkv_bias": config.qkv_bias,
    }


def timm_pretrained_cfg(config: MAEConfig) -> dict[str, Any]:
    """The preprocessing an exported encoder should carry (timm's ``pretrained_cfg``): ``config.data_config`` (size,
    interpolation, crop, mean, std), no classifier, the paper."""
    return {
        **config.data_config,
        "num_classes": 0,
        "hf_hub_id": None,
        "tag": None,
        "license": None,
        "notes": None,
        "paper_ids": "arXiv:2111.06377",
        "paper_name": "Masked Autoencoders Are Scalable Vision Learners",
    }


def create_encoder(config: MAEConfig) -> VisionTransformer:
    """The timm ViT encoder of ``config`` (randomly initialised by timm; :class:`MAEPreTrainedModel` re-inits)."""
    kwargs = _encoder_args(config)
    if not math.isclose(config.layer_norm_eps, TIMM_LAYER_NORM_EPS, rel_tol=1e-9):
        kwargs["norm_layer"] = partial(nn.LayerNorm, eps=config.layer_norm_eps)  # trains, but cannot be exported
    encoder = timm.create_model(
        TIMM_ARCHITECTURE, pretrained=False, pretrained_cfg_overlay=timm_pretrained_cfg(config), **kwargs
    )
    encoder.pos_embed.requires_grad_(False)  # fixed sin-cos during pretraining, as in the paper
    return encoder


@dataclass
class MAEForPreTrainingOutput(ModelOutput):
    """Output of :class:`MAEForPreTraining`.

    Args:
        loss: mean squared error over the removed patches (scalar).
        logits: ``(B, L, patch_size**2 * num_channels)`` predicted pixels of every patch (normalised per patch
            when ``norm_pix_loss``), in :meth:`MAEForPreTraining.patchify` order.
        mask: ``(B, L)``, 1 where a patch was removed, 0 where the encoder saw it.
        ids_restore: ``(B, L)`` permutation that puts ``[visible, removed]`` tokens back in patch order.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None


class MAEDecoder(nn.Module):
    """The light MAE decoder (paper sec. 3): its own width and depth, a shared mask token, fixed sin-cos positions.

    Args:
        config: the model config (``decoder_*`` fields, ``hidden_size`` of the encoder it reads).
    """

    def __init__(self, config: MAEConfig):
        super().__init__()
        dim, grid = config.decoder_hidden_size, config.grid_size
        self.embed = nn.Linear(config.hidden_size, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_2d_position_embedding(grid, dim).unsqueeze(0), requires_grad=False)
        norm_layer = partial(nn.LayerNorm, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.decoder_num_attention_heads,
                mlp_ratio=config.decoder_intermediate_size / dim,
                qkv_bias=config.qkv_bias,
                norm_layer=norm_layer,
            )
            for _ in range(config.decoder_num_hidden_layers)
        )
        self.norm = norm_layer(dim)
        self.pred = nn.Linear(dim, config.patch_size**2 * config.num_channels)
        self.grad_checkpointing = False

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent (B, 1 + K, D_enc)`` (class token first) and ``ids_restore (B, L)`` -> ``(B, L, p*p*C)``."""
        x = self.embed(latent)  # (B, 1 + K, D)
        batch, visible, dim = x.shape
        mask_tokens = self.mask_token.expand(batch, ids_restore.shape[1] + 1 - visible, dim)  # (B, L - K, D)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, D) in shuffled order: visible first
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))  # (B, L, D) patch order
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed  # (B, 1 + L, D)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and self.training else block(x)
        return self.pred(self.norm(x[:, 1:]))  # (B, L, p*p*C); the class token predicts nothing


class MAEPreTrainedModel(PreTrainedModel):
    """Weight initialisation of facebookresearch/mae (``initialize_weights``), loading and checkpointing."""

    config_class = MAEConfig
    config: MAEConfig
    base_model_prefix = "mae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        loaded = super().from_pretrained(*args, **kwargs)
        # transformers (5.x) makes every loaded tensor a Parameter with requires_grad=True: freeze the fixed tables
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, loading info) with output_loading_info
        model.freeze_position_embeddings()
        return loaded

    def freeze_position_embeddings(self) -> None:
        """Keep the sin-cos position embeddings of the encoder and decoder fixed (``requires_grad=False``)."""
        for module in self.modules():
            if isinstance(module, VisionTransformer | MAEDecoder):
                module.pos_embed.requires_grad_(False)

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' init functions skip tensors already loaded from a checkpoint
        grid = self.config.grid_size
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VisionTransformer):
            pos = sincos_2d_position_embedding(grid, module.embed_dim).unsqueeze(0)
            init.copy_(module.pos_embed, pos.to(module.pos_embed.device))
            init.normal_(module.cls_token, std=self.config.initializer_range)
            weight = module.patch_embed.proj.weight  # (D, C, p, p), initialised as a Linear of p*p*C inputs
            if not getattr(weight, "_is_hf_initialized", False) and weight.device.type != "meta":
                init.xavier_uniform_(weight.view(weight.shape[0], -1))
        elif isinstance(module, MAEDecoder):
            pos = sincos_2d_position_embedding(grid, module.pos_embed.shape[-1]).unsqueeze(0)
            init.copy_(module.pos_embed, pos.to(module.pos_embed.device))
            init.normal_(module.mask_token, std=self.config.initializer_range)

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        for module in self.modules():
            if isinstance(module, VisionTransformer):
                module.set_grad_checkpointing(enable)
            elif isinstance(module, MAEDecoder):
                module.grad_checkpointing = enable


class MAEModel(MAEPreTrainedModel):
    """The MAE encoder alone (what fine-tuning keeps): images in, features of every patch out, nothing masked.

    Loads from a :class:`MAEForPreTraining` checkpoint (the decoder's weights are ignored).
    """

    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.encoder = create_encoder(config)
        self.post_init()

    @property
    def num_features(self) -> int:
        return self.encoder.num_features

    def embed_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, L, D)`` patch embeddings plus their position embeddings (no class token)."""
        return self.encoder.patch_embed(pixel_values) + self.encoder.pos_embed[:, 1:]

    def prepend_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, 1 + N, D)``, the class token (plus its position embedding) first."""
        cls = (self.encoder.cls_token + self.encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        return torch.cat([cls, x], dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer blocks and final norm: ``(B, N, D)`` -> ``(B, N, D)``."""
        blocks = self.encoder.blocks
        if self.encoder.grad_checkpointing and self.training:
            for block in blocks:
                x = checkpoint(block, x, use_reentrant=False)
        else:
            x = blocks(x)
        return self.encoder.norm(x)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs: Any
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        """Encode every patch (no masking).

        Args:
            pixel_values: ``(B, C, H, W)`` normalised images.

        Returns:
            ``last_hidden_state (B, 1 + L, D)`` (class token first, then the patches in row-major order, after the
            final norm) and ``pooler_output (B, D)``, the mean of the ``L`` patch tokens (timm's ``global_pool="avg"``;
            the class token is ``last_hidden_state[:, 0]``).
        """
        hidden = self.encode(self.prepend_class_token(self.embed_patches(pixel_values)))  # (B, 1 + L, D)
        pooled = hidden[:, 1:].mean(dim=1)  # (B, D)
        if return_dict is False or (return_dict is None and not self.config.return_dict):
            return hidden, pooled
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)


class MAEForPreTraining(MAEPreTrainedModel):
    """MAE pretraining: encode a random subset of the patches, reconstruct the pixels of the others."""

    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch: the loss is a mean over the whole step

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.mae = MAEModel(config)
        self.decoder = MAEDecoder(config)
        self.post_init()

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, L, p*p*C)``, patches in row-major order, each flattened as ``(p, p, C)``."""
        p, channels = self.config.patch_size, self.config.num_channels
        batch, _, height, width = pixel_values.shape
        x = pixel_values.reshape(batch, channels, height // p, p, width // p, p)  # (B, C, h, p, w, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
        return x.reshape(batch, (height // p) * (width // p), p * p * channels)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, L, p*p*C)`` -> ``(B, C, H, W)``, the inverse of :meth:`patchify` for square images."""
        p, channels = self.config.patch_size, self.config.num_channels
        batch, length, _ = patches.shape
        grid = math.isqrt(length)
        x = patches.reshape(batch, grid, grid, p, p, channels)  # (B, h, w, p, p, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return x.reshape(batch, channels, grid * p, grid * p)

    def random_masking(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep ``round((1 - mask_ratio) * L)`` tokens per sample: those with the smallest ``noise``.

        See :func:`~hf_ssl.models.mae.masking.random_patch_masking` (and
        :func:`~hf_ssl.models.mae.masking.num_visible_patches` for how this rounding differs from ViTMAE's ``int()``).

        Args:
            x: ``(B, L, D)`` patch tokens.
            noise: ``(B, L)``; uniform random if ``None``.

        Returns:
            ``x_visible (B, K, D)``, ``mask (B, L)`` (1 = removed), ``ids_restore (B, L)``.
        """
        return random_patch_masking(x, self.config.mask_ratio, noise)

    def forward_encoder(
        self, pixel_values: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed all patches, drop the masked ones, and encode the class token + the visible patches only.

        Returns:
            ``latent (B, 1 + K, D)``, ``mask (B, L)``, ``ids_restore (B, L)``.
        """
        x = self.mae.embed_patches(pixel_values)  # (B, L, D)
        x, mask, ids_restore = self.random_masking(x, noise)  # (B, K, D)
        latent = self.mae.encode(self.mae.prepend_class_token(x))  # (B, 1 + K, D)
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """``latent (B, 1 + K, D)`` -> predicted pixels of every patch ``(B, L, p*p*C)``."""
        return self.decoder(latent, ids_restore)

    def target(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the decoder regresses: ``(B, L, p*p*C)`` patches, normalised per patch if ``norm_pix_loss``.

        The per-patch normalisation uses the unbiased variance plus 1e-6, as facebookresearch/mae and ViTMAE do.
        """
        target = self.patchify(pixel_values)  # (B, L, p*p*C)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(
        self,
        pixel_values: torch.Tensor,
        pred: torch.Tensor,
        mask: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Mean squared error per patch, averaged over the removed patches only (paper sec. 3, "Reconstruction
        target").

        Args:
            pixel_values: ``(B, C, H, W)``.
            pred: ``(B, L, p*p*C)``.
            mask: ``(B, L)``, 1 = removed.
            num_items_in_batch: removed patches in the whole optimisation step (see
                :func:`~hf_ssl.losses.mean_over_items`); ``None``: this batch's.
        """
        mask = mask.float()  # fp32 under autocast too: bf16 counts integers exactly only up to 256
        per_patch = (pred.float() - self.target(pixel_values.float())).pow(2).mean(dim=-1)  # (B, L), fp32
        return mean_over_items((per_patch * mask).sum(), mask.sum(), num_items_in_batch)

    def num_items(self, batch: dict[str, Any]) -> int:
        """The patches this batch reconstructs: the same number in every image."""
        num_patches = self.config.num_patches
        masked = num_patches - num_visible_patches(num_patches, self.config.mask_ratio)
        return batch["pixel_values"].shape[0] * masked

    def forward(
        self,
        pixel_values: torch.Tensor,
        noise: torch.Tensor | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> MAEForPreTrainingOutput | tuple[torch.Tensor, ...]:
        """Args:
        pixel_values: ``(B, C, H, W)`` normalised images of ``config.image_size``.
        noise: ``(B, L)`` optional; its argsort decides which patches are kept (the smallest), as in ViTMAE.
        return_dict: return a tuple ``(loss, logits, mask, ids_restore)`` when ``False``.
        num_items_in_batch: removed patches in the whole optimisation step, which the summed error is divided by
            (the Trainer passes it); ``None``: the mean over this batch.
        kwargs: ignored (e.g. what a Trainer passes along).
        """
        latent, mask, ids_restore = self.forward_encoder(pixel_values, noise)
        pred = self.forward_decoder(latent, ids_restore)  # (B, L, p*p*C)
        loss = self.forward_loss(pixel_values, pred, mask, num_items_in_batch)
        if return_dict is False or (return_dict is None and not self.config.return_dict):
            return loss, pred, mask, ids_restore
        return MAEForPreTrainingOutput(loss=loss, logits=pred, mask=mask, ids_restore=ids_restore)

    def health(self, batch: dict[str, torch.Tensor]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the encoder's pooled features of the whole images
        (what fine-tuning keeps), the loss, and ``reconstruction_error``, the mean squared error of the removed
        patches in the input's pixel space (the prediction de-normalised per patch when ``norm_pix_loss``)."""
        pixel_values = batch["pixel_values"]
        latent, mask, ids_restore = self.forward_encoder(pixel_values, batch.get("noise"))
        pred = self.forward_decoder(latent, ids_restore).float()  # (B, L, p*p*C)
        loss = self.forward_loss(pixel_values, pred, mask)
        patches = self.patchify(pixel_values.float())  # (B, L, p*p*C)
        if self.config.norm_pix_loss:  # back to pixels with each true patch's mean and std, as the target was made
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        mask = mask.float()
        error = ((pred - patches).pow(2).mean(dim=-1) * mask).sum() / mask.sum().clamp(min=1.0)
        features = self.mae(pixel_values, return_dict=True).pooler_output  # (B, D)
        scalars = {"reconstruction_error": error}
        return HealthOutput(embeddings=features, loss=loss, scalars=scalars, isotropic=False)


# --- weights of transformers' ViTMAE --------------------------------------------------------------------------

_LAYER_NAMES = {  # ViTMAELayer -> timm Block (q/k/v are fused into qkv separately)
    "layernorm_before": "norm1",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_OTHER_NAMES = {
    "embeddings.cls_token": "mae.encoder.cls_token",
    "embeddings.position_embeddings": "mae.encoder.pos_embed",
    "embeddings.patch_embeddings.projection": "mae.encoder.patch_embed.proj",
    "layernorm": "mae.encoder.norm",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.decoder_pos_embed": "decoder.pos_embed",
    "decoder.decoder_embed": "decoder.embed",
    "decoder.decoder_norm": "decoder.norm",
    "decoder.decoder_pred": "decoder.pred",
}
_LAYER_KEY = re.compile(r"^(layers|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)$")


def load_vit_mae_state_dict(hf_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the state dict of transformers' ``ViTMAEForPreTraining`` (or ``ViTMAEModel``) to ours.

    The separate query/key/value projections are concatenated into timm's fused ``qkv``. The result loads into
    :class:`MAEForPreTraining` (``load_state_dict``; from a ``ViTMAEModel`` only the ``mae.`` part is present).

    Raises:
        KeyError: a key of ``hf_state_dict`` that has no counterpart here.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in hf_state_dict.items():
        name = key.removeprefix("vit.")
        layer = _LAYER_KEY.match(name)
        if layer:
            stack, index, module, kind = layer.groups()
            prefix = f"mae.encoder.blocks.{index}" if stack == "layers" else f"decoder.blocks.{index}"
            part = re.fullmatch(r"attention\.([qkv])_proj", module)
            if part:
                qkv.setdefault((f"{prefix}.attn.qkv.{kind}", kind), {})[part.group(1)] = value
            elif module in _LAYER_NAMES:
                out[f"{prefix}.{_LAYER_NAMES[module]}.{kind}"] = value
            else:
                raise KeyError(f"no counterpart for ViTMAE weight {key!r}")
            continue
        base, _, kind = name.rpartition(".")
        if name in _OTHER_NAMES:
            out[_OTHER_NAMES[name]] = value
        elif base in _OTHER_NAMES and kind in ("weight", "bias"):
            out[f"{_OTHER_NAMES[base]}.{kind}"] = value
        else:
            raise KeyError(f"no counterpart for ViTMAE weight {key!r}")
    for (target, _), parts in qkv.items():
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # (3D, ...) as timm's qkv
    return out


def to_vit_mae_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`load_vit_mae_state_dict`: our state dict -> ``ViTMAEForPreTraining``'s."""
    inverse_other = {v: k for k, v in _OTHER_NAMES.items()}
    inverse_layer = {v: k for k, v in _LAYER_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        block = re.match(r"^(mae\.encoder\.blocks|decoder\.blocks)\.(\d+)\.(.+)\.(weight|bias)$", key)
        if block:
            stack, index, module, kind = block.groups()
            prefix = f"vit.layers.{index}" if stack.startswith("mae") else f"decoder.decoder_layers.{index}"
            if module == "attn.qkv":
                for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}.attention.{part}_proj.{kind}"] = chunk
            else:
                out[f"{prefix}.{inverse_layer[module]}.{kind}"] = value
            continue
        base, _, kind = key.rpartition(".")
        if key in inverse_other:
            name = inverse_other[key]
        else:
            name = f"{inverse_other[base]}.{kind}"
        out[name if name.startswith("decoder.") else f"vit.{name}"] = value
    return out
