"""Hydra-configured PyTorch Lightning image classification."""

from image_classification.checkpoint import load_network, read_checkpoint
from image_classification.config import register_resolvers
from image_classification.data import DataModule
from image_classification.inference import Model, load_model
from image_classification.module import ClassificationModule

__all__ = ["ClassificationModule", "DataModule", "Model", "load_model", "load_network", "read_checkpoint"]

register_resolvers()
