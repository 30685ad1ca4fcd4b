"""Checkpoint folders a run can trust: complete, readable weights, never a half-written folder or a truncated file.

A run killed while the Trainer writes ``checkpoint-N`` leaves a folder without some of its files, or with a
``model.safetensors`` cut short. :func:`check_weights` reads only a safetensors header (no tensor data) and checks
that the file holds every byte the header promises; :func:`incomplete_reason` says what a checkpoint folder lacks;
:func:`last_complete_checkpoint` is what ``--resume_from_checkpoint true`` resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path

import torch
from safetensors import safe_open

from hf_ssl.errors import UsageError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
# what the Trainer writes into every checkpoint, the weights last among the model's files and the state last of all
CHECKPOINT_FILES = ("config.json", "trainer_state.json", "optimizer.pt", "scheduler.pt")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def weights_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file, or ``None`` when its header parses and the file is as long as the
    header says (a kill during the write leaves it shorter)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, too short for a safetensors header"
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > size - 8:
                return f"truncated: its header alone needs {header_size + 8} bytes, the file has {size}"
            header = json.loads(handle.read(header_size))
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"unreadable ({err})"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is no mapping)"
    ends = [
        int(entry["data_offsets"][1])
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + header_size + max(ends, default=0)
    if size < expected:
        return f"truncated: {size} of {expected} bytes (was its writing interrupted?)"
    return None


def check_weights(folder: str | os.PathLike, what: str = "checkpoint") -> None:
    """Raise a one-line :class:`UsageError` naming the file when ``folder``'s ``model.safetensors`` is truncated or
    corrupt. A folder without that file (sharded or ``.bin`` weights) is left to ``from_pretrained``."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.exists():
        return
    problem = weights_problem(path)
    if problem is not None:
        raise UsageError(f"{what} {path}: {problem}; nothing was loaded from it")


def incomplete_reason(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` is not a complete Trainer checkpoint (a missing file, truncated weights), or ``None``."""
    folder = Path(folder)
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    if (folder / WEIGHTS_FILE).exists():
        problem = weights_problem(folder / WEIGHTS_FILE)
        if problem is not None:
            return f"{WEIGHTS_FILE} {problem}"
    elif not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return "no model weights"
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        return f"trainer_state.json unreadable ({err})"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that is complete; each newer, incomplete one (left by a kill
    during its writing) is skipped with a one-line warning naming it."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    found = sorted(
        ((int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
        reverse=True,
    )
    for _, folder in found:
        reason = incomplete_reason(folder)
        if reason is None:
            return str(folder)
        logger.warning("skipping %s: an incomplete checkpoint (%s), left by an interrupted run", folder, reason)
    return None


def checkpoint_model_type(folder: str | os.PathLike) -> str | None:
    """The ``model_type`` in ``folder``'s ``config.json``, or ``None`` when it has none."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_checkpoint_fits(folder: str | os.PathLike, model: torch.nn.Module, flag: str) -> None:
    """Raise a one-line :class:`UsageError` naming both sides when the checkpoint in ``folder`` holds weights of
    other names or shapes than ``model``'s (another objective, other model sizes), before anything is loaded.

    Only the safetensors header is read. Sharded or ``.bin`` checkpoints are left to ``from_pretrained``.
    """
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        return
    with safe_open(str(path), framework="pt") as handle:
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    state = model.state_dict()
    expected = {name: tuple(tensor.shape) for name, tensor in state.items()}
    ours = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    theirs = checkpoint_model_type(folder) or "unknown"
    if theirs != ours:
        raise UsageError(f"{flag} {folder} is a {theirs!r} checkpoint; this run trains a {ours!r} model")
    saved_storage = {state[name].data_ptr() for name in saved if name in state}
    missing = sorted(n for n in set(expected) - set(saved) if state[n].data_ptr() not in saved_storage)  # not tied
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        which = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which this run's model has not"
        raise UsageError(
            f"{flag} {folder}: its {theirs!r} model {which} ({len(missing) + len(extra)} such weights): another "
            "architecture or size; resume with the flags the run was started with"
        )
    for name in sorted(set(saved) & set(expected)):
        if saved[name] != expected[name]:
            raise UsageError(
                f"{flag} {folder}: its {theirs!r} model has {name} of shape {list(saved[name])}, this run's has "
                f"{list(expected[name])}: other model sizes; resume with the flags the run was started with"
            )
