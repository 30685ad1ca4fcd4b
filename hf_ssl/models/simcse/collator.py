"""Batches of tokenised sentences for SimCSE: ``(B, L)`` sentences, or ``(B, S, L)`` (sentence, positive[, hard
negative]) groups, padded to the longest sequence of the batch."""

from __future__ import annotations

from typing import Any

import torch


class SimCSECollator:
    """Rows of token ids -> padded model inputs. Draws no randomness (dropout in the model is SimCSE's noise).

    A row's ``input_ids`` is one sequence (unsupervised: the model encodes it twice) or a list of ``S`` sequences
    (supervised); ``attention_mask`` is built from the lengths; ``token_type_ids`` are kept where rows have them;
    a ``labels`` value per row (an evaluation pair's score) becomes a float tensor.

    Args:
        pad_token_id: the tokenizer's padding id.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        nested = bool(rows[0]["input_ids"]) and isinstance(rows[0]["input_ids"][0], list)
        groups = [row["input_ids"] if nested else [row["input_ids"]] for row in rows]  # (B, S) lists of ids
        views = len(groups[0])
        if any(len(group) != views for group in groups):
            raise ValueError("every row of a batch must hold the same number of sentences")
        length = max(len(ids) for group in groups for ids in group)
        input_ids = torch.full((len(rows), views, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), views, length), dtype=torch.long)
        with_types = "token_type_ids" in rows[0]
        token_type_ids = torch.zeros_like(input_ids) if with_types else None
        for b, group in enumerate(groups):
            types = (rows[b]["token_type_ids"] if nested else [rows[b]["token_type_ids"]]) if with_types else None
            for s, ids in enumerate(group):
                input_ids[b, s, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attention_mask[b, s, : len(ids)] = 1
                if types is not None:
                    token_type_ids[b, s, : len(ids)] = torch.tensor(types[s], dtype=torch.long)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        if not nested:
            batch = {key: value[:, 0] for key, value in batch.items()}  # (B, L)
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([float(row["labels"]) for row in rows])
        return batch
