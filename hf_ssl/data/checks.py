"""The bad-example policy of every modality: each row is checked before training, then the bad ones either stop the
run (``--on_bad_example error``, one message naming their rows) or are dropped and counted (``skip``).

A modality supplies what "usable" means: a function ``check(value, where=...)`` that raises its own
:class:`~hf_ssl.errors.UsageError` subclass, naming ``where`` (``"row 17"``), for a value it cannot use.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from datasets import Dataset, IterableDataset

from hf_ssl.errors import UsageError, check_choice

logger = logging.getLogger(__name__)

OnBadExample = Literal["error", "skip"]
ON_BAD_EXAMPLE_CHOICES: tuple[str, ...] = ("error", "skip")


@dataclass(frozen=True)
class ExampleCheck:
    """How one modality tells a usable row from a bad one.

    Args:
        check: ``(value, where=...) -> anything``; raises ``error`` (naming ``where``) for an unusable value.
        error: the :class:`~hf_ssl.errors.UsageError` subclass ``check`` raises, and the policy raises.
        plural: what the rows hold, in messages (``"images"``, ``"audio examples"``).
        batch_size: rows read at a time when a whole dataset is checked.
    """

    check: Callable[..., object]
    error: type[UsageError]
    plural: str
    batch_size: int = 1000


def check_on_bad_example(value: Any) -> None:
    """Raise :class:`~hf_ssl.errors.UsageError` unless ``value`` is a bad-example policy (``error`` or ``skip``)."""
    check_choice("--on_bad_example", value, ON_BAD_EXAMPLE_CHOICES)


def check_rows(ds: Dataset, column: str, kind: ExampleCheck, on_bad_example: OnBadExample = "error") -> Dataset:
    """Check every row of ``column`` once, before training, so a bad file cannot stop a long run halfway.

    Args:
        ds: a map-style dataset.
        column: the column to check.
        kind: the modality's check.
        on_bad_example: ``"error"`` raises naming the rows; ``"skip"`` drops them and logs how many.

    Returns:
        ``ds``, without the bad rows when skipping.

    Raises:
        UsageError: (``kind.error``) listing the first bad rows and why, or every row is bad (even when skipping).
    """
    check_on_bad_example(on_bad_example)
    bad: list[tuple[int, str]] = []
    for start in range(0, len(ds), kind.batch_size):
        for offset, value in enumerate(ds[start : start + kind.batch_size][column]):
            try:
                kind.check(value, where=f"row {start + offset}")
            except kind.error as err:
                bad.append((start + offset, str(err)))
    if not bad:
        return ds
    if len(bad) == len(ds):
        raise kind.error(f"none of the {len(ds)} {kind.plural} is usable; the first: {bad[0][1]}")
    if on_bad_example == "error":
        shown = "\n  ".join(message for _, message in bad[:10])
        raise kind.error(
            f"{len(bad)} of {len(ds)} {kind.plural} are unusable (rows {[row for row, _ in bad[:10]]}"
            f"{', ...' if len(bad) > 10 else ''})\n  {shown}\nfix or remove them, or pass --on_bad_example skip"
        )
    logger.warning("skipping %d of %d unusable %s (rows %s)", len(bad), len(ds), kind.plural, [r for r, _ in bad[:20]])
    bad_rows = {row for row, _ in bad}
    return ds.select([i for i in range(len(ds)) if i not in bad_rows])


def _usable(value: Any, kind: ExampleCheck, on_bad_example: OnBadExample) -> bool:
    try:
        kind.check(value, where="a streamed row")
    except kind.error as err:
        if on_bad_example == "error":
            raise kind.error(f"{err}; pass --on_bad_example skip to drop such {kind.plural}") from err
        logger.warning("skipping a streamed row: %s", err)
        return False
    return True


def prepare_rows(
    ds: Dataset | IterableDataset, column: str, kind: ExampleCheck, on_bad_example: OnBadExample = "error"
) -> tuple[Dataset | IterableDataset, int]:
    """``ds`` with its bad rows handled before batching, by the policy ``on_bad_example``.

    A map-style dataset is checked whole before training (:func:`check_rows`). A streamed one is checked row by
    row as it is read (an error, or with ``"skip"`` a logged skip), ahead of batching, so every batch stays full
    and the processes of a multi-process run get batches of one size.

    Returns:
        ``(dataset, number of rows skipped)``; the count is ``0`` for a streamed dataset (its skips are logged).
    """
    check_on_bad_example(on_bad_example)
    if isinstance(ds, IterableDataset):
        usable = functools.partial(_usable, kind=kind, on_bad_example=on_bad_example)
        return ds.filter(usable, input_columns=[column]), 0
    checked = check_rows(ds, column, kind, on_bad_example)
    return checked, len(ds) - len(checked)
