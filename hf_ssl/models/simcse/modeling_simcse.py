"""SimCSE: contrastive sentence embeddings from any Hugging Face text encoder (Gao et al., 2021, arXiv:2104.08821).

Checked against the authors' code (princeton-nlp/SimCSE ``simcse/models.py``: ``Pooler``, ``MLPLayer``,
``cl_forward``): the batch of ``B`` examples with ``S`` sentences each is encoded in **one** forward pass of
``S * B`` sequences; unsupervised SimCSE is ``S = 2`` copies of the same sentence, so the two embeddings differ only by
the encoder's dropout. Pooling ``cls`` trains through an MLP (dense + tanh) that the sentence embedding
(:class:`SimCSEModel`) does not use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig
from transformers import initialization as init
from transformers.utils import ModelOutput

from hf_ssl.backbones.transformers import (
    TextEncoderModel,
    TextEncoderPreTrainedModel,
    inner_encoder_config,
    masked_mean,
)
from hf_ssl.errors import UsageError
from hf_ssl.gradient_cache import chunk_slices, encode_in_chunks, uses_gradient_cache
from hf_ssl.health import HealthOutput
from hf_ssl.models.simcse.configuration_simcse import SimCSEConfig
from hf_ssl.models.simcse.loss import info_nce_loss


def pool_sentences(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooler_type: str) -> torch.Tensor:
    """Token states ``(B, L, H)`` -> sentence embeddings ``(B, H)``: the first token's state (``cls``,
    ``cls_before_pooler``) or the mean over the tokens where ``attention_mask`` is 1 (``mean``)."""
    if pooler_type in ("cls", "cls_before_pooler"):
        return hidden[:, 0]
    return masked_mean(hidden, attention_mask)


def flatten_views(inputs: dict[str, torch.Tensor | None]) -> tuple[dict[str, torch.Tensor], int, int]:
    """A batch's ``S * B`` sequences in one view-major batch ``(S * B, L)``, with ``B`` and ``S``: ``(B, L)``
    sentences twice (unsupervised, ``S = 2``: one forward pass gives two dropout views) or ``(B, S, L)`` groups.

    Args:
        inputs: ``input_ids`` and the tensors of its shape (``attention_mask``, ...); ``None`` values are left out.

    Raises:
        ValueError: ``input_ids`` of another shape.
    """
    input_ids = inputs["input_ids"]
    if input_ids.ndim == 2:
        batch, views = input_ids.shape[0], 2
        flat = {name: torch.cat([value, value]) for name, value in inputs.items() if value is not None}
    elif input_ids.ndim == 3 and input_ids.shape[1] in (2, 3):
        batch, views = input_ids.shape[:2]
        flat = {name: value.transpose(0, 1).flatten(0, 1) for name, value in inputs.items() if value is not None}
    else:
        raise ValueError(
            f"SimCSE expects input_ids of shape (B, L) or (B, S, L) with S in (2, 3), got {tuple(input_ids.shape)}"
        )
    return flat, batch, views


class SimCSEMLP(nn.Module):
    """The MLP over the ``cls`` embedding used for the loss only (SimCSE's ``MLPLayer``: dense + tanh, the shape of
    BERT's pooler)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(features))


@dataclass
class SimCSEForPreTrainingOutput(ModelOutput):
    """Output of :class:`SimCSEForPreTraining`.

    Args:
        loss: InfoNCE loss over this process' anchors, scalar.
        embeddings: ``(B, S, H)`` sentence embeddings (what :class:`SimCSEModel` returns, before the training MLP)
            of the ``S`` sentences of each example (``S = 2`` dropout views when unsupervised).
    """

    loss: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


class SimCSEPreTrainedModel(TextEncoderPreTrainedModel):
    """Base class: config class and the initialisation of the MLP (the encoder initialises itself)."""

    config_class = SimCSEConfig
    config: SimCSEConfig
    base_model_prefix = "simcse"

    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config.encoder, "initializer_range", None) or 0.02
        if isinstance(module, SimCSEMLP):
            init.normal_(module.dense.weight, mean=0.0, std=std)
            init.zeros_(module.dense.bias)


