"""The networks: a small CNN, the jigsaw networks and the probes of our own, every timm architecture through
one factory, and open_clip image towers."""

from image_classification.networks.jigsaw import JigsawCNN, JigsawNetwork
from image_classification.networks.linear_probe import Backbone, KNNProbe, LinearProbe
from image_classification.networks.open_clip import OpenCLIPVisual
from image_classification.networks.small_cnn import SmallCNN
from image_classification.networks.timm_models import timm_network

# What a network can be: every name here may be built from a checkpoint's config by `load_network`, so
# nothing that instantiates configs or runs commands belongs in this list (load_network clears the
# `checkpoint` and `pretrained` arguments a network starts from: the checkpoint's own weights replace them).
__all__ = [
    "Backbone",
    "JigsawCNN",
    "JigsawNetwork",
    "KNNProbe",
    "LinearProbe",
    "OpenCLIPVisual",
    "SmallCNN",
    "timm_network",
]
