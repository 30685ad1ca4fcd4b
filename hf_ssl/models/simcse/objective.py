"""SimCSE as an objective: its data (sentences, or sentence / positive / hard-negative columns, tokenised once), how
it starts from an encoder checkpoint (an MLM run, its export, any Hub encoder), its STS evaluation (during training
through the Trainer's evaluation hooks; ``hf-ssl evaluate`` on (sentence1, sentence2, score) data) and its export
(a sentence-transformers folder that is also a plain transformers encoder folder)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from hf_ssl.backbones.transformers import (
    check_sequence_length,
    fit_encoder_to_tokenizer,
    inner_encoder_config,
    max_sequence_length,
    training_length,
)
from hf_ssl.data.text import (
    DEFAULT_TEXT_DATASET,
    TOKENIZE_BATCH_SIZE,
    TextDataArguments,
    load_default_text,
    prepare_text_rows,
    resolve_tokenizer,
    tokenize_dataset,
    use_saved_tokenizer,
)
from hf_ssl.errors import UsageError, check_range
from hf_ssl.evaluation.features import FeatureSpec
from hf_ssl.evaluation.sts import correlations, load_sts
from hf_ssl.evaluation.tasks.sts import max_length_for
from hf_ssl.export import ExportContext, Exporter, load_pretraining_model
from hf_ssl.export.model_card import write_card
from hf_ssl.export.sentence_transformers import (
    SENTENCE_TRANSFORMERS_FILES,
    TRANSFORMERS_FILES,
    save_sentence_transformer,
)
from hf_ssl.export.transformers import load_tokenizer_if_any
from hf_ssl.models.simcse.collator import SimCSECollator
from hf_ssl.models.simcse.configuration_simcse import SimCSEConfig
from hf_ssl.models.simcse.modeling_simcse import SimCSEForPreTraining, SimCSEModel
from hf_ssl.objectives import NEW_MODEL, EncoderObjective, PreparedData, RunContext

logger = logging.getLogger(__name__)

STS_METRIC = "sts_spearman"
"""The key of the dev-set Spearman correlation in the Trainer's evaluation metrics (``--metric_for_best_model``)."""


