"""data2vec for text (Baevski et al., 2022, "data2vec: A General Framework for Self-supervised Learning in Speech,
Vision and Language", arXiv:2202.03555) on any Hugging Face text encoder, a ``Data2VecTextModel`` by default.

The student encoder reads the masked tokens (BERT's masking, drawn by
:class:`~hf_ssl.data.masked_text.TokenMaskingCollator`); its momentum teacher
(:class:`~hf_ssl.teachers.MomentumTeacher`, an EMA copy of the encoder, run in eval mode without gradients) reads the
original tokens; the targets are the average of the teacher's top-K layer outputs, each normalised
(:func:`~hf_ssl.losses.data2vec_targets`); a linear regression head on the student's last layer
predicts them at the masked positions only. Checked against fairseq's ``examples/data2vec/models/data2vec_text.py``
(``Data2VecTextEncoder.forward``; the targets there are the layers' ``fc_results``, the feed-forward output before the
last residual connection, our ``target_layer_output="ffn"``).

Where we differ from that file: every selected token is predicted (``labels != -100``, the 10% random and 10% kept
ones included, as BERT's MLM and the paper's text setup describe), where fairseq predicts the positions holding the
mask token (its text recipe masks with neither random nor kept tokens, which makes the two the same). As there
(``ema_transformer_layers_only``), the teacher's embedding layer is the student's, copied at every update, unless
``config.teacher_embeddings_from_student`` is off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from hf_ssl.backbones.transformers import TextEncoderModel, TextEncoderPreTrainedModel, takes_token_type_ids
from hf_ssl.errors import UsageError
from hf_ssl.health import HealthOutput
from hf_ssl.losses import data2vec_targets, mean_over_items, regression_loss
from hf_ssl.models.data2vec_text.configuration_data2vec_text import Data2VecTextPretrainingConfig
from hf_ssl.teachers import MomentumTeacher, collect_outputs, eval_mode

IGNORE_INDEX = -100


@dataclass
class Data2VecTextForPreTrainingOutput(ModelOutput):
    """Output of :class:`Data2VecTextForPreTraining`.

    Args:
        loss: the regression loss summed over the masked tokens' features (times ``loss_scale``), divided by the
            step's masked-token count (``num_items_in_batch``) or this batch's; scalar.
        target_std: the standard deviation of the targets over the masked tokens, per feature, averaged (no
            gradient): near 0 means the teacher's representations collapsed (fairseq logs it as ``target_var``).
        prediction_std: the same spread of the regression head's outputs (no gradient; fairseq's ``pred_var``): it
            should approach ``target_std`` as the student learns.
        predictions: ``(N, H)`` the regression head's outputs at the N masked positions, in the row-major order of
            ``labels != -100``.
        targets: ``(N, H)`` the teacher's targets there (float32, no gradient).
        last_hidden_state: ``(B, L, H)`` the student encoder's output on the masked input.
    """

    loss: torch.Tensor | None = None
    target_std: torch.Tensor | None = None
    prediction_std: torch.Tensor | None = None
    predictions: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class Data2VecTextRegressionHead(nn.Module):
    """The linear regression head on the student's last layer, ``H -> H`` (fairseq's ``regression_head`` with
    ``head_layers=1``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(..., H)`` -> ``(..., H)``."""
        return self.dense(hidden_states)


class Data2VecTextPreTrainedModel(TextEncoderPreTrainedModel):
    """Base class: config class, prefix and the initialisation of the regression head (the encoder initialises
    itself)."""

    config_class = Data2VecTextPretrainingConfig
    config: Data2VecTextPretrainingConfig
    base_model_prefix = "data2vec_text"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, Data2VecTextRegressionHead):
            std = getattr(self.config.encoder, "initializer_range", None) or 0.02
            init.normal_(module.dense.weight, mean=0.0, std=std)
            init.zeros_(module.dense.bias)


class Data2VecTextPretrainingModel(TextEncoderModel, Data2VecTextPreTrainedModel):
    """The student encoder alone (what ``AutoModel`` loads from a data2vec text checkpoint): token ids in, hidden
    states and the attention-masked mean of them out."""

    _keys_to_ignore_on_load_unexpected = [r"^regression_head\.", r"^teacher\."]


class Data2VecTextForPreTraining(Data2VecTextPreTrainedModel):
    """A student encoder, its momentum teacher and a regression head, trained as data2vec (Baevski et al., 2022).

    The teacher is ``self.teacher.data2vec_text``, an EMA copy of ``self.data2vec_text`` updated by
    :meth:`update_teacher` after every optimizer step (:class:`~hf_ssl.teachers.MomentumTeacherCallback`, with the
    momentum rising from ``config.teacher_momentum`` to ``config.teacher_momentum_final``); it is saved with the
    student (``teacher.*`` keys) and never receives gradients.
    """

    accepts_loss_kwargs = True  # the Trainer passes num_items_in_batch: the loss is a mean over the whole step
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    def __init__(self, config: Data2VecTextPretrainingConfig):
        super().__init__(config)
        self.data2vec_text = Data2VecTextPretrainingModel(config)
        self.regression_head = Data2VecTextRegressionHead(config.encoder.hidden_size)
        if config.target_layer_output == "ffn":
            _ffn_outputs(self.data2vec_text.encoder)  # refuse an encoder without BERT's layout now, not mid-run
        if config.teacher_embeddings_from_student:
            _embeddings(self.data2vec_text.encoder)
        self.teacher = MomentumTeacher(self, ["data2vec_text"])
        self.post_init()
        self.teacher.reset_from(self)  # post_init initialised the copy anew: start it equal to the student

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """One EMA step of the teacher towards the student (called after each optimizer step); with
        ``config.teacher_embeddings_from_student``, the teacher's embedding layer then becomes the student's."""
        self.teacher.update(self, momentum)
        if self.config.teacher_embeddings_from_student:
            theirs = _embeddings(self.data2vec_text.encoder).state_dict()
            for name, tensor in _embeddings(self.teacher.data2vec_text.encoder).state_dict().items():
                tensor.copy_(theirs[name])

    @torch.no_grad()
    def teacher_targets(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The regression targets of the unmasked tokens: the teacher, in eval mode (no dropout, as fairseq's
        ``self.ema.model.eval()``) and without gradients, encodes them; its last ``average_top_k_layers`` outputs, each
        normalised by ``target_norm``, are averaged.

        Args:
            input_ids: ``(B, L)`` the original (unmasked) token ids.
            attention_mask: ``(B, L)``, 1 for tokens, 0 for padding.
            token_type_ids: ``(B, L)`` segment ids, for the families that have them.

        Returns:
            ``(B, L, H)`` float32 targets.
        """
        teacher = self.teacher.data2vec_text.encoder
        kwargs: dict[str, Any] = {"attention_mask": attention_mask}
        if token_type_ids is not None and takes_token_type_ids(teacher):
            kwargs["token_type_ids"] = token_type_ids
        with eval_mode(teacher):
            if self.config.target_layer_output == "block":
                hidden_states = teacher(input_ids=input_ids, output_hidden_states=True, **kwargs).hidden_states
                layers = list(hidden_states[1:])  # the embeddings' output is not a layer's
            else:
                layers = collect_outputs(teacher, _ffn_outputs(teacher), input_ids=input_ids, **kwargs)
        return data2vec_targets(
            layers, self.config.average_top_k_layers, (self.config.target_norm,), (), attention_mask
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs: Any,
    ) -> Data2VecTextForPreTrainingOutput:
        """Args:
            input_ids: ``(B, L)`` token ids, already masked (:class:`~hf_ssl.data.masked_text.TokenMaskingCollator`).
            labels: ``(B, L)``, the original token at each masked position and -100 elsewhere (the teacher reads
                the original tokens: ``input_ids`` with the labels put back).
            attention_mask: ``(B, L)``, 1 for tokens, 0 for padding.
            token_type_ids: ``(B, L)`` segment ids, for the families that have them.
            num_items_in_batch: masked tokens in the whole optimisation step (all micro-batches and processes);
                the summed loss is divided by it. ``None``: the mean over this batch's masked tokens.

        Returns:
            :class:`Data2VecTextForPreTrainingOutput`.
        """
        selected = labels != IGNORE_INDEX  # (B, L)
        original = torch.where(selected, labels, input_ids)  # (B, L) the unmasked text
        targets = self.teacher_targets(original, attention_mask, token_type_ids)[selected]  # (N, H)
        hidden = self.token_states(input_ids, attention_mask, token_type_ids)  # (B, L, H)
        predictions = self.regression_head(hidden[selected])  # (N, H)
        count = predictions.shape[0]
        if count == 0:
            # nothing to predict: a zero loss that still reaches every parameter (keeps DDP's gradient sync intact)
            loss = self.regression_head(hidden).sum() * 0.0
            target_std = prediction_std = loss.detach()
        else:
            summed = regression_loss(predictions, targets, self.config.loss_beta, self.config.loss_scale)
            loss = mean_over_items(summed, count, num_items_in_batch)
            target_std = _feature_std(targets)
            prediction_std = _feature_std(predictions.detach())
        return Data2VecTextForPreTrainingOutput(
            loss=loss,
            target_std=target_std,
            prediction_std=prediction_std,
            predictions=predictions,
            targets=targets,
            last_hidden_state=hidden,
        )

    def health(self, batch: dict[str, Any]) -> HealthOutput:
        """Health of a training batch (see :mod:`hf_ssl.health`): the loss and ``target_std`` on its masked tokens
        (a teacher whose targets lose their spread has collapsed, and the student with it), and the student
        encoder's sentence features (the mean over tokens, as :class:`Data2VecTextPretrainingModel`) of the unmasked
        text."""
        labels, mask, types = batch["labels"], batch.get("attention_mask"), batch.get("token_type_ids")
        output = self(batch["input_ids"], labels, attention_mask=mask, token_type_ids=types)
        original = torch.where(labels != IGNORE_INDEX, labels, batch["input_ids"])  # (B, L)
        features = self.data2vec_text(original, attention_mask=mask, token_type_ids=types).pooler_output  # (B, H)
        return HealthOutput(
            embeddings=features, loss=output.loss, scalars={"target_std": output.target_std}, isotropic=False
        )

    def load_encoder_checkpoint(self, name_or_path: str, config: PretrainedConfig) -> None:
        """Start the student encoder, and its teacher with it, from an encoder checkpoint of ``config.encoder``'s
        family (a Hub id or folder ``AutoModel`` loads; its pooler, which data2vec does not train, is dropped).

        Raises:
            UsageError: weights that do not fit ``config.encoder``.
        """
        source = AutoModel.from_pretrained(name_or_path, config=config)
        missing, unexpected = self.data2vec_text.encoder.load_state_dict(source.state_dict(), strict=False)
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]
        if missing or unexpected:
            raise UsageError(
                f"the encoder weights do not fit config.encoder: missing {missing}, unexpected {unexpected}"
            )
        self.teacher.reset_from(self)

    def num_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """The tokens this batch predicts (its labels that are not -100)."""
        return (batch["labels"] != IGNORE_INDEX).sum()


