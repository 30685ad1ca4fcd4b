"""Evaluation tasks, registered by ``(name, data kind)`` as objectives are: classification of every data kind (how a
checkpoint's inputs are made from raw rows, and the kind's baselines) and STS (scored sentence pairs).

``hf-ssl evaluate --task <name>`` runs the task of that name for the data kind of the checkpoint's
:class:`~hf_ssl.evaluation.features.FeatureSpec`; each module here registers one.
"""

from hf_ssl.evaluation.tasks import audio_classification, image_classification, sts, text_classification  # noqa: F401
from hf_ssl.evaluation.tasks.base import (
    CLASSIFICATION,
    TASKS,
    Checkpoint,
    FeatureCollator,
    Preprocessor,
    Task,
    choose_task,
    get_task,
    register_task,
)
from hf_ssl.evaluation.tasks.classification import ClassificationTask

__all__ = [
    "CLASSIFICATION",
    "TASKS",
    "Checkpoint",
    "ClassificationTask",
    "FeatureCollator",
    "Preprocessor",
    "Task",
    "choose_task",
    "get_task",
    "register_task",
]
