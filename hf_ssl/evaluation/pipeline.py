"""``hf-ssl evaluate``: a checkpoint's frozen backbone measured by a registered task, with baselines.

Modality-neutral: the checkpoint's :class:`~hf_ssl.evaluation.features.FeatureSpec` names its data kind, and
``--task`` (or, with ``auto``, the evaluated split's columns) one of that kind's tasks (:mod:`hf_ssl.evaluation.tasks`:
classification, STS), which reads the rows, brings its baselines and returns the results.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import load_features
from hf_ssl.evaluation.tasks import Checkpoint, choose_task, get_task

logger = logging.getLogger(__name__)


def evaluate(args: EvaluationArguments) -> dict[str, Any]:
    """A checkpoint's backbone evaluated by the task of its data kind that ``args.task`` names: kNN and
    linear-probe accuracy on labelled rows (:class:`~hf_ssl.evaluation.tasks.classification.ClassificationTask`), or
    STS correlations on scored sentence pairs (:class:`~hf_ssl.evaluation.tasks.sts.STSTask`).

    The task is chosen, and the arguments checked, before the backbone is loaded (once, with
    ``AutoModel.from_pretrained``); the backbone's feature spec gives its data kind and pooler, the task the
    preprocessing (from the checkpoint's own config) and baselines.

    Args:
        args: :class:`~hf_ssl.evaluation.arguments.EvaluationArguments`.

    Returns:
        The task's JSON-able results (``model``, ``modality``, ``features``, ``dataset``, ``split``, the protocols'
        results and ``baselines``); also written to ``args.output_file`` when given.

    Raises:
        UsageError: a missing checkpoint, split, input or label column (the message lists what exists), unusable
            labels, or a checkpoint whose weights do not fit its backbone.
    """
    started = time.perf_counter()
    name, evaluated = choose_task(args)
    checkpoint = load_checkpoint(args)
    task = get_task(checkpoint.spec.modality, name)
    results = task.run(args, checkpoint, task.load(args) if evaluated is None else evaluated)
    logger.info("evaluated (%s) in %.1f s", task.name, time.perf_counter() - started)
    write_results(results, args.output_file)
    return results


def load_checkpoint(args: EvaluationArguments) -> Checkpoint:
    """The backbone of ``args.model_name_or_path`` and its feature spec (:func:`load_features`), read once."""
    model, spec = load_features(args.model_name_or_path, timm_checkpoint=args.timm_checkpoint)
    return Checkpoint(args.model_name_or_path, model, spec)


def write_results(results: dict[str, Any], output_file: str | None) -> None:
    """Write ``results`` as indented JSON to ``output_file`` (its folder made), when one is given."""
    if not output_file:
        return
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w") as handle:
        json.dump(results, handle, indent=2)
        handle.write("\n")
    logger.info("wrote %s", output_file)