def _feature_std(values: torch.Tensor) -> torch.Tensor:
    """``(N, H) -> ()``: the standard deviation over the N rows of each feature, averaged (0 for one row)."""
    if values.shape[0] < 2:
        return values.new_zeros(())
    return values.float().std(dim=0, unbiased=False).mean()


def _ffn_outputs(encoder: PreTrainedModel) -> list[nn.Module]:
    """The feed-forward output projection of every layer (``encoder.layer[i].output.dense``, BERT's layout, which
    RoBERTa and data2vec text share): its output is the FFN's before the last residual connection and layer norm.

    Raises:
        UsageError: an encoder laid out otherwise.
    """
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    dense = [getattr(getattr(layer, "output", None), "dense", None) for layer in layers or []]
    if not dense or not all(isinstance(module, nn.Linear) for module in dense):
        raise UsageError(
            f"target_layer_output 'ffn' needs an encoder laid out as BERT (encoder.layer[i].output.dense), which "
            f"{type(encoder).__name__} is not: use target_layer_output 'block'"
        )
    return dense


def _embeddings(encoder: PreTrainedModel) -> nn.Module:
    """The encoder's embedding layer (``encoder.embeddings``: token, position and segment embeddings and their layer
    norm, in BERT, RoBERTa, data2vec text and DistilBERT).

    Raises:
        UsageError: an encoder without one.
    """
    embeddings = getattr(encoder, "embeddings", None)
    if not isinstance(embeddings, nn.Module):
        raise UsageError(
            f"teacher_embeddings_from_student needs the encoder's embedding layer at .embeddings, which "
            f"{type(encoder).__name__} does not have: set teacher_embeddings_from_student to false"
        )
    return embeddings
