"""SimCSE configuration: a Hugging Face text encoder (as a sub-config) plus the pooling and loss hyperparameters."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from hf_ssl.backbones.transformers import ENCODER_SUB_CONFIGS, check_text_encoder, resolve_encoder_config
from hf_ssl.errors import UsageError, check_choice, check_int, check_range

POOLER_TYPES = ("cls", "cls_before_pooler", "mean")


class SimCSEConfig(PretrainedConfig):
    """Configuration of :class:`SimCSEModel` / :class:`SimCSEForPreTraining`: contrastive sentence embeddings as in
    SimCSE (Gao et al., 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", arXiv:2104.08821).

    Unsupervised (a batch of sentences): each sentence is encoded twice in one forward pass of the doubled batch, the
    encoder's dropout being the only noise, and the two embeddings are each other's positive. Supervised (batches of
    (sentence, positive[, hard negative])): the positive is a paired sentence (e.g. an entailment), the hard
    negative a contradiction. The loss is InfoNCE over cosine similarities with in-batch negatives
    (:func:`hf_ssl.models.simcse.loss.info_nce_loss`).

    A composite config like transformers' own (``LlavaConfig.text_config``) and :class:`~hf_ssl.MLMConfig`:
    ``encoder`` is a full config of any encoder family ``AutoModel`` builds (BERT, RoBERTa, DistilBERT, ...).

    Args:
        encoder: the encoder's config: a dict carrying its ``model_type`` (a dict without one means BERT), a
            ``PretrainedConfig``, or a model name/path whose config is read (an hf_ssl MLM checkpoint gives its
            encoder); only the config: ``--model_name_or_path`` starts from the weights too. ``None`` gives a small
            BERT (hidden 256, 4 layers, 4 heads, intermediate 1024, vocabulary 30,522). Its dropout
            (``hidden_dropout_prob``, 0.1 in BERT) is the augmentation of unsupervised SimCSE.
        pooler_type: the sentence embedding: ``"cls"``, the first token's state, trained through an MLP (dense +
            tanh) that is used for the loss only and dropped afterwards (the paper's unsupervised setting);
            ``"cls_before_pooler"``, the first token's state with no MLP; ``"mean"``, the mean of the non-padding
            token states.
        loss_temperature: tau of the InfoNCE loss over cosine similarities (0.05 in the paper).
        hard_negative_weight: alpha >= 0, the weight of an anchor's own hard negative in the loss' denominator
            (Gao et al., 2021, eq. 5; 1 in the paper); only used with a hard-negative column.
        gather_distributed: use the other processes' sentences as negatives when training on several processes.
        length_buckets: encode the sequences of a training batch in this many groups of similar length, each padded
            only to its own longest (:meth:`SimCSEForPreTraining.embed_sentences`): the same batch and loss with
            less padding to compute; 1 encodes the batch in one pass.
        starting_encoder: provenance: the checkpoint or Hub id the encoder weights started from (set by
            ``--model_name_or_path``; ``None``: random initialisation). Evaluation compares with it.
        gradient_cache_chunk_size: in training, encode the batch in chunks of this many examples (all their
            sentences) with the gradient cache of Gao et al. (2021, arXiv:2101.06983): the InfoNCE loss and
            gradients of the whole batch, with the activations of one chunk in memory, for the cost of a second
            forward pass (each chunk's dropout is replayed). ``None``: one pass.
    """

    model_type = "hf_ssl_simcse"
    sub_configs_defaults = ENCODER_SUB_CONFIGS

    def __init__(
        self,
        encoder: str | dict[str, Any] | PretrainedConfig | None = None,
        pooler_type: str = "cls",
        loss_temperature: float = 0.05,
        hard_negative_weight: float = 1.0,
        gather_distributed: bool = True,
        length_buckets: int = 4,
        starting_encoder: str | None = None,
        gradient_cache_chunk_size: int | None = None,
        **kwargs: Any,
    ):
        self.encoder = resolve_encoder_config(encoder)
        self.pooler_type = pooler_type
        self.loss_temperature = loss_temperature
        self.hard_negative_weight = hard_negative_weight
        self.gather_distributed = gather_distributed
        self.length_buckets = length_buckets
        self.starting_encoder = starting_encoder
        self.gradient_cache_chunk_size = gradient_cache_chunk_size
        super().__init__(**kwargs)  # builds self.encoder into its config class (transformers' SubConfigSpec)
        self._validate()

    def _validate(self) -> None:
        check_choice("pooler_type", self.pooler_type, POOLER_TYPES)
        check_range("loss_temperature", self.loss_temperature, 0.0, low_inclusive=False)
        check_range("hard_negative_weight", self.hard_negative_weight, 0.0)
        check_choice("gather_distributed", self.gather_distributed, (True, False))
        check_int("length_buckets", self.length_buckets, 1)
        if self.gradient_cache_chunk_size is not None:
            check_int("gradient_cache_chunk_size", self.gradient_cache_chunk_size, 1)
        if self.starting_encoder is not None and not isinstance(self.starting_encoder, str):
            raise UsageError(f"starting_encoder must be a model name or path, got {self.starting_encoder!r}")
        check_text_encoder(self.encoder, "SimCSE's sentence encoding")
