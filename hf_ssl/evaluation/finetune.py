"""The fine-tuning protocol of ``hf-ssl evaluate``: the backbone trained end to end with a classifier head, next to
the frozen-feature protocols.

An export (or any folder whose architecture transformers' auto classes know) is fine-tuned as its own ecosystem
fine-tunes it, with the classification model of :data:`CLASSIFIERS`: ``AutoModelForImageClassification`` gives
``TimmWrapperForImageClassification`` for our timm exports (the timm model with ``num_classes`` set, its weights read
from the export), ``AutoModelForSequenceClassification`` a BERT-style text classifier,
``AutoModelForAudioClassification`` ``Wav2Vec2ForSequenceClassification``; a ``timm:<architecture>`` model is saved
to a temporary folder as loaded and read back the same way. A checkpoint those classes do not know (a pretraining
run folder, whose model is the objective's) is fine-tuned as evaluation reads it: its backbone, the pooling of its
frozen features and a linear head (:class:`PooledClassifier`); ``hf-ssl export`` it first for its ecosystem's
classifier (evaluation never imports the exporters, which read evaluation results for their model cards).

The plain ``transformers.Trainer`` trains it (AdamW, linear decay after a warm-up) on the batches of the frozen-feature
protocols (the same preprocessing, no augmentation), in a temporary folder that is deleted afterwards, then accuracy
is scored on the evaluated split. The same training from the same architecture at random initialisation is the
baseline: the comparison of SimCLR's transfer-learning table (Chen et al., 2020, arXiv:2002.05709), linear
evaluation and fine-tuning of the pretrained network against the same network trained from random initialisation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.utils import logging as transformers_logging

from hf_ssl.backbones import random_init_backbone
from hf_ssl.backbones.timm import reset_to_timm_init
from hf_ssl.data.collators import preserved_rng
from hf_ssl.errors import UsageError, check_int, check_range
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import FeatureSpec, Pooler, last_layer

logger = logging.getLogger(__name__)

CLASSIFIERS: dict[str, tuple[Any, dict[str, str]]] = {
    "image": (AutoModelForImageClassification, MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES),
    "text": (AutoModelForSequenceClassification, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
    "audio": (AutoModelForAudioClassification, MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES),
}
"""The auto class of each data kind's classification model, and the model types it builds."""

WARMUP_RATIO = 0.1
"""Share of the fine-tuning steps spent warming the learning rate up from 0."""
WEIGHT_DECAY = 0.01
"""AdamW weight decay of fine-tuning."""


@dataclass(frozen=True)
class FinetuneSettings:
    """The budget and optimiser of one fine-tuning.

    Args:
        epochs: passes over the training split (when ``steps`` is -1).
        steps: optimisation steps; -1: ``epochs`` decide.
        learning_rate: peak AdamW learning rate.
        batch_size: training rows per step.
        eval_batch_size: rows per forward pass when scoring.
        seed: seeds the head's initialisation, the random-init baseline and the order of the training rows.
    """

    epochs: float
    steps: int
    learning_rate: float
    batch_size: int
    eval_batch_size: int
    seed: int

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0, low_inclusive=False)
        if self.steps != -1:
            check_int("steps (or -1)", self.steps, 1)
        check_range("learning_rate", self.learning_rate, 0, low_inclusive=False)
        check_int("batch_size", self.batch_size, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)


def finetune_settings(args: EvaluationArguments) -> FinetuneSettings:
    """The fine-tuning flags of ``hf-ssl evaluate`` (``--finetune_*``, ``--batch_size`` for scoring, ``--seed``)."""
    return FinetuneSettings(
        epochs=args.finetune_epochs,
        steps=args.finetune_steps,
        learning_rate=args.finetune_learning_rate,
        batch_size=args.finetune_batch_size,
        eval_batch_size=args.batch_size,
        seed=args.seed,
    )


def ecosystem_classifier(config: PretrainedConfig, modality: str) -> Any | None:
    """The auto class that builds ``config``'s classification model for ``modality`` data, or ``None``."""
    auto, model_types = CLASSIFIERS.get(modality, (None, {}))
    return auto if config.model_type in model_types else None


