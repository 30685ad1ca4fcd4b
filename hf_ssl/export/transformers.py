"""transformers' own format: a model folder (``config.json`` of a built-in ``model_type``, ``model.safetensors``) and
its tokenizer files, which ``AutoModel`` / ``AutoModelFor...`` / ``AutoTokenizer`` / ``pipeline`` load without
``hf_ssl``.

Knows no objective: an exporter hands over a model of a family transformers ships (e.g. the ``BertForMaskedLM`` an
MLM checkpoint maps onto) and the checkpoint's tokenizer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from hf_ssl.backbones.transformers import max_sequence_length
from hf_ssl.data.text import TOKENIZER_FILES

logger = logging.getLogger(__name__)

TRANSFORMERS_MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")
TRANSFORMERS_FILES = TRANSFORMERS_MODEL_FILES + TOKENIZER_FILES
"""Every file :func:`save_transformers_model` may write (an exporter's ``files``, with ``README.md``)."""


def save_transformers_model(
    model: PreTrainedModel,
    output_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write ``model`` (and ``tokenizer``) as a plain transformers folder: safetensors weights, the family's
    ``config.json`` with its ``architectures``, and the tokenizer files.

    Args:
        model: a model of a family transformers ships (its ``config.model_type`` is a built-in one), e.g.
            ``BertForMaskedLM``: ``AutoModel`` then loads its base model and ``AutoModelForSequenceClassification``
            adds a fresh classifier on top.
        output_dir: the folder (created if needed).
        tokenizer: written beside the weights; ``None`` writes none (a warning: users then need the right one). Its
            ``model_max_length`` is set to what the model reads (its positions, less RoBERTa-style offsets), so
            ``pipeline`` and ``truncation=True`` cut at the model's limit, not at a training crop the tokenizer
            recorded (hf_ssl's trained tokenizers record ``--max_seq_length``).

    Returns:
        The folder.

    Raises:
        ValueError: a model whose ``model_type`` transformers does not know (it would need custom code to load), or
            whose config points at custom code (``auto_map``).
    """
    config = model.config
    if config.model_type not in CONFIG_MAPPING_NAMES:  # built-in families only, not registered ones
        raise ValueError(
            f"{type(model).__name__} has model_type {config.model_type!r}, which transformers alone cannot load; "
            "export a model of a built-in family"
        )
    if getattr(config, "auto_map", None):
        raise ValueError(f"{type(model).__name__}'s config points at custom code (auto_map); export without it")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)  # safetensors by default
    if tokenizer is not None:
        limit = max_sequence_length(config)
        if limit is not None and tokenizer.model_max_length != limit:
            logger.info(
                "exported tokenizer's model_max_length %s -> %d (the model's)", tokenizer.model_max_length, limit
            )
            tokenizer.model_max_length = limit  # pipelines truncate to it: the whole input, not a training crop
        tokenizer.save_pretrained(output_dir)
    else:
        logger.warning("no tokenizer to export with %s: users of %s must bring the right one", type(model), output_dir)
    written = json.loads((output_dir / "config.json").read_text())
    if "hf_ssl" in json.dumps(written):
        raise ValueError(f"{output_dir}/config.json mentions hf_ssl: the export would not load without it")
    unknown = sorted(p.name for p in output_dir.iterdir() if p.name not in TRANSFORMERS_FILES and p.name != "README.md")
    if unknown:
        logger.warning("the export wrote files this writer does not list: %s", ", ".join(unknown))
    return output_dir


def load_tokenizer_if_any(folder: str | Path, config: PretrainedConfig | None = None) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved in ``folder`` (a pretraining checkpoint), or ``None`` when it has none.

    Args:
        folder: the checkpoint folder.
        config: the checkpoint's config when the caller has read it already (else transformers reads it again).
    """
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(folder, config=config)
