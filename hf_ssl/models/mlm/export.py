"""Export an MLM-pretrained encoder as a standard Hugging Face encoder folder that loads without hf_ssl."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_ssl.export.transformers import save_transformers_model
from hf_ssl.models.mlm.modeling_mlm import MLMForPreTraining

logger = logging.getLogger(__name__)


def save_encoder_export(
    model: MLMForPreTraining,
    tokenizer: PreTrainedTokenizerBase | None,
    output_dir: str | Path,
) -> PreTrainedModel:
    """Write ``output_dir`` in the encoder family's own format: ``config.json`` (the family's ``model_type``),
    ``model.safetensors`` and the tokenizer files.

    Where the family has a masked-LM class and a head mapping (BERT, RoBERTa, DistilBERT; see
    :data:`~hf_ssl.models.mlm.modeling_mlm.MLM_HEAD_LAYOUTS`), the folder is a ``<Family>ForMaskedLM`` checkpoint:
    our head is written under the family's names (BERT ``cls.predictions.*``, RoBERTa ``lm_head.*``, DistilBERT
    ``vocab_transform`` / ``vocab_layer_norm`` / ``vocab_projector``), so ``AutoModelForMaskedLM`` gives our
    predictions, and ``AutoModel`` / ``AutoModelForSequenceClassification`` load the encoder as from any checkpoint
    of the family (the pooler and classifier, which MLM does not train, are initialised by transformers). Other
    families get the bare encoder (``AutoModel``).

    Args:
        model: the pretrained model.
        tokenizer: the tokenizer it was trained with (``None`` writes no tokenizer files).
        output_dir: the folder to write (created if needed).

    Returns:
        The model written: the family's masked-LM model, or the bare encoder.
    """
    family: PreTrainedModel | None = model.to_masked_lm()
    if family is None:
        logger.info("%s has no masked-LM mapping: exporting the bare encoder", model.config.encoder.model_type)
        family = model.mlm.encoder
    # safetensors, the family's config.json and architectures, the tokenizer (hf_ssl.export.transformers)
    save_transformers_model(family, Path(output_dir), tokenizer)
    return family
