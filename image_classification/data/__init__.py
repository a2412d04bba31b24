"""Data: the DataModule, the datasets, held-out splits, and the ImageNet layouts."""

from image_classification.data.datamodule import DataModule, TransformedSubset, class_names, usable_cpus
from image_classification.data.datasets import CIFAR10, Digits, ImageFolder, image_folder, image_folder_classes
from image_classification.data.imagenet import TinyImageNet, imagenet
from image_classification.data.splits import dataset_targets, stratified_hold_out

__all__ = [
    "CIFAR10",
    "DataModule",
    "Digits",
    "ImageFolder",
    "TinyImageNet",
    "TransformedSubset",
    "class_names",
    "dataset_targets",
    "image_folder",
    "image_folder_classes",
    "imagenet",
    "stratified_hold_out",
    "usable_cpus",
]
