"""Masked text, shared by the objectives that mask tokens (MLM, data2vec text): the data flags, the data preparation
(rows checked, a tokenizer found or trained, lines tokenised and packed) and the collator that pads and masks each
batch.

Dynamic masking is drawn in the collator for every batch (as RoBERTa's "dynamic masking", Liu et al., 2019). BERT's
recipe (Devlin et al., 2019, section 3.1 and appendix C.2): select ``mlm_probability`` of the tokens; of those,
replace 80% by the mask token, 10% by a random token, keep 10%. Special tokens and padding are never selected.
Whole-word masking selects words and masks all their pieces (google-research/bert, "Whole Word Masking"; the
80/10/10 choice is then made per token, as in its ``create_pretraining_data.py``). Checked against transformers'
``DataCollatorForLanguageModeling`` / ``DataCollatorForWholeWordMask``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from datasets import Dataset, IterableDataset
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from hf_ssl.backbones.transformers import check_sequence_length, fit_encoder_to_tokenizer
from hf_ssl.data.collators import SeededCollator
from hf_ssl.data.text import TextDataArguments, prepare_text_rows, resolve_tokenizer, tokenize_dataset
from hf_ssl.errors import UsageError, check_choice, check_range

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
NO_WORD = -1  # word id of special tokens and padding


class TokenMaskingCollator(SeededCollator):
    """Pads tokenised examples to the longest in the batch and masks them for MLM.

    Without a ``generator``, the masks are drawn inside :meth:`~hf_ssl.data.collators.SeededCollator.batch_rng`:
    batch ``k`` of a run is masked from a generator seeded by ``(seed, rank, k)``, so a resumed run masks as the
    uninterrupted one did (the CLI's :class:`~hf_ssl.callbacks.BatchRandomnessCallback` sets the position).

    Args:
        tokenizer: its ``pad_token_id``, ``mask_token_id`` and special ids are used (a fast tokenizer when
            ``whole_word_masking``, since its word ids are needed).
        mlm_probability: fraction of the non-special tokens (or words, with ``whole_word_masking``) selected.
        mask_replace_prob: fraction of the selected tokens replaced by the mask token.
        random_replace_prob: fraction of the selected tokens replaced by a random non-special token.
        whole_word_masking: select whole words; every example must then carry ``word_ids`` (one per token, ``None``
            for special tokens), as :func:`hf_ssl.data.text.tokenize_dataset` keeps with ``keep_word_ids=True``.
        pad_to_multiple_of: pad the length up to a multiple of this (e.g. 8 for tensor cores).
        generator: torch RNG for the masking draws (overrides the per-batch seeding); ``None``: seeded per batch.

    Call it on a list of examples with ``input_ids`` (and optionally ``attention_mask``, ``token_type_ids``,
    ``word_ids``; other columns such as ``length`` are dropped). Returns ``input_ids``, ``attention_mask``,
    ``labels`` (the original token at selected positions, -100 elsewhere), and ``token_type_ids`` when given,
    each ``(B, L)`` with ``L`` the longest example (rounded up to ``pad_to_multiple_of``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        mlm_probability: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        whole_word_masking: bool = False,
        pad_to_multiple_of: int | None = None,
        generator: torch.Generator | None = None,
    ):
        check_range("mlm_probability", mlm_probability, 0.0, 1.0, low_inclusive=False)
        check_range("mask_replace_prob", mask_replace_prob, 0.0, 1.0)
        check_range("random_replace_prob", random_replace_prob, 0.0, 1.0)
        if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
            raise UsageError(
                f"mask_replace_prob + random_replace_prob must be <= 1, got {mask_replace_prob} + {random_replace_prob}"
            )
        check_choice("whole_word_masking", whole_word_masking, (True, False))
        if pad_to_multiple_of is not None:
            check_range("pad_to_multiple_of", pad_to_multiple_of, 1)
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise UsageError(
                f"the tokenizer ({tokenizer.name_or_path or type(tokenizer).__name__}) needs a mask token and a pad "
                "token to mask tokens (train one with hf_ssl.data.text.train_tokenizer, or set tokenizer.mask_token)"
            )
        if whole_word_masking and not tokenizer.is_fast:
            raise UsageError("whole_word_masking needs a fast tokenizer (its word ids mark the word boundaries)")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word_masking = whole_word_masking
        self.pad_to_multiple_of = pad_to_multiple_of
        self.generator = generator
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        vocab = torch.arange(len(tokenizer))
        self.random_token_ids = vocab[~torch.isin(vocab, self.special_ids)]  # candidates for random replacement

    @classmethod
    def from_config(
        cls, tokenizer: PreTrainedTokenizerBase, config: PretrainedConfig, **kwargs: Any
    ) -> TokenMaskingCollator:
        """The collator with the masking hyperparameters stored in ``config`` (its ``mlm_probability``,
        ``mask_replace_prob``, ``random_replace_prob`` and ``whole_word_masking``)."""
        return cls(
            tokenizer,
            mlm_probability=config.mlm_probability,
            mask_replace_prob=config.mask_replace_prob,
            random_replace_prob=config.random_replace_prob,
            whole_word_masking=config.whole_word_masking,
            **kwargs,
        )

    def _pad(self, rows: Sequence[Sequence[int]], length: int, value: int) -> torch.Tensor:
        out = torch.full((len(rows), length), value, dtype=torch.long)
        for i, row in enumerate(rows):
            row = torch.as_tensor(row, dtype=torch.long)
            out[i, : row.numel()] = row
        return out

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples or "input_ids" not in examples[0]:
            raise UsageError(
                f"{type(self).__name__} needs examples with an 'input_ids' column (tokenise the text first)"
            )
        lengths = [len(e["input_ids"]) for e in examples]
        length = max(lengths)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = self._pad([e["input_ids"] for e in examples], length, self.tokenizer.pad_token_id)  # (B, L)
        if "attention_mask" in examples[0]:
            attention_mask = self._pad([e["attention_mask"] for e in examples], length, 0)
        else:
            attention_mask = (torch.arange(length) < torch.tensor(lengths).unsqueeze(1)).long()
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = self._pad([e["token_type_ids"] for e in examples], length, 0)
        word_ids = None
        if self.whole_word_masking:
            if "word_ids" not in examples[0]:
                raise UsageError(
                    "whole_word_masking needs a 'word_ids' column: tokenise with keep_word_ids=True "
                    "(hf_ssl.data.text.tokenize_dataset)"
                )
            rows = [[NO_WORD if w is None else w for w in e["word_ids"]] for e in examples]
            word_ids = self._pad(rows, length, NO_WORD)
        if self.generator is not None:
            batch["input_ids"], batch["labels"] = self.mask_tokens(input_ids, attention_mask, word_ids)
        else:
            with self.batch_rng():
                batch["input_ids"], batch["labels"] = self.mask_tokens(input_ids, attention_mask, word_ids)
        return batch

    def mask_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Select and replace tokens.

        Args:
            input_ids: ``(B, L)`` token ids (not modified).
            attention_mask: ``(B, L)``, 0 at padding (never selected).
            word_ids: ``(B, L)`` word index of each token within its row, -1 for special tokens and padding; when
                given, selection is per word.

        Returns:
            ``(masked_input_ids, labels)``, both ``(B, L)``; labels are -100 where nothing is predicted.
        """
        g = self.generator
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)  # (B, L)
        if word_ids is None:
            selected = torch.rand(input_ids.shape, generator=g) < self.mlm_probability
        else:
            # one draw per word, shared by all of its pieces: (B, W) gathered back to the tokens (B, L)
            word_draws = torch.rand((input_ids.shape[0], int(word_ids.max().clamp(min=0)) + 1), generator=g)
            selected = word_draws.gather(1, word_ids.clamp(min=0)) < self.mlm_probability
            candidates &= word_ids >= 0
        selected &= candidates

        labels = torch.where(selected, input_ids, IGNORE_INDEX)
        choice = torch.rand(input_ids.shape, generator=g)  # 80/10/10 per token
        to_mask = selected & (choice < self.mask_replace_prob)
        to_random = selected & ~to_mask & (choice < self.mask_replace_prob + self.random_replace_prob)
        random_ids = self.random_token_ids[
            torch.randint(len(self.random_token_ids), input_ids.shape, generator=g)
        ]  # (B, L)
        masked = input_ids.clone()
        masked[to_mask] = self.tokenizer.mask_token_id
        masked[to_random] = random_ids[to_random]
        return masked, labels


@dataclass
class MaskedTextDataArguments(TextDataArguments):
    """The shared text flags (:class:`~hf_ssl.data.text.TextDataArguments`) and the masked-token objectives' own."""

    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad each batch's length up to a multiple of this (8 suits tensor cores)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pad_to_multiple_of is not None:
            check_range("--pad_to_multiple_of", self.pad_to_multiple_of, 1)


class MaskedText(NamedTuple):
    """What :func:`prepare_masked_text` gives an objective to wrap into its ``PreparedData``."""

    dataset: Dataset | IterableDataset  # tokenised: input_ids, attention_mask (and word_ids, length when asked)
    collator: TokenMaskingCollator
    tokenizer: PreTrainedTokenizerBase
    column: str  # the text column read
    num_skipped: int  # rows dropped as empty or bad


def prepare_masked_text(
    ds: Dataset | IterableDataset,
    config: PretrainedConfig,
    args: MaskedTextDataArguments,
    checkpoint: str | None = None,
) -> MaskedText:
    """Text rows checked and cleaned, a tokenizer found or trained (the encoder's vocabulary sized to it), lines
    tokenised with ``datasets.map`` (packed into blocks, or one per line), masks drawn per batch in the collator.

    Args:
        config: the objective's config: its ``encoder`` sub-config (resized to the tokenizer) and the masking
            hyperparameters :meth:`TokenMaskingCollator.from_config` reads.
        checkpoint: the checkpoint the run starts from (``--model_name_or_path``), if any: its tokenizer is used
            unless another is named, and must fit its embeddings.
    """
    ds, column, skipped = prepare_text_rows(ds, args)
    tokenizer, source = resolve_tokenizer(args, ds, column, checkpoint)
    logger.info("tokenizer: %s (%d tokens)", source, len(tokenizer))
    fit_encoder_to_tokenizer(config, tokenizer, from_checkpoint=checkpoint is not None)
    check_sequence_length(config, args.max_seq_length)
    tokenized = tokenize_dataset(
        ds,
        tokenizer,
        column,
        args.max_seq_length,
        mode="pack" if args.packing else "line",
        num_proc=args.preprocessing_num_workers,
        keep_word_ids=config.whole_word_masking,
    )
    collator = TokenMaskingCollator.from_config(tokenizer, config, pad_to_multiple_of=args.pad_to_multiple_of)
    return MaskedText(tokenized, collator, tokenizer, column, skipped)
