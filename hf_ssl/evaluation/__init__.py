"""Evaluation of frozen representations: feature extraction, weighted kNN, linear probe, result tables.

``evaluate(args)`` is what ``hf-ssl evaluate`` runs; the pieces work on any ``(N, F)`` feature tensors too.
"""

from hf_ssl.evaluation.features import extract_feature_sets, extract_features, raw_pixels
from hf_ssl.evaluation.knn import knn_accuracy, knn_predict
from hf_ssl.evaluation.linear_probe import LinearProbe, fit_linear_probe, linear_probe_accuracy
from hf_ssl.evaluation.pipeline import evaluate, image_preprocessing, load_backbone, random_init_backbone
from hf_ssl.evaluation.report import format_markdown_table, format_table, result_rows

__all__ = [
    "LinearProbe",
    "evaluate",
    "extract_feature_sets",
    "extract_features",
    "fit_linear_probe",
    "format_markdown_table",
    "format_table",
    "image_preprocessing",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "load_backbone",
    "random_init_backbone",
    "raw_pixels",
    "result_rows",
]
