"""Evaluating backbones: cached features, closed-form probes (logistic regression, kNN) and reports."""

from image_classification.checkpoint import weights_digest
from image_classification.evaluation.features import FeatureCache, clear_memory
from image_classification.evaluation.probes import (
    LogisticRegression,
    NearestNeighbours,
    fit_closed_form,
    logistic_regression,
)

__all__ = [
    "FeatureCache",
    "LogisticRegression",
    "NearestNeighbours",
    "clear_memory",
    "fit_closed_form",
    "logistic_regression",
    "weights_digest",
]