@contextlib.contextmanager
def classifier_folder(model_name_or_path: str, backbone: PreTrainedModel) -> Iterator[str]:
    """``model_name_or_path`` when it is a folder, else (``timm:<architecture>``) the loaded ``backbone`` saved into
    a temporary folder, deleted when the block ends."""
    if os.path.isdir(model_name_or_path):
        yield model_name_or_path
        return
    with tempfile.TemporaryDirectory(prefix="hf_ssl_finetune_backbone_") as folder:
        backbone.save_pretrained(folder)
        yield folder


def build_classifier(folder: str, modality: str, num_classes: int, pretrained: bool, seed: int) -> PreTrainedModel:
    """The ecosystem's classification model of the backbone in ``folder`` with a new ``num_classes``-way head (seeded
    by ``seed``): the backbone's weights from ``folder``, or (``pretrained`` false) its architecture at random
    initialisation. Global generators are left as they were.

    Raises:
        UsageError: no classification model for the data kind and the backbone's architecture.
    """
    if modality not in CLASSIFIERS:
        raise UsageError(f"--protocol finetune: no classification model for {modality} data yet")
    config = AutoConfig.from_pretrained(folder, num_labels=num_classes)
    auto = ecosystem_classifier(config, modality)
    if auto is None:
        raise UsageError(f"{folder}: transformers has no {modality} classification model for a {config.model_type!r}")
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its report of the new head as "MISSING": logged below, in one line
    try:
        with preserved_rng():
            torch.manual_seed(seed)
            if not pretrained:
                model = auto.from_config(config)
                if getattr(model, "timm_model", None) is not None:  # timm's own init, as the frozen baseline's
                    reset_to_timm_init(model, seed)
                return model
            model, info = auto.from_pretrained(folder, config=config, output_loading_info=True)
    finally:
        transformers_logging.set_verbosity(verbosity)
    logger.info("%s from %s; new weights: %s", type(model).__name__, folder, ", ".join(info.get("missing_keys") or ()))
    return model


