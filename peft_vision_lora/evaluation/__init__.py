"""Evaluation: metrics over local metric modules, a saved classifier on a dataset, and the pictures of the results."""

from .folder import default_output_dir, evaluate_folder
from .metrics import compute_metrics, evaluate_model, load_metric, predict_logits

__all__ = [
    "compute_metrics",
    "default_output_dir",
    "evaluate_folder",
    "evaluate_model",
    "load_metric",
    "predict_logits",
]
