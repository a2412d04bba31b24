"""Jigsaw-puzzle networks (Noroozi & Favaro, 2016): the context-free network around any trunk, and the
classic AlexNet-like jigsaw CNN, which also serves as an ordinary classifier or feature extractor."""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from image_classification.networks.features import feature_count
from image_classification.networks.weights import load_weights


class JigsawCNN(nn.Module):
    """The jigsaw CNN: conv-BN-ReLU layers (AlexNet's conv1-conv5 at the paper's sizes), max-pooling after the
    layers ``pool_after`` names, then average pooling to ``pool_size`` x ``pool_size`` and a linear head.

    With ``num_classes=0`` it has no head and returns the pooled features (``num_features`` of them), as timm
    networks do: the trunk of a :class:`JigsawNetwork`, or a frozen feature extractor.

    Args:
        channels, kernel_sizes, strides: one entry per conv layer.
        pool_after: indices of the layers followed by a 3x3 max-pooling of stride 2.
        pool_size: the side of the feature map the features are pooled to (the paper's 3: conv5 is 3x3 for
            64 px tiles); 1 is global average pooling.
        checkpoint: a weights file to start from (a saved jigsaw feature extractor, or any checkpoint of this
            network); a head for another number of classes is left out.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        channels: Sequence[int] = (96, 256, 384, 384, 256),
        kernel_sizes: Sequence[int] = (11, 5, 3, 3, 3),
        strides: Sequence[int] = (2, 1, 1, 1, 1),
        pool_after: Sequence[int] = (0, 1, 4),
        pool_size: int = 3,
        dropout: float = 0.0,
        checkpoint: str | Path | None = None,
    ):
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(strides):
            raise ValueError(
                f"JigsawCNN needs one kernel size and one stride per conv layer: {len(channels)} channels, "
                f"{len(kernel_sizes)} kernel_sizes, {len(strides)} strides"
            )
        if any(not 0 <= i < len(channels) for i in pool_after):
            raise ValueError(f"JigsawCNN pool_after {list(pool_after)} names layers beyond its {len(channels)}")
        layers: list[nn.Module] = []
        width = in_chans
        for i, (out, kernel, stride) in enumerate(zip(channels, kernel_sizes, strides, strict=True)):
            layers += [
                nn.Conv2d(width, out, kernel, stride=stride, padding=kernel // 2, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if i in pool_after:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            width = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool_size), nn.Flatten())
        self.num_features = width * pool_size * pool_size
        self.num_classes = num_classes
        self.head = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
            if num_classes
            else nn.Identity()
        )
        if checkpoint:
            load_weights(self, checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_features(self, x):
        """The last convolutional feature map, before pooling (B x C x H x W): patch-level features."""
        return self.features[:-2](x)


class JigsawNetwork(nn.Module):
    """The context-free network: one ``trunk`` shared by every tile, each tile's features through the first
    fully connected layer of ``fc`` (Noroozi's fc6), the tiles concatenated in puzzle order, the other layers
    of ``fc`` (fc7, ...) and a linear classifier over the permutations.

    Input: B x T x C x H x W puzzles (T tiles each); output: B x ``num_classes`` permutation logits.

    Args:
        trunk: any network that maps a batch of tiles to B x F features and says F as ``num_features``: the
            :class:`JigsawCNN`, or a timm ResNet, ViT or Swin built with ``num_classes=0``.
        n_tiles: tiles per side of the puzzle.
        fc: widths of the fully connected layers, each followed by batch norm and ReLU; an empty list
            concatenates the trunk's features straight into the classifier.
    """

    def __init__(
        self,
        trunk: nn.Module,
        num_classes: int,
        n_tiles: int = 3,
        fc: Sequence[int] = (1024, 4096),
        dropout: float = 0.5,
    ):
        super().__init__()
        features = feature_count(trunk, "the jigsaw trunk")
        self.trunk = trunk
        self.tiles = n_tiles * n_tiles
        widths = list(fc)

        def block(inputs: int, outputs: int) -> list[nn.Module]:
            return [nn.Linear(inputs, outputs, bias=False), nn.BatchNorm1d(outputs), nn.ReLU(inplace=True)]

        self.tile_fc = nn.Sequential(*block(features, widths[0])) if widths else nn.Identity()
        width = (widths[0] if widths else features) * self.tiles
        layers: list[nn.Module] = []
        for out in widths[1:]:
            layers += [nn.Dropout(dropout), *block(width, out)]
            width = out
        self.fc = nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, puzzles: torch.Tensor) -> torch.Tensor:
        if puzzles.ndim != 5 or puzzles.shape[1] != self.tiles:
            raise ValueError(
                f"a jigsaw network of {self.tiles} tiles takes B x {self.tiles} x C x H x W puzzles, "
                f"got {tuple(puzzles.shape)}"
            )
        batch = puzzles.shape[0]
        features = self.tile_fc(self.trunk(puzzles.flatten(0, 1)))
        return self.fc(features.reshape(batch, -1))
