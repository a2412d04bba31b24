"""Evaluating backbones: cached features, closed-form probes (logistic regression, kNN) and reports."""

from image_classification.evaluation.features import FeatureCache, clear_memory, resolve_device
from image_classification.evaluation.probes import (
    LogisticRegression,
    NearestNeighbours,
    fit_closed_form,
    logistic_regression,
)
from image_classification.networks.weights import weights_digest

__all__ = [
    "FeatureCache",
    "LogisticRegression",
    "NearestNeighbours",
    "clear_memory",
    "fit_closed_form",
    "logistic_regression",
    "resolve_device",
    "weights_digest",
]
