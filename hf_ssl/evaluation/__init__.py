"""Evaluation of frozen representations: feature extraction, weighted kNN, linear probe, result tables.

``evaluate(EvaluationArguments(...))`` is what ``hf-ssl evaluate`` runs; the pieces work on any ``(N, F)`` feature
tensors too.
"""

from hf_ssl.backbones import random_init_backbone
from hf_ssl.evaluation.arguments import EvaluationArguments
from hf_ssl.evaluation.features import (
    FeatureSpec,
    extract_feature_sets,
    extract_features,
    feature_spec,
    load_features,
    register_features,
)
from hf_ssl.evaluation.knn import knn_accuracy, knn_predict
from hf_ssl.evaluation.linear_probe import LinearProbe, fit_linear_probe, linear_probe_accuracy
from hf_ssl.evaluation.pipeline import evaluate
from hf_ssl.evaluation.report import format_markdown_table, format_table, result_rows
from hf_ssl.evaluation.tasks import ClassificationTask, FeatureCollator, get_task, register_task
from hf_ssl.evaluation.tasks.image_classification import image_data_config, image_preprocessor, raw_pixels

__all__ = [
    "ClassificationTask",
    "EvaluationArguments",
    "FeatureCollator",
    "FeatureSpec",
    "LinearProbe",
    "evaluate",
    "extract_feature_sets",
    "extract_features",
    "feature_spec",
    "fit_linear_probe",
    "format_markdown_table",
    "format_table",
    "get_task",
    "image_data_config",
    "image_preprocessor",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "load_features",
    "random_init_backbone",
    "raw_pixels",
    "register_features",
    "register_task",
    "result_rows",
]
