"""Evaluation results as text: an aligned table for the terminal, Markdown for model cards."""

from __future__ import annotations

from typing import Any

# (row name, where its results sit in the evaluate() dict)
_ROWS = (
    ("pretrained", ()),
    ("random init", ("baselines", "random_init")),
    ("raw pixels", ("baselines", "raw_pixels")),
)


def _percent(entry: dict[str, Any] | None) -> str:
    accuracy = (entry or {}).get("accuracy")
    return "-" if accuracy is None else f"{100 * accuracy:.1f}%"


def result_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per evaluated feature set, accuracies as percent strings (``"-"`` where absent).

    Args:
        results: the dict :func:`~hf_ssl.evaluation.evaluate` returns (or its JSON file, loaded).

    Returns:
        ``[{"name": "pretrained", "knn": "93.4%", "linear_probe": "95.0%"}, ...]``: the pretrained backbone,
        then the random-init and raw-pixel baselines that were evaluated (what the model card template reads).
    """
    rows = []
    for name, path in _ROWS:
        entry: Any = results
        for key in path:
            entry = entry.get(key) if isinstance(entry, dict) else None
        if not isinstance(entry, dict):
            continue
        knn, probe = _percent(entry.get("knn")), _percent(entry.get("linear_probe"))
        rows.append({"name": name, "knn": knn, "linear_probe": probe})
    return rows


def _headers(results: dict[str, Any]) -> list[str]:
    knn = results.get("knn") or {}
    detail = f" (k={knn['k']}, T={knn['temperature']:g})" if "k" in knn and "temperature" in knn else ""
    return ["features", f"kNN accuracy{detail}", "linear probe accuracy"]


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
    headers = _headers(results)
    cells = [[row["name"], row["knn"], row["linear_probe"]] for row in result_rows(results)]
    widths = [max(len(line[i]) for line in [headers, *cells]) for i in range(len(headers))]

    def line(values: list[str]) -> str:
        first, *rest = values
        padded = [first.ljust(widths[0])] + [value.rjust(width) for value, width in zip(rest, widths[1:], strict=True)]
        return "  ".join(padded).rstrip()

    lines = [line(headers), "  ".join("-" * w for w in widths)] + [line(c) for c in cells]
    caption = _caption(results)
    return "\n".join(([caption] if caption else []) + lines)


def _caption(results: dict[str, Any]) -> str:
    if "model" not in results:
        return ""
    return (
        f"{results['model']} on {results.get('dataset', '?')}: train on {results.get('train_split')!r} "
        f"({results.get('num_train')}), test on {results.get('split')!r} ({results.get('num_test')}), "
        f"{results.get('num_classes')} classes"
    )


def format_markdown_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (no caption), for model cards and READMEs.

    Args:
        results: the dict :func:`~hf_ssl.evaluation.evaluate` returns.

    Returns:
        ``| features | kNN accuracy (k=20, T=0.07) | linear probe accuracy |`` then one row per feature set.
    """
    headers = _headers(results)
    lines = ["| " + " | ".join(headers) + " |", "|---|---:|---:|"]
    lines += [f"| {row['name']} | {row['knn']} | {row['linear_probe']} |" for row in result_rows(results)]
    return "\n".join(lines)