@dataclass
class SimCSEDataArguments(TextDataArguments):
    """The shared text flags (:class:`~hf_ssl.data.text.TextDataArguments`; one sentence per row, 32 tokens as in
    the paper) and SimCSE's own: the supervised columns, and the STS data evaluated during training."""

    max_seq_length: int = field(
        default=32, metadata={"help": "Tokens per sentence, special tokens included (longer ones are cut)."}
    )
    packing: bool = field(default=False, metadata={"help": "Must stay false: SimCSE encodes one sentence per row."})
    positive_column: str | None = field(
        default=None,
        metadata={"help": "Supervised SimCSE: the column of each sentence's positive (e.g. an entailment)."},
    )
    hard_negative_column: str | None = field(
        default=None,
        metadata={"help": "Supervised SimCSE: the column of each sentence's hard negative (e.g. a contradiction)."},
    )
    score_column: str | None = field(
        default=None, metadata={"help": "With --min_positive_score: the similarity score column (default 'score')."}
    )
    min_positive_score: float | None = field(
        default=None,
        metadata={
            "help": "Supervised SimCSE from scored pairs (sentence1, sentence2, score; e.g. STS-B train): pairs "
            "scored at least this (4 on STS-B's 0-5 scale) become (sentence, positive) pairs."
        },
    )
    sts_eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "STS pairs (sentence1, sentence2, score) evaluated during training (--eval_strategy steps "
            "--eval_steps N; keep the best with --metric_for_best_model sts_spearman --load_best_model_at_end), "
            "e.g. ../shared/data/text/stsb."
        },
    )
    sts_eval_split: str = field(default="dev", metadata={"help": "The split of --sts_eval_dataset."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.packing:
            raise UsageError("--packing true: SimCSE encodes one sentence per row; leave --packing false")
        if self.min_positive_score is not None:
            check_range("--min_positive_score", self.min_positive_score)
        if self.hard_negative_column and not (self.positive_column or self.min_positive_score is not None):
            raise UsageError("--hard_negative_column needs --positive_column (supervised SimCSE)")

    @property
    def supervised(self) -> bool:
        return self.positive_column is not None or self.min_positive_score is not None


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def prepare_pairs(ds: Dataset | IterableDataset, args: SimCSEDataArguments) -> tuple[Dataset, list[str], int]:
    """The rows of supervised SimCSE: (sentence, positive[, hard negative]) columns, all non-empty strings.

    With ``--min_positive_score``, scored pairs (default columns ``sentence1``, ``sentence2``, ``score``) scored at
    least that are the (sentence, positive) pairs.

    Returns:
        ``(dataset, [sentence column, positive column(, hard negative column)], rows dropped)``.

    Raises:
        UsageError: a streamed dataset, a missing column (the message lists the columns), no rows left.
    """
    if not isinstance(ds, Dataset):
        raise UsageError("SimCSE needs a map-style dataset: --streaming is not supported for it yet")
    scored = args.min_positive_score is not None
    roles = [
        args.text_column or ("sentence1" if scored else None),
        args.positive_column or ("sentence2" if scored else None),
    ]
    if roles[0] is None:
        from hf_ssl.data.loading import find_column

        roles[0] = find_column(ds, "text")
    if args.hard_negative_column:
        roles.append(args.hard_negative_column)
    needed = roles + ([args.score_column or "score"] if scored else [])
    missing = [column for column in needed if column not in ds.column_names]
    if missing:
        raise UsageError(f"column(s) {missing} not found; the data has columns {ds.column_names}")
    before = len(ds)
    if scored:
        score_column = args.score_column or "score"
        threshold = args.min_positive_score
        ds = ds.filter(lambda batch: [float(s) >= threshold for s in batch[score_column]], batched=True)
        logger.info("%d of %d pairs are scored >= %g: the positives", len(ds), before, threshold)
        before = len(ds)
    ds = ds.select_columns(roles).filter(
        lambda batch: [
            all(isinstance(batch[c][i], str) and batch[c][i].strip() for c in roles)
            for i in range(len(batch[roles[0]]))
        ],
        batched=True,
    )
    dropped = before - len(ds)
    if dropped:
        logger.info("dropped %d rows with an empty or missing sentence in %s", dropped, roles)
    if len(ds) == 0:
        raise UsageError(f"no rows with text in every one of {roles}: nothing to train on")
    return ds, roles, dropped


def tokenize_groups(
    ds: Dataset,
    tokenizer: Any,
    columns: list[str],
    max_length: int,
    num_proc: int | None = None,
    label_column: str | None = None,
) -> Dataset:
    """Tokenise ``len(columns)`` sentences per row into nested ``input_ids`` (and ``attention_mask``,
    ``token_type_ids`` if the tokenizer uses them), each sentence truncated to ``max_length`` tokens; a
    ``label_column`` is kept as ``labels`` (float)."""
    with_types = "token_type_ids" in tokenizer.model_input_names
    keys = ("input_ids", "attention_mask") + (("token_type_ids",) if with_types else ())

    def encode(batch: dict[str, list]) -> dict[str, list]:
        encoded = [tokenizer(batch[column], truncation=True, max_length=max_length) for column in columns]
        out = {key: [list(group) for group in zip(*(e[key] for e in encoded), strict=True)] for key in keys}
        if label_column is not None:
            out["labels"] = [float(value) for value in batch[label_column]]
        return out

    return ds.map(
        encode,
        batched=True,
        batch_size=TOKENIZE_BATCH_SIZE,
        num_proc=num_proc,
        remove_columns=ds.column_names,
        desc=f"Tokenising {len(columns)} sentences per row (truncated to {max_length} tokens)",
    )


def sts_compute_metrics(eval_prediction: Any) -> dict[str, float]:
    """The Trainer's ``compute_metrics`` for STS pairs: Spearman and Pearson correlation of the cosine similarity
    of each pair's embeddings (``(N, 2, H)`` predictions) with its score (``(N,)`` labels), and ``N``."""
    embeddings = torch.as_tensor(np.asarray(eval_prediction.predictions), dtype=torch.float64)
    scores = torch.as_tensor(np.asarray(eval_prediction.label_ids), dtype=torch.float64)
    similarity = torch.nn.functional.cosine_similarity(embeddings[:, 0], embeddings[:, 1], dim=-1)
    measured = correlations(similarity, scores)
    # the number of pairs scored: fewer than the dataset's if the evaluation loader dropped a last partial batch
    return {STS_METRIC: measured["spearman"], "sts_pearson": measured["pearson"], "sts_num_pairs": float(len(scores))}


def dropout_rates(encoder_config: PretrainedConfig) -> dict[str, float]:
    """The encoder's dropout probabilities by config field (``hidden_dropout_prob``, ``attention_dropout``, ...; a
    classifier's dropout, unused by the encoder, left out)."""
    return {
        name: value
        for name, value in encoder_config.to_dict().items()
        if "dropout" in name
        and "classif" not in name
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


def check_dropout_noise(config: SimCSEConfig) -> None:
    """Unsupervised SimCSE's only noise is the encoder's dropout: refuse an encoder whose dropout rates are all 0
    (e.g. one pretrained without dropout), whose two views of a sentence would be identical and the loss trivially 0.

    Raises:
        UsageError: naming the rates and the flag that sets them.
    """
    rates = dropout_rates(config.encoder)
    if rates and not any(rates.values()):
        fix = json.dumps(dict.fromkeys(rates, 0.1))
        raise UsageError(
            f"unsupervised SimCSE uses the encoder's dropout as its only noise, but its dropout rates are all 0 "
            f"({', '.join(f'{name}={value}' for name, value in rates.items())}): raise them in --encoder (0.1 in the "
            f"paper; with --model_name_or_path, --encoder '{fix}' changes just these)"
        )


def prepare_data(
    ds: Dataset | IterableDataset, config: SimCSEConfig, args: SimCSEDataArguments, run: RunContext = NEW_MODEL
) -> PreparedData:
    """Sentences (unsupervised) or sentence groups (supervised) checked, cleaned and tokenised once with
    ``datasets.map``; a tokenizer found or trained as for every text objective (the checkpoint's one when the run
    starts from ``run.model_name_or_path``), its ``model_max_length`` set to ``--max_seq_length`` (what the export's
    sentence-transformers model truncates to); STS evaluation pairs when ``--sts_eval_dataset`` is given."""
    checkpoint = run.model_name_or_path
    if args.supervised:
        ds, columns, skipped = prepare_pairs(ds, args)
        tokenizer, source = resolve_tokenizer(args, ds, columns[0], checkpoint)
    else:
        check_dropout_noise(config)  # before any row is read
        ds, column, skipped = prepare_text_rows(ds, args)
        columns = [column]
        tokenizer, source = resolve_tokenizer(args, ds, column, checkpoint)
    logger.info("tokenizer: %s (%d tokens)", source, len(tokenizer))
    fit_encoder_to_tokenizer(config, tokenizer, from_checkpoint=checkpoint is not None)
    check_sequence_length(config, args.max_seq_length)
    tokenizer.model_max_length = args.max_seq_length
    if args.supervised:
        dataset = tokenize_groups(ds, tokenizer, columns, args.max_seq_length, args.preprocessing_num_workers)
    else:
        dataset = tokenize_dataset(  # with a "length" column: --train_sampling_strategy group_by_length works
            ds, tokenizer, columns[0], args.max_seq_length, mode="line", num_proc=args.preprocessing_num_workers
        )
    roles = ("sentence", "positive", "hard_negative")
    prepared = PreparedData(
        dataset=dataset,
        collator=SimCSECollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        columns=dict(zip(roles, columns, strict=False)) if args.supervised else {"text": columns[0]},
        num_skipped=skipped,
        processing_class=tokenizer,
    )
    if args.sts_eval_dataset:
        pairs = load_sts(args.sts_eval_dataset, args.sts_eval_split)
        prepared.eval_dataset = tokenize_groups(
            pairs, tokenizer, ["sentence1", "sentence2"], max_length_for(config), label_column="score"
        )
        prepared.compute_metrics = sts_compute_metrics
        logger.info("STS evaluation during training: %d pairs of %s", len(pairs), args.sts_eval_dataset)
    return prepared


# --------------------------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------------------------


def family_encoder(model: SimCSEForPreTraining) -> PreTrainedModel:
    """The encoder as a model of its own family. Where the family has BERT's pooler (dense + tanh, the shape of
    SimCSE's MLP), the trained MLP becomes that pooler, as the authors' ``simcse_to_huggingface.py`` does, so
    ``AutoModel`` loads every weight and ``pooler_output`` is the MLP's output; otherwise the bare encoder."""
    encoder = model.simcse.encoder
    if model.mlp is None:
        return encoder
    family = AutoModel.from_config(model.config.encoder)
    state = dict(encoder.state_dict())
    state["pooler.dense.weight"] = model.mlp.dense.weight
    state["pooler.dense.bias"] = model.mlp.dense.bias
    if set(state) != set(family.state_dict()) or any(family.state_dict()[k].shape != v.shape for k, v in state.items()):
        return encoder
    family.load_state_dict(state)
    return family.eval()


def export(context: ExportContext) -> None:
    """Write the sentence encoder as a sentence-transformers folder (Transformer + Pooling; see
    :func:`~hf_ssl.export.sentence_transformers.save_sentence_transformer`), which is also the encoder family's own
    ``AutoModel`` folder, and the model card."""
    model = load_pretraining_model(context, SimCSEForPreTraining)
    tokenizer = load_tokenizer_if_any(context.model_dir, context.config)
    if tokenizer is None:
        raise UsageError(f"{context.model_dir}: no tokenizer saved with the checkpoint; a sentence encoder needs one")
    config: SimCSEConfig = model.config
    encoder_config = config.encoder
    # sentences are read whole, up to the encoder's own limit (as sentence-transformers sets it for a plain encoder),
    # not cut to the training crop the checkpoint's tokenizer records (prepare_data sets it to --max_seq_length)
    trained_length = training_length(tokenizer, encoder_config)
    max_seq_length = max_sequence_length(encoder_config) or 512
    pooling = "mean" if config.pooler_type == "mean" else "cls"
    family = family_encoder(model)
    save_sentence_transformer(family, tokenizer, context.output_dir, pooling=pooling, max_seq_length=max_seq_length)
    write_card(
        context,
        model_name=f"SimCSE {encoder_config.model_type}",
        library_name="sentence-transformers",
        pipeline_tag="sentence-similarity",
        tags=["hf_ssl", "self-supervised", "simcse", "sentence-transformers", "sentence-similarity"],
        unit="sentences",
        family=encoder_config.model_type,
        exported_class=type(family).__name__,
        has_pooler_mlp=family is not model.simcse.encoder,
        hidden_size=encoder_config.hidden_size,
        num_layers=getattr(encoder_config, "num_hidden_layers", None) or getattr(encoder_config, "n_layers", None),
        max_seq_length=max_seq_length,
        training_length=trained_length,
        pooling=pooling,
        supervised=bool(context.run_info and "positive" in (context.run_info.columns or {})),
        config=config,
    )


# --------------------------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimCSEObjective(EncoderObjective):
    """SimCSE: ``--model_name_or_path`` is an encoder checkpoint or Hub id of any ``AutoModel`` family, an hf_ssl
    MLM run (or its export) whose encoder starts SimCSE, or an ``hf_ssl_simcse`` checkpoint to continue."""

    def starting_backbone(self, source: PretrainedConfig) -> PretrainedConfig | None:
        """Any encoder family's config, or the encoder of another hf_ssl text objective's (an MLM run)."""
        encoder = inner_encoder_config(source)
        return None if encoder is source and source.model_type.startswith("hf_ssl_") else encoder

    def start_values(self, model_name_or_path: str) -> dict[str, Any]:
        """The provenance, ``starting_encoder`` (a folder as an absolute path), which evaluation compares with."""
        path = os.path.abspath(model_name_or_path) if os.path.isdir(model_name_or_path) else model_name_or_path
        return {"starting_encoder": path}

    def load_start(self, model: SimCSEForPreTraining, model_name_or_path: str, source: PretrainedConfig) -> None:
        """The encoder's weights (the MLP, if any, is new)."""
        model.load_encoder(model_name_or_path, source)
        logger.info("started the encoder from %s", model_name_or_path)


SIMCSE = SimCSEObjective(
    name="simcse",
    config_class=SimCSEConfig,
    model_class=SimCSEForPreTraining,
    base_model_class=SimCSEModel,
    modality="text",
    data_arguments=SimCSEDataArguments,
    prepare_data=prepare_data,
    features=FeatureSpec("text", description="SimCSE sentence embedding (pooler_output: the pooler_type's pooling)"),
    exporter=Exporter(export, (*TRANSFORMERS_FILES, *SENTENCE_TRANSFORMERS_FILES, "README.md")),
    default_dataset=(DEFAULT_TEXT_DATASET, load_default_text),
    min_batch_size=2,
    negatives_from_batch=True,
    summary="contrastive sentence embeddings (SimCSE: dropout views or labelled pairs), exported for "
    "sentence-transformers",
    use_saved_processor=use_saved_tokenizer,
)
