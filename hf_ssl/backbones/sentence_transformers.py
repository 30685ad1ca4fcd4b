"""Reading a sentence-transformers folder's pooling: shared by evaluation (which pools a checkpoint's token states as
its ``Pooling`` module says) and export (which writes such folders)."""

from __future__ import annotations

import json
from pathlib import Path

POOLING_MODES = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
"""Our pooling names -> the flag of sentence-transformers' ``Pooling`` config."""


def is_sentence_transformer(folder: str | Path) -> bool:
    """Whether ``folder`` is a sentence-transformers model folder (it has ``modules.json``)."""
    return (Path(folder) / "modules.json").is_file()


def read_pooling(folder: str | Path) -> str | None:
    """The pooling (``"cls"``, ``"mean"``, ``"max"``) of a sentence-transformers folder, or ``None`` when the folder
    is not one (no ``modules.json``) or uses another pooling."""
    folder = Path(folder)
    if not is_sentence_transformer(folder):
        return None
    modules = json.loads((folder / "modules.json").read_text())
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((folder / module["path"] / "config.json").read_text())
            if "pooling_mode" in config:  # sentence-transformers >= 6 writes one name
                return config["pooling_mode"] if config["pooling_mode"] in POOLING_MODES else None
            chosen = [mode for mode, flag in POOLING_MODES.items() if config.get(flag)]
            return chosen[0] if len(chosen) == 1 else None
    return None


def read_max_seq_length(folder: str | Path) -> int | None:
    """The ``max_seq_length`` of a sentence-transformers folder's ``sentence_bert_config.json`` (what
    ``SentenceTransformer(folder)`` truncates to), or ``None`` when the folder is not one or does not say."""
    path = Path(folder) / "sentence_bert_config.json"
    if not is_sentence_transformer(folder) or not path.is_file():
        return None
    value = json.loads(path.read_text()).get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None
