"""DINO: a timm backbone and projection head distilled from their momentum teacher (Caron et al., 2021,
arXiv:2104.14294)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from hf_ssl.backbones.timm import TimmBackboneModel
from hf_ssl.health import HealthOutput
from hf_ssl.models.dino.configuration_dino import DINOConfig
from hf_ssl.models.dino.loss import DINOLoss, dino_loss, teacher_temperature_at
from hf_ssl.teachers import MomentumTeacher


class DINOProjectionHead(nn.Module):
    """The DINO head (Caron et al., 2021, sec. 3.1 and appendix): an MLP to a bottleneck, L2 normalisation, and a
    weight-normalised Linear layer without bias onto ``output_dim`` prototypes.

    The same layers, shapes and initialisation as facebookresearch/dino's ``DINOHead`` and lightly's
    ``DINOProjectionHead``: the MLP's Linear layers truncated-normal (std 0.02, cut at +-2) with zero biases, GELU
    between them; the last layer's direction ``v`` with ``nn.Linear``'s default initialisation and its gain ``g``
    (``(output_dim, 1)``) set to 1 and, with ``norm_last_layer``, kept there (never trained).

    Args:
        input_dim: backbone feature size.
        hidden_dim: width of the MLP's hidden layers.
        bottleneck_dim: output size of the MLP.
        output_dim: number of prototypes ``K``.
        num_layers: Linear layers of the MLP (>= 1; 3 in DINO).
        batch_norm: BatchNorm1d after each hidden Linear layer.
        norm_last_layer: keep the gain of the last layer fixed to 1.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        output_dim: int = 65536,
        num_layers: int = 3,
        batch_norm: bool = False,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = input_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))  # as lightly's: no bias before a BatchNorm
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            dim = hidden_dim
        layers.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.norm_last_layer = norm_last_layer
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, output_dim, bias=False))
        self.reset_parameters()

    @property
    def weight_g(self) -> nn.Parameter:
        """The gain ``g`` of the prototypes, ``(output_dim, 1)``."""
        return self.last_layer.parametrizations.weight.original0

    @property
    def weight_v(self) -> nn.Parameter:
        """The direction ``v`` of the prototypes, ``(output_dim, bottleneck_dim)``."""
        return self.last_layer.parametrizations.weight.original1

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DINO's initialisation (see the class docstring)."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02, a=-2.0, b=2.0)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.BatchNorm1d):
                layer.reset_parameters()
        direction = torch.empty_like(self.weight_v)
        nn.init.kaiming_uniform_(direction, a=5**0.5)  # nn.Linear's own initialisation
        self.weight_v.copy_(direction)
        self.weight_g.fill_(1.0)
        self.weight_g.requires_grad_(not self.norm_last_layer)

    def train(self, mode: bool = True) -> DINOProjectionHead:
        """Set the mode, and keep the gain frozen with ``norm_last_layer`` (loading replaces parameters by new ones
        that require grad; the Trainer calls ``train()`` before every step)."""
        super().train(mode)
        if self.norm_last_layer:
            self.weight_g.requires_grad_(False)
        return self

    def cancel_last_layer_gradients(self) -> None:
        """Drop the gradients of the prototypes (DINO freezes them during the first epoch)."""
        for parameter in self.last_layer.parameters():
            parameter.grad = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(N, input_dim)`` -> ``(N, output_dim)`` logits over the prototypes."""
        bottleneck = nn.functional.normalize(self.mlp(features), dim=-1, p=2)  # (N, bottleneck_dim), unit norm
        return self.last_layer(bottleneck)


@dataclass
class DINOForPreTrainingOutput(ModelOutput):
    """Output of :class:`DINOForPreTraining`.

    Args:
        loss: the DINO loss (scalar).
        student_logits: ``(B, G + L, out_dim)`` the student's head outputs, global views first.
        teacher_logits: ``(B, G, out_dim)`` the teacher's head outputs on the global views.
        features: ``(B, G, num_features)`` the student backbone's pooled features of the global views.
        teacher_temperature: the teacher temperature of this step (scalar, logged by the Trainer).
    """

    loss: torch.Tensor | None = None
    student_logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    teacher_temperature: torch.Tensor | None = None


class DINOPreTrainedModel(PreTrainedModel):
    config_class = DINOConfig
    config: DINOConfig
    base_model_prefix = "dino"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        # The timm backbone initialises itself when it is built (and is overwritten when loaded); only our head is
        # initialised here, plus the non-persistent buffers that a meta-device build leaves empty.
        if isinstance(module, DINOProjectionHead):
            module.reset_parameters()
        elif isinstance(module, DINOLoss):
            module.center.zero_()
        elif hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()

    def _set_gradient_checkpointing(self, enable: bool = True, *args: Any, **kwargs: Any) -> None:
        for module in self.modules():
            if isinstance(module, DINOModel):
                module.backbone.set_grad_checkpointing(enable)


TEACHER_BACKBONE_KEYS = {r"^dino\.": "student.", r"^teacher\.dino\.": "dino."}
"""``from_pretrained``'s ``key_mapping`` that makes :class:`DINOModel` read the **teacher**'s backbone out of a
:class:`DINOForPreTraining` checkpoint: the student's ``dino.*`` keys move aside (``student.*``, ignored) and the
teacher's ``teacher.dino.*`` take their place. A checkpoint of a ``DINOModel`` alone (``backbone.*``) matches
neither pattern and loads as saved."""


class DINOModel(TimmBackboneModel, DINOPreTrainedModel):
    """The DINO backbone alone: images in, pooled features out.

    Loaded from a pretraining checkpoint (``AutoModel.from_pretrained(run_dir)``, ``hf-ssl evaluate``) it holds the
    **teacher**'s backbone, the one DINO evaluates and releases (Caron et al., 2021, sec. 3.1: the teacher performs
    better than the student throughout training; facebookresearch/dino's ``eval_knn.py`` / ``eval_linear.py`` default
    to ``--checkpoint_key teacher``) and the one ``hf-ssl export`` writes, so the figures describe the released
    weights.
    """

    _keys_to_ignore_on_load_unexpected = [r"^head\.", r"^teacher\.", r"^criterion\.", r"^student\."]

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` reading the teacher's backbone from a pretraining checkpoint (see
        :data:`TEACHER_BACKBONE_KEYS`); an explicit ``key_mapping`` replaces that default."""
        kwargs.setdefault("key_mapping", TEACHER_BACKBONE_KEYS)
        return super().from_pretrained(*args, **kwargs)