class SimCSEModel(TextEncoderModel, SimCSEPreTrainedModel):
    """The sentence encoder (what ``AutoModel`` loads from a SimCSE checkpoint): token ids in, ``pooler_output`` the
    sentence embedding (``config.pooler_type``, without the training-only MLP)."""

    _keys_to_ignore_on_load_unexpected = [r"^mlp\."]

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The sentence embeddings ``(B, H)`` of ``config.pooler_type`` (:func:`pool_sentences`)."""
        return pool_sentences(hidden, attention_mask, self.config.pooler_type)


class SimCSEForPreTraining(SimCSEPreTrainedModel):
    """The sentence encoder, the ``cls`` MLP and the InfoNCE loss of SimCSE (Gao et al., 2021).

    Inputs are ``(B, L)`` sentences (unsupervised: each is encoded twice, in one forward pass of the doubled batch)
    or ``(B, S, L)`` with ``S = 2`` (sentence, positive) or ``S = 3`` (sentence, positive, hard negative).

    In training, with ``config.gradient_cache_chunk_size`` set below ``B``, the sentences are encoded in chunks of
    that many examples with the gradient cache (:mod:`hf_ssl.gradient_cache`): the loss and gradients of the whole
    batch with the activations of one chunk at a time, each chunk's dropout drawn once and replayed.
    """

    def __init__(self, config: SimCSEConfig):
        super().__init__(config)
        self.simcse = SimCSEModel(config)
        self.mlp = SimCSEMLP(config.encoder.hidden_size) if config.pooler_type == "cls" else None
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SimCSEForPreTrainingOutput:
        """Args:
            input_ids: ``(B, L)`` sentences (unsupervised) or ``(B, S, L)``, ``S`` in {2, 3}: sentence, positive
                and optionally hard negative of each example; ``B >= 2`` (the others are the negatives).
            attention_mask: same shape as ``input_ids``, 1 for tokens, 0 for padding.
            token_type_ids: same shape, for the families that have segments.
            labels: ``(B,)`` similarity scores of an evaluation batch of pairs; not used by the loss (they reach
                the Trainer's ``compute_metrics`` with the ``embeddings``).

        Returns:
            :class:`SimCSEForPreTrainingOutput`.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        flat, batch, views = flatten_views(inputs)
        if batch < 2:
            raise ValueError(f"SimCSE needs at least 2 examples per batch (the others are the negatives), got {batch}")
        chunk_size = self.config.gradient_cache_chunk_size
        encode = functools.partial(self.encode_views, views=views)
        if uses_gradient_cache(self, chunk_size, batch):  # same loss and gradients, one chunk's activations
            by_view = {name: value.unflatten(0, (views, batch)) for name, value in flat.items()}  # (S, B, L)
            chunks = [
                {name: value[:, rows].flatten(0, 1) for name, value in by_view.items()}  # (S * b, L), view-major
                for rows in chunk_slices(batch, chunk_size)
            ]
            z, embeddings = encode_in_chunks(encode, chunks, self)
        else:
            z, embeddings = encode(flat)  # (B, S, H) each
        loss = self.contrastive_loss(z, gather_distributed=self.config.gather_distributed)
        return SimCSEForPreTrainingOutput(loss=loss, embeddings=embeddings)

    def health(self, batch: dict[str, torch.Tensor]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the sentence embeddings and their positives (two
        dropout views, so the encoder runs in train mode here, when unsupervised; the given positives otherwise) and
        the InfoNCE loss of this batch alone (no gathering across processes)."""
        flat, _, views = flatten_views(
            {name: batch.get(name) for name in ("input_ids", "attention_mask", "token_type_ids")}
        )
        training = self.training
        self.train(batch["input_ids"].ndim == 2)  # dropout makes the two views of unsupervised SimCSE
        try:
            z, embeddings = self.encode_views(flat, views)  # (B, S, H) each
        finally:
            self.train(training)
        loss = self.contrastive_loss(z, gather_distributed=False)
        return HealthOutput(embeddings=embeddings[:, 0], positives=embeddings[:, 1], loss=loss)

    def contrastive_loss(self, z: torch.Tensor, gather_distributed: bool) -> torch.Tensor:
        """The InfoNCE loss (:func:`~hf_ssl.models.simcse.loss.info_nce_loss`) of ``(n, S, H)`` projected sentences:
        each example's sentence, its positive and, with ``S = 3``, its hard negative."""
        return info_nce_loss(
            z[:, 0],
            z[:, 1],
            z[:, 2] if z.shape[1] == 3 else None,
            temperature=self.config.loss_temperature,
            hard_negative_weight=self.config.hard_negative_weight,
            gather_distributed=gather_distributed,
        )

    def encode_views(self, inputs: dict[str, torch.Tensor], views: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``S * n`` sequences ``(S * n, L)``, view-major (the ``S`` sentences of ``n`` examples) -> what the loss
        reads (after the ``cls`` MLP, if any) and the sentence embeddings, ``(n, S, H)`` each."""
        embeddings = self.embed_sentences(inputs)  # (S * n, H)
        projected = self.mlp(embeddings) if self.mlp is not None else embeddings
        return projected.unflatten(0, (views, -1)).transpose(0, 1), embeddings.unflatten(0, (views, -1)).transpose(0, 1)

    def embed_sentences(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sentence embeddings ``(N, H)`` of ``N`` right-padded sequences, encoded in ``config.length_buckets``
        groups of similar length, each trimmed to its own longest sequence.

        A sequence's embedding does not depend on the padding after it, so this gives what one forward pass of the
        whole batch gives (to float rounding; in training, other dropout draws of the same distribution) while the
        encoder skips most of the padding: the batch and its negatives are unchanged, unlike length-grouped
        sampling. Left-padded inputs, or ``length_buckets=1``, go through in one pass.
        """
        mask = inputs.get("attention_mask")
        buckets = min(self.config.length_buckets, len(inputs["input_ids"]))
        if mask is None or buckets <= 1:
            return self.simcse(**inputs).pooler_output
        lengths = mask.sum(dim=1)  # (N,)
        if not bool((mask.cumprod(dim=1).sum(dim=1) == lengths).all()):  # padding is not all at the end
            return self.simcse(**inputs).pooler_output
        order = torch.argsort(lengths, descending=True)  # (N,) longest first
        groups = order.tensor_split(buckets)
        widths = lengths[torch.stack([group[0] for group in groups])].clamp(min=1).tolist()  # one host sync
        pieces = [
            self.simcse(**{name: value[group, :width] for name, value in inputs.items()}).pooler_output
            for group, width in zip(groups, widths, strict=True)
        ]
        return torch.cat(pieces)[torch.argsort(order)]  # (N, H) back in input order

    def load_encoder(self, name_or_path: str, config: PretrainedConfig) -> None:
        """Start the encoder from a checkpoint's weights: any encoder family's checkpoint or Hub id (its pooler,
        if any, is ignored), or an hf_ssl checkpoint with an ``encoder`` (an MLM run, its export, a SimCSE run).

        Args:
            name_or_path: the checkpoint folder or Hub id.
            config: its config, as read from ``name_or_path``.

        Raises:
            UsageError: the weights do not fit ``config.encoder`` (missing or unexpected weights).
        """
        try:
            source = AutoModel.from_pretrained(name_or_path, config=config)
        except (OSError, ValueError) as error:
            raise UsageError(f"--model_name_or_path {name_or_path}: cannot load its weights: {error}") from error
        if inner_encoder_config(source.config) is not source.config:  # an hf_ssl composite: its encoder module
            source = source.encoder
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("pooler.")}
        missing, unexpected = self.simcse.encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UsageError(
                f"--model_name_or_path {name_or_path}: its weights do not fit the encoder config: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )
