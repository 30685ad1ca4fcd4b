"""MLM configuration: a Hugging Face text encoder (as a sub-config) plus the masking hyperparameters."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from hf_ssl.backbones.transformers import ENCODER_SUB_CONFIGS, check_text_encoder, resolve_encoder_config
from hf_ssl.errors import UsageError, check_choice, check_range


class MLMConfig(PretrainedConfig):
    """Configuration of :class:`MLMModel` / :class:`MLMForPreTraining`: masked language modelling as in BERT
    (Devlin et al., 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
    arXiv:1810.04805, section 3.1 "Task #1: Masked LM").

    A composite config in the manner of transformers' own (``LlavaConfig.text_config``): ``encoder`` is a full
    config of any encoder family ``AutoModel`` builds (BERT, RoBERTa, DistilBERT, ...), saved inside this config
    with its ``model_type`` so that ``save_pretrained`` / ``from_pretrained`` rebuild it exactly.

    Args:
        encoder: the encoder's config: a dict carrying its ``model_type`` (``{"model_type": "roberta", ...}``; a dict
            without one means BERT), a ``PretrainedConfig``, or a model name/path whose config is read (only the
            config: use :meth:`MLMForPreTraining.from_encoder` to start from its weights too). ``None`` gives a small
            BERT (hidden 256, 4 layers, 4 heads, intermediate 1024, vocabulary 30,522).
        mlm_probability: fraction of the (non-special) tokens selected for prediction, 0.15 in BERT.
        mask_replace_prob: of the selected tokens, the fraction replaced by the mask token (0.8 in BERT).
        random_replace_prob: of the selected tokens, the fraction replaced by a random token (0.1 in BERT); the
            remaining ``1 - mask_replace_prob - random_replace_prob`` keep their token.
        whole_word_masking: select whole words (all their sub-word pieces together) instead of single tokens, as in
            the later BERT release ("Whole Word Masking" models, google-research/bert README).
        sparse_prediction: run the vocabulary projection only on the positions that carry a label (``labels !=
            -100``), which gives the same loss and gradients as projecting every position (BERT's reference code
            gathers the masked positions too: ``gather_indexes`` in google-research/bert ``run_pretraining.py``).
            ``False`` projects every position (then ``logits`` has shape ``(B, L, V)``).
    """

    model_type = "hf_ssl_mlm"
    sub_configs_defaults = ENCODER_SUB_CONFIGS

    def __init__(
        self,
        encoder: str | dict[str, Any] | PretrainedConfig | None = None,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        whole_word_masking: bool = False,
        sparse_prediction: bool = True,
        **kwargs: Any,
    ):
        self.encoder = resolve_encoder_config(encoder)
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word_masking = whole_word_masking
        self.sparse_prediction = sparse_prediction
        super().__init__(**kwargs)  # builds self.encoder into its config class (transformers' SubConfigSpec)
        self._validate()

    def _validate(self) -> None:
        check_range("mlm_probability", self.mlm_probability, 0.0, 1.0, low_inclusive=False)
        check_range("mask_replace_prob", self.mask_replace_prob, 0.0, 1.0)
        check_range("random_replace_prob", self.random_replace_prob, 0.0, 1.0)
        if self.mask_replace_prob + self.random_replace_prob > 1.0 + 1e-9:
            raise UsageError(
                "mask_replace_prob + random_replace_prob must be <= 1 (the rest keep their token), got "
                f"{self.mask_replace_prob} + {self.random_replace_prob}"
            )
        check_choice("whole_word_masking", self.whole_word_masking, (True, False))
        check_choice("sparse_prediction", self.sparse_prediction, (True, False))
        check_text_encoder(self.encoder, "masked language modelling")
