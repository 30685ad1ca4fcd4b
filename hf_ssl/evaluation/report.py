"""Evaluation results as text: an aligned table for the terminal, Markdown for model cards.

Rows and columns come from the result keys: the evaluated model, then each entry of ``baselines``; one column per
protocol present (kNN, linear probe, fine-tuning, STS), so a new task or baseline needs no change here.
"""

from __future__ import annotations

from typing import Any

PROTOCOLS: tuple[tuple[str, str], ...] = (
    ("knn", "kNN accuracy"),
    ("linear_probe", "linear probe accuracy"),
    ("finetune", "fine-tune accuracy"),
    ("sts", "STS Spearman"),
)
"""(result key, column label) of every protocol a result may hold, in table order."""


def _cell(key: str, entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return None
    value = entry.get("spearman" if key == "sts" else "accuracy")
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if key == "sts" else f"{100 * value:.1f}%"


def result_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated feature set, its protocols formatted (accuracy in percent, Spearman x 100).

    Args:
        results: the dict :func:`~hf_ssl.evaluation.evaluate` returns (or its JSON file, loaded).

    Returns:
        ``[{"name": "pretrained", "cells": {"knn": "93.4%", "linear_probe": "95.0%"}}, ...]``: the pretrained
        model, then each baseline (``baselines.random_init`` is named "random init").
    """
    entries = [("pretrained", results)]
    entries += [(name.replace("_", " "), entry) for name, entry in (results.get("baselines") or {}).items()]
    rows = []
    for name, entry in entries:
        cells = {key: _cell(key, entry.get(key)) for key, _ in PROTOCOLS if isinstance(entry, dict)}
        cells = {key: value for key, value in cells.items() if value is not None}
        if cells:
            rows.append({"name": name, "cells": cells})
    return rows


def _columns(results: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    keys = [key for key, _ in PROTOCOLS if any(key in row["cells"] for row in rows)]
    knn = results.get("knn") or {}
    labels = []
    for key, label in PROTOCOLS:
        if key not in keys:
            continue
        if key == "knn" and "k" in knn and "temperature" in knn:
            label += f" (k={knn['k']}, T={knn['temperature']:g})"
        labels.append(label)
    return keys, ["features", *labels]


def format_table(results: dict[str, Any]) -> str:
    """An aligned plain-text table of the results, under a line naming the model and data.

    Args:
        results: the dict :func:`~hf_ssl.evaluation.evaluate` returns.

    Returns:
        For example::

            runs/simclr-digits on digits: train on 'train' (1500), test on 'test' (297), 10 classes
            features     kNN accuracy (k=20, T=0.07)  linear probe accuracy
            -----------  ---------------------------  ---------------------
            pretrained                         93.6%                  94.3%
            random init                        80.1%                  88.2%
            raw pixels                         96.3%                  95.6%
    """
    rows = result_rows(results)
    keys, headers = _columns(results, rows)
    cells = [[row["name"], *(row["cells"].get(key, "-") for key in keys)] for row in rows]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        first, *rest = values
        padded = [first.ljust(widths[0])] + [value.rjust(width) for value, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(padded).rstrip()

    lines = [line(headers), "  ".join("-" * w for w in widths)] + [line(c) for c in cells]
    caption = _caption(results)
    return "\n".join(([caption] if caption else []) + lines + _extra_lines(results))


def _extra_lines(results: dict[str, Any]) -> list[str]:
    """The best layer where features were evaluated per layer, then one line per objective-specific measure
    (``results["extra_metrics"]``), e.g. ``mlm: accuracy 0.412, perplexity 123``."""
    lines = []
    for name, entry in [("pretrained", results), *(results.get("baselines") or {}).items()]:
        if isinstance(entry, dict) and entry.get("best_layer") is not None:  # per-layer features: say which
            best = entry["layers"][entry["best_layer"]]
            lines.append(
                f"{name.replace('_', ' ')}: rows show {entry['layer']}; best layer {entry['best_layer']} "
                f"(kNN {_cell('knn', best['knn'])}, linear probe {_cell('linear_probe', best['linear_probe'])})"
            )
    for key in results.get("extra_metrics") or ():
        entry = results.get(key)
        if isinstance(entry, dict):
            values = [f"{name} {value:.4g}" for name, value in entry.items() if isinstance(value, int | float)]
            lines.append(f"{key}: {', '.join(values)}")
    return lines


def _caption(results: dict[str, Any]) -> str:
    if "model" not in results:
        return ""
    if results.get("task") == "sts":  # nothing is fitted: one split of scored pairs
        source = f"{results['model']} on {results.get('dataset', '?')}"
        return f"{source}: {results.get('num_test')} pairs of {results.get('split')!r}"
    classes = f", {results['num_classes']} classes" if results.get("num_classes") else ""
    return (
        f"{results['model']} on {results.get('dataset', '?')}: train on {results.get('train_split')!r} "
        f"({results.get('num_train')}), test on {results.get('split')!r} ({results.get('num_test')}){classes}"
    )


def format_markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (no caption), for model cards and READMEs.

    Args:
        results: the dict :func:`~hf_ssl.evaluation.evaluate` returns.

    Returns:
        ``| features | kNN accuracy (k=20, T=0.07) | linear probe accuracy |`` then one row per feature set.
    """
    rows = result_rows(results)
    keys, headers = _columns(results, rows)
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * len(keys)]
    lines += ["| " + " | ".join([row["name"], *(row["cells"].get(k, "-") for k in keys)]) + " |" for row in rows]
    return "\n".join(lines)
