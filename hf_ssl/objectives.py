"""The registry of pretraining objectives that the CLI and scripts dispatch on.

Each objective registers itself in one line of its ``models/<method>/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig, PreTrainedModel

from hf_ssl.data.loading import Modality


@dataclass(frozen=True)
class Objective:
    """What the generic pretraining loop needs to know about one objective.

    Args:
        name: CLI name (``hf-ssl pretrain <name>``).
        config_class: its ``PretrainedConfig``.
        model_class: its ``...ForPreTraining`` model.
        modality: which column kind the data must have.
        make_collator: ``(config, column) -> collator`` turning dataset rows into model inputs.
    """

    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    modality: Modality
    make_collator: Callable[[Any, str], Callable[[list[dict[str, Any]]], dict[str, Any]]]


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> None:
    OBJECTIVES[objective.name] = objective


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]
