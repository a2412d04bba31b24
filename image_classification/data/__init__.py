"""Data: the DataModule, the datasets, held-out splits, the ImageNet layouts, shards, and jigsaw puzzles."""

from image_classification.data.datamodule import DataModule, TransformedSubset, class_names, usable_cpus
from image_classification.data.datasets import CIFAR10, Digits, ImageFolder, image_folder, image_folder_classes
from image_classification.data.imagenet import TinyImageNet, imagenet
from image_classification.data.jigsaw import Jigsaw, reassemble
from image_classification.data.permutations import permutation_set
from image_classification.data.shards import Shards, shard_channels, shard_classes
from image_classification.data.splits import dataset_targets, stratified_hold_out
from image_classification.data.unlabeled import Unlabeled, UnlabeledImages

__all__ = [
    "CIFAR10",
    "DataModule",
    "Digits",
    "ImageFolder",
    "Jigsaw",
    "Shards",
    "TinyImageNet",
    "TransformedSubset",
    "Unlabeled",
    "UnlabeledImages",
    "class_names",
    "dataset_targets",
    "image_folder",
    "image_folder_classes",
    "imagenet",
    "permutation_set",
    "reassemble",
    "shard_channels",
    "shard_classes",
    "stratified_hold_out",
    "usable_cpus",
]
