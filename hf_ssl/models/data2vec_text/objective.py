"""data2vec text as an objective: the masked-text data MLM uses too (:mod:`hf_ssl.data.masked_text`: text tokenised
and packed, BERT's masks drawn per batch by the collator), the momentum teacher's schedule, evaluation of the student
encoder's pooled features, and the export of the student encoder as its family's own checkpoint (a plain
``Data2VecTextModel`` folder by default) with the tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from datasets import Dataset, IterableDataset
from transformers import PretrainedConfig

from hf_ssl.backbones.transformers import max_sequence_length, training_length
from hf_ssl.data.masked_text import MaskedTextDataArguments, prepare_masked_text
from hf_ssl.data.text import DEFAULT_TEXT_DATASET, load_default_text, use_saved_tokenizer
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.export import ExportContext, Exporter, load_pretraining_model
from hf_ssl.export.model_card import write_card
from hf_ssl.export.transformers import TRANSFORMERS_FILES, load_tokenizer_if_any, save_transformers_model
from hf_ssl.models.data2vec_text.configuration_data2vec_text import Data2VecTextPretrainingConfig
from hf_ssl.models.data2vec_text.modeling_data2vec_text import (
    Data2VecTextForPreTraining,
    Data2VecTextPretrainingModel,
)
from hf_ssl.objectives import NEW_MODEL, EncoderObjective, PreparedData, RunContext
from hf_ssl.teachers import MomentumTeacherCallback

logger = logging.getLogger(__name__)


def prepare_data(
    ds: Dataset | IterableDataset,
    config: Data2VecTextPretrainingConfig,
    args: MaskedTextDataArguments,
    run: RunContext = NEW_MODEL,
) -> PreparedData:
    """The masked-text preparation MLM uses (:func:`~hf_ssl.data.masked_text.prepare_masked_text`): rows checked, a
    tokenizer found or trained (the encoder's vocabulary sized to it), lines tokenised and packed, BERT's masks drawn
    per batch by the collator from the config's ``mlm_probability`` / ``mask_replace_prob`` / ``random_replace_prob``
    (the student reads the masked ids; the teacher the original ones, rebuilt from the labels)."""
    prepared = prepare_masked_text(ds, config, args, run.model_name_or_path)
    return PreparedData(
        dataset=prepared.dataset,
        collator=prepared.collator,
        columns={"text": prepared.column},
        num_skipped=prepared.num_skipped,
        processing_class=prepared.tokenizer,
    )


def export(context: ExportContext) -> None:
    """Write the student encoder as its family's own checkpoint (``AutoModel``,
    ``AutoModelForSequenceClassification``; no regression head, no teacher) with the run's tokenizer, and the card."""
    model = load_pretraining_model(context, Data2VecTextForPreTraining)
    tokenizer = load_tokenizer_if_any(context.model_dir, context.config)
    config: Data2VecTextPretrainingConfig = model.config
    encoder = config.encoder
    # read the pretraining crop before saving: the export sets the tokenizer's model_max_length to the encoder's limit
    trained_length = training_length(tokenizer, encoder) if tokenizer is not None else None
    save_transformers_model(model.data2vec_text.encoder, context.output_dir, tokenizer)
    write_card(
        context,
        # data2vec-text encoders are named by their family alone ("data2vec data2vec-text" says it twice)
        model_name=family if (family := encoder.model_type).startswith("data2vec") else f"data2vec {family}",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        tags=["hf_ssl", "self-supervised", "data2vec", encoder.model_type],
        unit="sequences",
        family=encoder.model_type,
        exported_class=type(model.data2vec_text.encoder).__name__,
        has_tokenizer=tokenizer is not None,
        hidden_size=encoder.hidden_size,
        num_layers=getattr(encoder, "num_hidden_layers", None),
        num_heads=getattr(encoder, "num_attention_heads", None),
        vocab_size=encoder.vocab_size,
        max_length=max_sequence_length(encoder),
        training_length=trained_length,
        config=config,
    )


@dataclass(frozen=True)
class Data2VecTextObjective(EncoderObjective):
    """data2vec text: ``--model_name_or_path`` is an encoder checkpoint or Hub id of any ``AutoModel`` family (its
    weights start the student and its teacher), or an ``hf_ssl_data2vec_text`` checkpoint to continue."""

    def starting_backbone(self, source: PretrainedConfig) -> PretrainedConfig | None:
        """Any encoder family's config (not another hf_ssl objective's)."""
        return None if source.model_type.startswith("hf_ssl_") else source

    def load_start(self, model: Data2VecTextForPreTraining, model_name_or_path: str, source: PretrainedConfig) -> None:
        """The encoder's weights, into the student and its teacher."""
        model.load_encoder_checkpoint(model_name_or_path, source)
        logger.info("started the student and teacher encoders from %s", model_name_or_path)


DATA2VEC_TEXT = Data2VecTextObjective(
    name="data2vec_text",
    config_class=Data2VecTextPretrainingConfig,
    model_class=Data2VecTextForPreTraining,
    base_model_class=Data2VecTextPretrainingModel,
    modality="text",
    data_arguments=MaskedTextDataArguments,
    prepare_data=prepare_data,
    features=FeatureSpec(
        "text", description="mean of the student encoder's last hidden states over the non-padding tokens"
    ),
    exporter=Exporter(export, (*TRANSFORMERS_FILES, "README.md")),
    default_dataset=(DEFAULT_TEXT_DATASET, load_default_text),
    callbacks=lambda config: [MomentumTeacherCallback(config.teacher_momentum, config.teacher_momentum_final)],
    summary="data2vec for text: regress a momentum teacher's averaged top layers at masked tokens",
    use_saved_processor=use_saved_tokenizer,
)
