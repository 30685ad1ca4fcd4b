"""Evaluation tasks per data kind: how a checkpoint's inputs are made from raw rows, and the task's own baselines.

A task is chosen by the modality of the checkpoint's :class:`~hf_ssl.evaluation.features.FeatureSpec`; each module
here registers one (image classification today; text and audio tasks register the same way as they land).
"""

from hf_ssl.evaluation.tasks import audio_classification  # noqa: F401  (registers the audio task)
from hf_ssl.evaluation.tasks import image_classification  # noqa: F401  (registers the image task)
from hf_ssl.evaluation.tasks import text_classification  # noqa: F401  (registers the text task)
from hf_ssl.evaluation.tasks.base import ClassificationTask, FeatureCollator, Preprocessor, get_task, register_task

__all__ = ["ClassificationTask", "FeatureCollator", "Preprocessor", "get_task", "register_task"]
