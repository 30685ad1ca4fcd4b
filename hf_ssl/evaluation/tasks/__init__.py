"""Evaluation tasks per data kind: how a checkpoint's inputs are made from raw rows, and the task's own baselines.

A task is chosen by the modality of the checkpoint's :class:`~hf_ssl.evaluation.features.FeatureSpec`; each module
here registers one.
"""

# each registers its task: audio, image and text classification, STS (sentence pairs with a similarity score)
from hf_ssl.evaluation.tasks import audio_classification, image_classification, sts, text_classification  # noqa: F401
from hf_ssl.evaluation.tasks.base import ClassificationTask, FeatureCollator, Preprocessor, get_task, register_task

__all__ = ["ClassificationTask", "FeatureCollator", "Preprocessor", "get_task", "register_task"]
