"""wav2vec 2.0-style pretraining of a transformers ``Wav2Vec2Model`` (Baevski et al., 2020, arXiv:2006.11477).

The backbone is transformers' own ``Wav2Vec2Model``, built from the ``Wav2Vec2Config`` in
``Wav2VecConfig.backbone``; on top of it: a Gumbel-softmax product quantizer of the convolutional features, span
masking and distractor sampling drawn on the model's device (:mod:`~hf_ssl.masking`,
:mod:`~hf_ssl.models.wav2vec.masking`), the contrastive and diversity losses (:mod:`~hf_ssl.models.wav2vec.loss`)
and fairseq's feature penalty. Formulas checked against transformers ``models/wav2vec2/modeling_wav2vec2.py``
(``Wav2Vec2GumbelVectorQuantizer``,
``Wav2Vec2ForPreTraining``) and fairseq ``models/wav2vec/wav2vec2.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Wav2Vec2Model
from transformers.utils import ModelOutput

from hf_ssl.backbones.transformers import SpeechEncoderModel
from hf_ssl.health import HealthOutput
from hf_ssl.losses import full_precision, mean_over_items
from hf_ssl.masking import compute_span_mask
from hf_ssl.models.wav2vec.configuration_wav2vec import Wav2VecConfig
from hf_ssl.models.wav2vec.loss import codevector_perplexity, wav2vec_contrastive_loss, wav2vec_diversity_loss
from hf_ssl.models.wav2vec.masking import sample_negative_indices


@dataclass
class Wav2VecForPreTrainingOutput(ModelOutput):
    """Output of :class:`Wav2VecForPreTraining`. Losses are means over masked frames (transformers' are sums).

    Args:
        loss: ``contrastive_loss + diversity_loss_weight * diversity_loss + feature_penalty_weight *
            feature_penalty`` (scalar).
        contrastive_loss: L_m, mean cross entropy over masked frames (scalar).
        diversity_loss: L_d, ``(G V - perplexity) / (G V)`` (scalar).
        feature_penalty: mean squared convolutional feature (scalar).
        codevector_perplexity: perplexity of codebook usage over masked frames, summed over groups (scalar).
        contrastive_accuracy: fraction of masked frames whose true target scores above every distractor (scalar).
        gumbel_temperature: the quantizer's current temperature (scalar).
        projected_states: ``(B, T, proj_codevector_dim)`` context vectors projected to the target space.
        projected_quantized_states: ``(B, T, proj_codevector_dim)`` projected quantized targets.
        mask_time_indices: ``(B, T)`` bool, the masked frames used.
    """

    loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    diversity_loss: torch.Tensor | None = None
    feature_penalty: torch.Tensor | None = None
    codevector_perplexity: torch.Tensor | None = None
    contrastive_accuracy: torch.Tensor | None = None
    gumbel_temperature: torch.Tensor | None = None
    projected_states: torch.Tensor | None = None
    projected_quantized_states: torch.Tensor | None = None
    mask_time_indices: torch.Tensor | None = None


class Wav2VecGumbelQuantizer(nn.Module):
    """Product quantization with a straight-through Gumbel softmax (Baevski et al., 2020, sec. 2; Jang et al., 2017).

    ``G`` groups of ``V`` learned entries; each frame picks one entry per group, and the ``G`` entries are
    concatenated. Same parameters and shapes as transformers' ``Wav2Vec2GumbelVectorQuantizer`` (``weight_proj``,
    ``codevectors (1, G * V, d / G)``) and the same Gumbel noise draw, so weights map one to one; the lookup is one
    batched matmul per group instead of a ``(N, G * V, d / G)`` broadcast, and the straight-through one-hot is exact.
    Training: hard Gumbel-softmax samples, perplexity of the noise-free softmax. Evaluation: argmax codes,
    perplexity of the hard codes.

    Args:
        input_dim: size of the features to quantize (the last conv layer's channels).
        num_groups: ``G``.
        num_vars: ``V``.
        codevector_dim: size of the output, ``G`` entries of ``codevector_dim / G``.
    """

    def __init__(self, input_dim: int, num_groups: int, num_vars: int, codevector_dim: int):
        super().__init__()
        self.num_groups = num_groups
        self.num_vars = num_vars
        self.codevectors = nn.Parameter(torch.empty(1, num_groups * num_vars, codevector_dim // num_groups))
        self.weight_proj = nn.Linear(input_dim, num_groups * num_vars)
        self.temperature = 2.0

    def forward(
        self, hidden_states: torch.Tensor, mask_time_indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Args:
            hidden_states: ``(B, T, C)`` features.
            mask_time_indices: ``(B, T)`` bool, the frames the perplexity is averaged over (all if ``None``).

        Returns:
            ``quantized (B, T, codevector_dim)``, ``perplexity`` (scalar), ``codes (B, T, G)`` the chosen entries.
        """
        batch, length, _ = hidden_states.shape
        with full_precision(hidden_states.device):  # the codes and their softmaxes in fp32 under autocast too
            logits = self.weight_proj(hidden_states.float()).view(batch, length, self.num_groups, self.num_vars)
        mask = mask_time_indices.flatten() if mask_time_indices is not None else None
        if self.training:
            # the noise of torch's gumbel_softmax, drawn over the same (B * T * G, V) elements in the same order
            gumbels = -torch.empty_like(logits).exponential_().log()
            soft = ((logits + gumbels) / self.temperature).softmax(dim=-1)  # (B, T, G, V)
            codes = soft.argmax(dim=-1)  # (B, T, G)
            hard = F.one_hot(codes, self.num_vars).to(soft.dtype)
            probs = hard + (soft - soft.detach())  # straight-through: exact one-hot value, the soft gradient
            perplexity = codevector_perplexity(logits.softmax(dim=-1).flatten(0, 1), mask)
        else:
            codes = logits.argmax(dim=-1)  # (B, T, G)
            probs = F.one_hot(codes, self.num_vars).to(logits.dtype)
            perplexity = codevector_perplexity(probs.flatten(0, 1), mask)
        codebook = self.codevectors.view(self.num_groups, self.num_vars, -1)  # (G, V, d)
        probs = probs.to(codebook.dtype).view(batch * length, self.num_groups, self.num_vars).transpose(0, 1)
        quantized = torch.bmm(probs, codebook)  # (G, B * T, d)
        quantized = quantized.transpose(0, 1).reshape(batch, length, -1)  # (B, T, G * d)
        return quantized, perplexity, codes


class Wav2VecPreTrainedModel(PreTrainedModel):
    config_class = Wav2VecConfig
    config: Wav2VecConfig
    base_model_prefix = "wav2vec"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = False
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # The Wav2Vec2Model backbone initialises itself (its own _init_weights); only our parts are set here, as
        # transformers' Wav2Vec2PreTrainedModel does for its quantizer and projections.
        if isinstance(module, Wav2VecGumbelQuantizer):
            nn.init.normal_(module.weight_proj.weight, mean=0.0, std=1.0)
            nn.init.zeros_(module.weight_proj.bias)
            nn.init.uniform_(module.codevectors)
        elif isinstance(module, Wav2VecForPreTraining):
            module.project_hid.reset_parameters()
            module.project_q.reset_parameters()

    def _get_feat_extract_output_lengths(self, input_lengths: torch.Tensor | int) -> torch.Tensor | int:
        """Frames the convolutional encoder makes of ``input_lengths`` samples."""
        for kernel, stride in zip(self.config.backbone.conv_kernel, self.config.backbone.conv_stride, strict=True):
            input_lengths = (input_lengths - kernel) // stride + 1
        return input_lengths


class Wav2VecModel(SpeechEncoderModel, Wav2VecPreTrainedModel):
    """The backbone alone, a transformers ``Wav2Vec2Model``: what ``AutoModel`` loads from a pretraining checkpoint.

    ``forward(input_values (B, L), attention_mask (B, L))`` returns the backbone's ``Wav2Vec2BaseModelOutput``
    (``last_hidden_state (B, T, hidden_size)``, ``extract_features (B, T, conv_dim[-1])``, and ``hidden_states``,
    the input of the first transformer layer then each layer's output, when ``output_hidden_states`` is given or set
    on this model's config, as for any transformers model: the backbone's own ``Wav2Vec2Config`` is a sub-config,
    so the flag is passed down explicitly).
    """

    backbone_class = Wav2Vec2Model
    _keys_to_ignore_on_load_unexpected = [r"quantizer\.", r"project_hid\.", r"project_q\."]


class Wav2VecForPreTraining(Wav2VecPreTrainedModel):
    """``Wav2Vec2Model`` + Gumbel product quantizer, trained on the wav2vec 2.0 contrastive task.

    The pipeline, stage by stage: :meth:`forward_features` (conv encoder, feature penalty, projection),
    :meth:`draw_masks` (span masks and distractors on the device, unless given), :meth:`forward_encoder` (mask
    embedding in, transformer), :meth:`forward_targets` (quantize the unmasked features), then the contrastive and
    diversity losses.

    Under :class:`~hf_ssl.trainer.SSLTrainer` the masks and distractors are drawn before the step
    (:meth:`draw_random_inputs`), so the step's masked frames can be counted (:meth:`num_items`) and each
    micro-batch's loss weighted by its share of them, as fairseq and transformers' pretraining script do.
    """

    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch

    def __init__(self, config: Wav2VecConfig):
        super().__init__(config)
        self.wav2vec = Wav2VecModel(config)
        self.dropout_features = nn.Dropout(config.feat_quantizer_dropout)
        self.quantizer = Wav2VecGumbelQuantizer(
            config.backbone.conv_dim[-1],
            config.num_codevector_groups,
            config.num_codevectors_per_group,
            config.codevector_dim,
        )
        self.quantizer.temperature = config.max_gumbel_temperature
        self.project_hid = nn.Linear(config.backbone.hidden_size, config.proj_codevector_dim)
        self.project_q = nn.Linear(config.codevector_dim, config.proj_codevector_dim)
        self.post_init()

    @property
    def backbone(self) -> Wav2Vec2Model:
        return self.wav2vec.backbone

    def set_gumbel_temperature(self, temperature: float) -> None:
        """Set the Gumbel-softmax temperature (annealed during training by ``GumbelTemperatureCallback``)."""
        self.quantizer.temperature = float(temperature)

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the convolutional feature encoder."""
        self.backbone.freeze_feature_encoder()

    def forward_features(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``input_values (B, L)`` -> ``hidden (B, T, H)`` projected features, ``extract (B, T, C)`` layer-normed
        conv features (the quantizer's input), ``feature_penalty`` (scalar, on the raw conv features as fairseq),
        and ``frame_mask (B, T)`` bool (``None`` without an attention mask)."""
        conv = self.backbone.feature_extractor(input_values).transpose(1, 2)  # (B, C, T) -> (B, T, C)
        feature_penalty = conv.float().pow(2).mean()
        frame_mask = None
        if attention_mask is not None:
            lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1))  # (B,)
            frame_mask = torch.arange(conv.shape[1], device=conv.device)[None, :] < lengths[:, None]  # (B, T)
        hidden, extract = self.backbone.feature_projection(conv)
        return hidden, extract, feature_penalty, frame_mask

    def draw_masks(
        self,
        batch_size: int,
        num_frames: int,
        frame_mask: torch.Tensor | None,
        mask_time_indices: torch.Tensor | None = None,
        sampled_negative_indices: torch.Tensor | None = None,
        device: torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Span masks ``(B, T)`` and distractor indices ``(B, T, K)``: the given ones, else drawn on ``device``."""
        config = self.config
        if mask_time_indices is None:
            lengths = frame_mask.sum(-1) if frame_mask is not None else None
            mask_time_indices = compute_span_mask(
                batch_size,
                num_frames,
                config.mask_time_prob,
                config.mask_time_length,
                config.mask_time_min_masks,
                lengths=lengths,
                device=device,
            )
        mask_time_indices = mask_time_indices.to(device=device, dtype=torch.bool)
        if sampled_negative_indices is None:
            sampled_negative_indices = sample_negative_indices(mask_time_indices, config.num_negatives)
        else:
            sampled_negative_indices = sampled_negative_indices.to(device=device, dtype=torch.long)
            utterance = sampled_negative_indices // num_frames  # (B, T, K): must be each row's own index
            own = torch.arange(batch_size, device=device)[:, None, None]
            shape_ok = sampled_negative_indices.shape[:2] == (batch_size, num_frames)
            if not shape_ok or not bool((utterance == own).all()):  # a check of given indices only
                raise ValueError(
                    f"sampled_negative_indices must be (B, T, K) = ({batch_size}, {num_frames}, K) flat indices "
                    "b * T + t into the same utterance's frames"
                )
        return mask_time_indices, sampled_negative_indices

    def draw_random_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Span masks and distractors for a batch of ``input_values (B, L)`` (and its ``attention_mask``), drawn on
        the batch's device with the frame count and lengths the conv encoder will give: what :meth:`forward` would
        draw itself. Masks or distractors the batch already holds are kept."""
        input_values = batch["input_values"]
        device = input_values.device
        num_frames = int(self._get_feat_extract_output_lengths(torch.tensor(input_values.shape[1])))
        frame_mask = None
        if batch.get("attention_mask") is not None:
            lengths = self._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))  # (B,)
            frame_mask = torch.arange(num_frames, device=device)[None, :] < lengths[:, None]  # (B, T)
        masks, negatives = self.draw_masks(
            input_values.shape[0],
            num_frames,
            frame_mask,
            batch.get("mask_time_indices"),
            batch.get("sampled_negative_indices"),
            device=device,
        )
        return {"mask_time_indices": masks, "sampled_negative_indices": negatives}

    def num_items(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The masked frames of a batch whose masks were drawn (:meth:`draw_random_inputs`), else ``None``."""
        masks = batch.get("mask_time_indices")
        return None if masks is None else masks.sum()

    def health(self, batch: dict[str, torch.Tensor]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the contrastive loss and accuracy on drawn masks,
        the backbone's features (``Wav2Vec2Model``'s ``last_hidden_state`` averaged over the real frames, nothing
        masked), and the codebook: ``codebook_perplexity`` of the chosen entries over every real frame (floor ``G``,
        each group always picking one entry; ceiling ``G * V``) and ``codebook_use``, the fraction of the ``G * V``
        entries chosen at least once."""
        config = self.config
        input_values, attention_mask = batch["input_values"], batch.get("attention_mask")
        hidden, extract, _, frame_mask = self.forward_features(input_values, attention_mask)
        masks, negatives = self.draw_masks(
            *hidden.shape[:2],
            frame_mask,
            batch.get("mask_time_indices"),
            batch.get("sampled_negative_indices"),
            device=hidden.device,
        )
        context = self.forward_encoder(hidden, masks, frame_mask)
        targets, _, codes = self.forward_targets(extract, masks)  # codes (B, T, G)
        loss, accuracy = wav2vec_contrastive_loss(
            self.project_hid(context), targets, masks, negatives, config.contrastive_logits_temperature, codes
        )
        frames = frame_mask if frame_mask is not None else torch.ones_like(masks)  # (B, T) real frames
        groups, entries = config.num_codevector_groups, config.num_codevectors_per_group
        chosen = F.one_hot(codes[frames], entries).float()  # (N, G, V)
        perplexity = codevector_perplexity(chosen)
        use = (chosen.sum(dim=0) > 0).float().mean()  # of the G * V entries
        states = self.wav2vec(input_values, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        weights = frames[..., None].to(states.dtype)
        features = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, H)
        return HealthOutput(
            embeddings=features,
            loss=loss,
            scalars={"contrastive_accuracy": accuracy, "codebook_perplexity": perplexity, "codebook_use": use},
            floors={"codebook_perplexity": float(groups)},
            advice={
                "codebook_perplexity": "a higher diversity_loss_weight or max_gumbel_temperature",
                "loss_zero": "checking mask_time_prob and num_negatives (collapsed targets, or too few distractors)",
            },
            isotropic=False,
        )

    def forward_encoder(
        self, hidden: torch.Tensor, mask_time_indices: torch.Tensor, frame_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Replace masked frames by the learned mask embedding and run the transformer: ``(B, T, H)`` context."""
        embed = self.backbone.masked_spec_embed.to(hidden.dtype)
        hidden = torch.where(mask_time_indices[..., None], embed, hidden)  # no boolean indexing: no host sync
        return self.backbone.encoder(hidden, attention_mask=frame_mask).last_hidden_state

    def forward_targets(
        self, extract: torch.Tensor, mask_time_indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize the (unmasked) conv features and project them: ``targets (B, T, P)``, perplexity, codes."""
        quantized, perplexity, codes = self.quantizer(self.dropout_features(extract), mask_time_indices)
        return self.project_q(quantized.to(self.project_q.weight.dtype)), perplexity, codes

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
        sampled_negative_indices: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> Wav2VecForPreTrainingOutput:
        """Args:
            input_values: ``(B, L)`` waveforms, normalised as ``Wav2Vec2FeatureExtractor(do_normalize=True)``.
            attention_mask: ``(B, L)`` 1 on samples, 0 on padding.
            mask_time_indices: ``(B, T)`` frames to mask; drawn on the device when ``None`` (training and eval).
            sampled_negative_indices: ``(B, T, K)`` distractors as flat frame indices ``b * T + t`` of the same
                utterance (transformers' format); drawn on the device when ``None``.
            num_items_in_batch: masked frames in the whole optimisation step (all micro-batches and processes):
                the loss is weighted by this batch's share of them, so the micro-batches' losses add up to the mean
                over the step's frames (the diversity and feature terms weighted alike, as fairseq does).
                ``None``: this batch's mean.

        Returns:
            :class:`Wav2VecForPreTrainingOutput`, ``loss`` first.
        """
        config = self.config
        hidden, extract, feature_penalty, frame_mask = self.forward_features(input_values, attention_mask)
        batch, frames, _ = hidden.shape
        mask_time_indices, sampled_negative_indices = self.draw_masks(
            batch, frames, frame_mask, mask_time_indices, sampled_negative_indices, device=hidden.device
        )
        context = self.forward_encoder(hidden, mask_time_indices, frame_mask)
        predicted = self.project_hid(context)  # (B, T, P)
        targets, perplexity, codes = self.forward_targets(extract, mask_time_indices)
        contrastive_loss, accuracy = wav2vec_contrastive_loss(
            predicted,
            targets,
            mask_time_indices,
            sampled_negative_indices,
            config.contrastive_logits_temperature,
            target_codes=codes,
        )
        num_codevectors = config.num_codevector_groups * config.num_codevectors_per_group
        diversity_loss = wav2vec_diversity_loss(perplexity, num_codevectors)
        loss = contrastive_loss + config.diversity_loss_weight * diversity_loss
        if config.feature_penalty_weight > 0:
            loss = loss + config.feature_penalty_weight * feature_penalty
        if num_items_in_batch is not None:
            num_masked = mask_time_indices.sum()
            loss = mean_over_items(loss * num_masked, num_masked, num_items_in_batch)
        return Wav2VecForPreTrainingOutput(
            loss=loss,
            contrastive_loss=contrastive_loss,
            diversity_loss=diversity_loss,
            feature_penalty=feature_penalty,
            codevector_perplexity=perplexity.detach(),
            contrastive_accuracy=accuracy.detach(),
            gumbel_temperature=loss.new_tensor(self.quantizer.temperature),  # on the loss's device, as every scalar
            projected_states=predicted,
            projected_quantized_states=targets,
            mask_time_indices=mask_time_indices,
        )