class DINOForPreTraining(DINOPreTrainedModel):
    """DINO's student (backbone + :class:`DINOProjectionHead`), its momentum teacher of both, and the loss with its
    center (Caron et al., 2021, Algorithm 1).

    The student sees every view, the teacher (an EMA of the student, :class:`~hf_ssl.teachers.MomentumTeacher`,
    updated by ``MomentumTeacherCallback`` through :meth:`update_teacher`) only the global ones; the center of the
    teacher's outputs is a buffer of ``self.criterion``, updated in training mode only: after every training forward
    by default, once per optimizer step in a Trainer run (:meth:`defer_center_updates`).
    """

    def __init__(self, config: DINOConfig):
        super().__init__(config)
        self.dino = DINOModel(config)
        self.head = DINOProjectionHead(
            self.dino.num_features,
            config.head_hidden_dim,
            config.head_bottleneck_dim,
            config.out_dim,
            config.head_layers,
            config.head_batch_norm,
            config.norm_last_layer,
        )
        self.criterion = DINOLoss(config.out_dim, config.student_temperature, config.center_momentum)
        self.teacher = MomentumTeacher(self, ["dino", "head"])
        self.current_teacher_temperature = config.warmup_teacher_temperature
        self.post_init()
        self.teacher.reset_from(self)  # post_init initialised the copy anew: start it equal to the student

    def load_pretrained_backbone(self) -> None:
        """Start the student's and the teacher's backbone from timm's pretrained weights."""
        self.dino.load_pretrained_backbone()
        self.teacher.reset_from(self)

    def update_teacher(self, momentum: float) -> None:
        """One EMA step of the teacher (backbone and head) towards the student (``MomentumTeacherCallback``)."""
        self.teacher.update(self, momentum)

    def teacher_temperature_at(self, epoch: float, step: int) -> float:
        """The scheduled teacher temperature after ``epoch`` epochs and ``step`` optimizer steps: a linear warm-up
        from ``warmup_teacher_temperature`` over ``warmup_teacher_temperature_steps`` steps when set, else over
        ``warmup_teacher_temperature_epochs`` epochs (see :func:`~hf_ssl.models.dino.loss.teacher_temperature_at`)."""
        config = self.config
        if config.warmup_teacher_temperature_steps is not None:
            progress, warmup = float(step), float(config.warmup_teacher_temperature_steps)
        else:
            progress, warmup = epoch, config.warmup_teacher_temperature_epochs
        return teacher_temperature_at(progress, warmup, config.warmup_teacher_temperature, config.teacher_temperature)

    def defer_center_updates(self, defer: bool = True) -> None:
        """Make training forwards accumulate the teacher outputs for one center update per optimizer step, applied
        by :meth:`apply_center_update` (``DINOScheduleCallback`` does both in a Trainer run); ``False`` applies any
        pending outputs and goes back to one update per training forward (see :class:`DINOLoss`)."""
        if not defer:
            self.criterion.apply_pending_center()
        self.criterion.defer_center_update = bool(defer)

    def apply_center_update(self) -> bool:
        """The step's one center update from the teacher outputs accumulated since the last (see :class:`DINOLoss`);
        whether the center moved."""
        return self.criterion.apply_pending_center()

    def set_teacher_temperature(self, temperature: float) -> None:
        """Set the teacher temperature used when ``forward`` is given none (set every step by a callback)."""
        self.current_teacher_temperature = float(temperature)

    def forward(
        self,
        pixel_values: torch.Tensor,
        local_pixel_values: torch.Tensor | None = None,
        teacher_temperature: float | None = None,
        **kwargs: Any,
    ) -> DINOForPreTrainingOutput:
        """Args:
        pixel_values: ``(B, G, C, H, W)``, the ``G`` global views of each of ``B`` images.
        local_pixel_values: ``(B, L, C, h, w)``, the local views (seen by the student only), or ``None``.
        teacher_temperature: the teacher's softmax temperature for this step; by default the one last set with
            :meth:`set_teacher_temperature` (``warmup_teacher_temperature`` at first).
        """
        if pixel_values.ndim != 5:
            raise ValueError(f"DINO expects pixel_values of shape (B, G, C, H, W), got {tuple(pixel_values.shape)}")
        batch, num_global = pixel_values.shape[:2]
        if local_pixel_values is not None and (local_pixel_values.ndim != 5 or local_pixel_values.shape[0] != batch):
            raise ValueError(
                f"local_pixel_values must be (B, L, C, h, w) with B = {batch}, got {tuple(local_pixel_values.shape)}"
            )
        num_local = 0 if local_pixel_values is None else local_pixel_values.shape[1]
        if num_global + num_local < 2:
            raise ValueError(f"DINO needs at least two views of each image, got {num_global} global and {num_local}")
        temperature = self.current_teacher_temperature if teacher_temperature is None else teacher_temperature

        # the student: each resolution through the backbone in one batch, the views of one image side by side
        global_features = self.dino(pixel_values.flatten(0, 1)).pooler_output  # (B * G, F)
        student = [self.head(global_features).unflatten(0, (batch, num_global))]  # (B, G, K)
        if num_local:
            local_features = self.dino(local_pixel_values.flatten(0, 1)).pooler_output  # (B * L, F)
            student.append(self.head(local_features).unflatten(0, (batch, num_local)))  # (B, L, K)
        student_logits = torch.cat(student, dim=1)  # (B, G + L, K), global views first

        with torch.no_grad():  # the teacher: the global views only
            teacher_features = self.teacher.dino(pixel_values.flatten(0, 1)).pooler_output  # (B * G, F)
            teacher_logits = self.teacher.head(teacher_features).unflatten(0, (batch, num_global))  # (B, G, K)

        loss = self.criterion(student_logits, teacher_logits, temperature, update_center=self.training)
        return DINOForPreTrainingOutput(
            loss=loss,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            features=global_features.unflatten(0, (batch, num_global)),
            teacher_temperature=loss.new_tensor(temperature),
        )

    def health(self, batch: dict[str, torch.Tensor]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the student backbone's features of the first two
        global views (positives of each other), the DINO loss with the current center (left unchanged), and the
        mean entropy of the teacher's centered, sharpened distribution (DINO's collapse measure, sec. 5.3: ``log K``
        when it collapses to uniform, 0 when one prototype dominates)."""
        pixel_values = batch["pixel_values"]
        batch_size, num_global = pixel_values.shape[:2]
        features = self.dino(pixel_values.flatten(0, 1)).pooler_output.unflatten(0, (batch_size, num_global))
        student = self.head(features.flatten(0, 1)).unflatten(0, (batch_size, num_global))  # (B, G, K)
        teacher_features = self.teacher.dino(pixel_values.flatten(0, 1)).pooler_output
        teacher = self.teacher.head(teacher_features).unflatten(0, (batch_size, num_global))  # (B, G, K)
        temperature = self.current_teacher_temperature
        center = self.criterion.center
        loss = (
            dino_loss(student, teacher, center, self.config.student_temperature, temperature)
            if num_global > 1
            else None
        )
        probabilities = ((teacher.float() - center) / temperature).softmax(dim=-1)
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1).mean()
        return HealthOutput(
            embeddings=features[:, 0],
            positives=features[:, 1] if num_global > 1 else None,
            loss=loss,
            scalars={"teacher_entropy": entropy},
            advice={"collapse": "a lower teacher_temperature, a higher center_momentum, or more local crops"},
        )
