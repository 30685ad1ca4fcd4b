"""MLM as an objective: its data (text, tokenised and packed, masked in the collator), how it starts from an encoder
checkpoint, its evaluation (pooled features plus masked-token accuracy and perplexity) and its export (the encoder
family's own ``<Family>ForMaskedLM`` folder with the tokenizer)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, IterableDataset
from transformers import AutoModelForPreTraining, PretrainedConfig

from hf_ssl.backbones.transformers import max_sequence_length, training_length
from hf_ssl.data.masked_text import IGNORE_INDEX, MaskedTextDataArguments, TokenMaskingCollator, prepare_masked_text
from hf_ssl.data.text import DEFAULT_TEXT_DATASET, load_default_text, load_tokenizer, use_saved_tokenizer
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.export import ExportContext, Exporter, load_pretraining_model
from hf_ssl.export.model_card import write_card
from hf_ssl.export.transformers import TRANSFORMERS_FILES, load_tokenizer_if_any
from hf_ssl.models.mlm.configuration_mlm import MLMConfig
from hf_ssl.models.mlm.export import save_encoder_export
from hf_ssl.models.mlm.modeling_mlm import MLMForPreTraining, MLMModel
from hf_ssl.objectives import NEW_MODEL, EncoderObjective, PreparedData, RunContext

logger = logging.getLogger(__name__)

EVAL_MASKING_SEED = 0
EVAL_BATCH_SIZE = 128


MLMDataArguments = MaskedTextDataArguments
"""MLM's data flags: the shared text flags and ``--pad_to_multiple_of``
(:class:`~hf_ssl.data.masked_text.MaskedTextDataArguments`)."""


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def prepare_data(
    ds: Dataset | IterableDataset, config: MLMConfig, args: MLMDataArguments, run: RunContext = NEW_MODEL
) -> PreparedData:
    """The shared masked-text preparation (:func:`~hf_ssl.data.masked_text.prepare_masked_text`): rows checked, a
    tokenizer found or trained (the encoder's vocabulary sized to it), lines tokenised and packed, masks drawn per
    batch by the collator. With ``run.model_name_or_path``, its tokenizer is used unless another is named."""
    prepared = prepare_masked_text(ds, config, args, run.model_name_or_path)
    return PreparedData(
        dataset=prepared.dataset,
        collator=prepared.collator,
        columns={"text": prepared.column},
        num_skipped=prepared.num_skipped,
        processing_class=prepared.tokenizer,
    )


# --------------------------------------------------------------------------------------------------------------------
# Evaluation: masked-token accuracy and perplexity on the evaluated split
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def masked_lm_metrics(model: Any, ds: Dataset, column: str, preprocess: Any) -> dict[str, Any]:
    """Masked-token accuracy and perplexity of the checkpoint's MLM head on the evaluated texts.

    The texts are tokenised by the task's ``preprocess`` (one truncated sequence per text) and masked as in training
    (``config.mlm_probability``, 80/10/10) but per token and from a fixed seed, so two checkpoints are scored on the
    same positions. Perplexity is ``exp`` of the mean cross-entropy over the selected tokens.

    Args:
        model: the backbone evaluation loaded (``AutoModel``: an :class:`~hf_ssl.MLMModel`); the head is
            loaded from ``model.name_or_path``.

    Returns:
        ``{"mlm": {"accuracy", "perplexity", "loss", "num_predicted", "mlm_probability", "seed"}}``, or ``{}`` when
        the checkpoint has no MLM head or no tokenizer.
    """
    path = model.name_or_path
    try:
        head_model = AutoModelForPreTraining.from_pretrained(path)
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError) as error:
        logger.warning("no masked-token metrics: cannot load the MLM head and tokenizer of %s (%s)", path, error)
        return {}
    if not isinstance(head_model, MLMForPreTraining):
        return {}
    device = next(model.parameters()).device
    head_model = head_model.to(device).eval()
    config = head_model.config
    collator = TokenMaskingCollator(
        tokenizer,
        mlm_probability=config.mlm_probability,
        mask_replace_prob=config.mask_replace_prob,
        random_replace_prob=config.random_replace_prob,
        generator=torch.Generator().manual_seed(EVAL_MASKING_SEED),
    )
    total_loss, correct, count = 0.0, 0, 0
    texts = ds[column]
    for start in range(0, len(texts), EVAL_BATCH_SIZE):
        inputs = preprocess(list(texts[start : start + EVAL_BATCH_SIZE]))
        masked, labels = collator.mask_tokens(inputs["input_ids"], inputs["attention_mask"])
        inputs = {**inputs, "input_ids": masked, "labels": labels}
        outputs = head_model(**{key: value.to(device) for key, value in inputs.items()})
        targets = labels[labels != IGNORE_INDEX].to(device)  # the rows of the sparse logits, in order
        logits = outputs.logits if outputs.logits.ndim == 2 else outputs.logits[labels.to(device) != IGNORE_INDEX]
        total_loss += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += int((logits.argmax(dim=-1) == targets).sum())
        count += targets.numel()
    if count == 0:
        return {}
    loss = total_loss / count
    return {
        "mlm": {
            "accuracy": correct / count,
            "perplexity": math.exp(loss),
            "loss": loss,
            "num_predicted": count,
            "mlm_probability": config.mlm_probability,
            "seed": EVAL_MASKING_SEED,
        }
    }


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


def export(context: ExportContext) -> None:
    """Write the encoder as its family's own checkpoint with the run's tokenizer (see
    :func:`~hf_ssl.models.mlm.export.save_encoder_export`) and the model card."""
    model = load_pretraining_model(context, MLMForPreTraining)
    tokenizer = load_tokenizer_if_any(context.model_dir, context.config)
    config: MLMConfig = model.config
    encoder = config.encoder
    trained_length = training_length(tokenizer, encoder) if tokenizer is not None else None
    exported = save_encoder_export(model, tokenizer, context.output_dir)  # the tokenizer then reads it whole
    has_head = exported is not model.mlm.encoder
    write_card(
        context,
        model_name=f"MLM {encoder.model_type}",
        library_name="transformers",
        pipeline_tag="fill-mask" if has_head else "feature-extraction",
        tags=["hf_ssl", "self-supervised", "masked-language-modeling", encoder.model_type],
        unit="sequences",
        family=encoder.model_type,
        exported_class=type(exported).__name__,
        has_head=has_head,
        has_tokenizer=tokenizer is not None,
        mask_token=getattr(tokenizer, "mask_token", None) or "[MASK]",
        hidden_size=encoder.hidden_size,
        num_layers=_first(encoder, "num_hidden_layers", "n_layers"),
        num_heads=_first(encoder, "num_attention_heads", "n_heads"),
        vocab_size=encoder.vocab_size,
        max_positions=getattr(encoder, "max_position_embeddings", None),
        max_length=max_sequence_length(encoder),
        training_length=trained_length,
        config=config,
        mlm_metrics=(context.evaluation or {}).get("mlm"),
    )


def _first(config: PretrainedConfig, *names: str) -> Any:
    return next((getattr(config, name) for name in names if getattr(config, name, None) is not None), None)


# --------------------------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLMObjective(EncoderObjective):
    """MLM: ``--model_name_or_path`` is an encoder checkpoint or Hub id of any ``AutoModel`` family (its weights
    start the encoder, and its MLM head where it has one), or an ``hf_ssl_mlm`` checkpoint to continue."""

    def starting_backbone(self, source: PretrainedConfig) -> PretrainedConfig | None:
        """Any encoder family's config (not another hf_ssl objective's)."""
        return None if source.model_type.startswith("hf_ssl_") else source

    def load_start(self, model: MLMForPreTraining, model_name_or_path: str, source: PretrainedConfig) -> None:
        """The encoder's weights, and the MLM head's where the checkpoint has one."""
        with_head = model.load_encoder_checkpoint(model_name_or_path, source)
        logger.info(
            "started the encoder%s from %s", " and its MLM head" if with_head else " (new MLM head)", model_name_or_path
        )


MLM = MLMObjective(
    name="mlm",
    config_class=MLMConfig,
    model_class=MLMForPreTraining,
    base_model_class=MLMModel,
    modality="text",
    data_arguments=MLMDataArguments,
    prepare_data=prepare_data,
    features=FeatureSpec(
        "text",
        description="mean of the encoder's last hidden states over the non-padding tokens (pooler_output)",
        extra_metrics=masked_lm_metrics,
    ),
    exporter=Exporter(export, (*TRANSFORMERS_FILES, "README.md")),
    default_dataset=(DEFAULT_TEXT_DATASET, load_default_text),
    summary="masked language modelling (BERT's MLM) of any Hugging Face text encoder, exported in its own format",
    use_saved_processor=use_saved_tokenizer,
)