class PooledClassifier(nn.Module):
    """A backbone, the pooling that evaluation reads its features with, and a linear head over them: how a
    checkpoint that no ecosystem classifier loads (a pretraining run folder) is fine-tuned.

    Args:
        backbone: the checkpoint's backbone (trained in place).
        pool: ``(outputs, inputs) -> (B, F)`` features, or ``{layer: (B, F)}`` of which the last layer is used.
        num_features: ``F``.
        num_classes: classes of the head.
    """

    accepts_loss_kwargs = False  # the Trainer passes no num_items_in_batch: the loss is each batch's mean

    def __init__(
        self,
        backbone: nn.Module,
        pool: Pooler,
        num_features: int,
        num_classes: int,
    ):
        super().__init__()
        self.backbone, self.pool = backbone, pool
        self.head = nn.Linear(num_features, num_classes)

    def features(self, **inputs: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` pooled features of the inputs."""
        return last_layer(self.pool(self.backbone(**inputs), inputs, self.backbone))

    def forward(self, labels: torch.Tensor | None = None, **inputs: torch.Tensor) -> SequenceClassifierOutput:
        """``logits (B, num_classes)``, and with ``labels (B,)`` their cross-entropy ``loss``."""
        logits = self.head(self.features(**inputs))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def pooled_classifier(
    backbone: nn.Module, spec: FeatureSpec, probe_batch: dict[str, torch.Tensor], num_classes: int, seed: int
) -> PooledClassifier:
    """:class:`PooledClassifier` over ``backbone`` (a copy: the given one is left as it was), its head seeded by
    ``seed`` and sized by the features of ``probe_batch`` (model inputs)."""
    backbone = copy.deepcopy(backbone).float().eval()
    device = next(backbone.parameters()).device
    inputs = {key: value.to(device) for key, value in probe_batch.items()}
    with torch.no_grad(), preserved_rng():
        num_features = PooledClassifier(backbone, spec.pool, 1, 1).features(**inputs).shape[-1]
        torch.manual_seed(seed)
        return PooledClassifier(backbone, spec.pool, num_features, num_classes)


def finetune(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    collator: Any,
    settings: FinetuneSettings,
) -> dict[str, Any]:
    """Train ``model`` end to end on ``train`` with the plain ``Trainer``, then score it on ``test``.

    The ``Trainer`` writes into a temporary folder, deleted afterwards (nothing is saved); it reports nothing
    (``report_to="none"``), runs on the CUDA device when there is one, in fp32. ``model`` is left trained, in eval mode.

    Args:
        model: a classification model whose ``forward(**inputs, labels=...)`` returns ``loss`` and ``logits``.
        train: rows to train on (``collator`` makes the batches: model inputs plus ``labels``).
        test: rows to score.
        collator: rows -> model inputs plus ``labels (B,)``.
        settings: the budget and optimiser.

    Returns:
        ``accuracy`` on ``test``, ``steps``, ``epochs`` (passes actually made), ``learning_rate``, ``batch_size``,
        ``warmup_ratio``, ``weight_decay`` and ``train_loss`` (the mean training loss).
    """
    with preserved_rng(), tempfile.TemporaryDirectory(prefix="hf_ssl_finetune_") as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=settings.epochs,
            max_steps=settings.steps,
            per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.eval_batch_size,
            optim="adamw_torch",
            learning_rate=settings.learning_rate,
            warmup_steps=WARMUP_RATIO,
            weight_decay=WEIGHT_DECAY,
            seed=settings.seed,
            data_seed=settings.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,  # the collator reads the raw input column
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
        for callback in (PrinterCallback, ProgressCallback):  # no dict printed among the CLI's output
            trainer.remove_callback(callback)
        trained = trainer.train()
        prediction = trainer.predict(test)
    model.eval()
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    accuracy = float((np.asarray(logits).argmax(-1) == np.asarray(prediction.label_ids)).mean())
    steps = trainer.state.global_step
    logger.info("fine-tuned %s for %d steps: accuracy %.4f", type(model).__name__, steps, accuracy)
    return {
        "accuracy": accuracy,
        "steps": steps,
        "epochs": round(float(trainer.state.epoch or 0.0), 4),
        "learning_rate": settings.learning_rate,
        "batch_size": settings.batch_size,
        "warmup_ratio": WARMUP_RATIO,
        "weight_decay": WEIGHT_DECAY,
        "train_loss": trained.training_loss,
    }


def finetune_results(
    args: EvaluationArguments,
    backbone: PreTrainedModel,
    spec: FeatureSpec,
    train: Dataset,
    test: Dataset,
    collator: Any,
    num_classes: int,
) -> dict[str, dict[str, Any]]:
    """The fine-tuning protocol of ``hf-ssl evaluate``: the checkpoint's backbone fine-tuned, and with
    ``args.baselines`` the same architecture fine-tuned the same way from a random initialisation seeded by
    ``args.seed``.

    Args:
        args: the evaluation arguments: ``model_name_or_path``, the ``finetune_*`` flags, ``baselines``, ``seed``.
        backbone: the backbone evaluation loaded from ``args.model_name_or_path``.
        spec: how evaluation reads its features (data kind, pooling).
        train: the labelled training rows (labels in ``[0, num_classes)``).
        test: the rows scored.
        collator: rows -> model inputs plus ``labels``, as for the frozen features.
        num_classes: classes of the new head.

    Returns:
        ``{"pretrained": results, "random_init": results}`` (the second with ``args.baselines`` only), each as
        :func:`finetune` returns, plus ``classifier``: what was fine-tuned.
    """
    settings = finetune_settings(args)
    runs = (("pretrained", True), ("random_init", False))[: 2 if args.baselines else 1]
    results = {}
    with classifier_folder(args.model_name_or_path, backbone) as folder:
        ecosystem = ecosystem_classifier(backbone.config, spec.modality) is not None
        for name, pretrained in runs:
            if ecosystem:
                model = build_classifier(folder, spec.modality, num_classes, pretrained, settings.seed)
                described = type(model).__name__
            else:
                start = backbone if pretrained else random_init_backbone(backbone.config, settings.seed)
                probe_batch = {k: v for k, v in collator([train[0]]).items() if k != "labels"}
                model = pooled_classifier(start, spec, probe_batch, num_classes, settings.seed)
                described = f"{type(start).__name__} + a linear head on the probe's features"
            logger.info("fine-tuning the %s %s on %d rows", name.replace("_", " "), described, len(train))
            results[name] = {**finetune(model, train, test, collator, settings), "classifier": described}
    return results
