"""A CNN small enough to train on a CPU in seconds."""

from collections.abc import Sequence

from torch import nn


class SmallCNN(nn.Module):
    """Conv-BN-ReLU stages with 2x2 max-pooling between them, global average pooling and a linear head.

    Global pooling makes it input-size agnostic: 8x8 digits, 28x28 MNIST and 32x32 CIFAR all fit.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256),
        convs_per_stage: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = channels
        self.num_classes = num_classes
        # num_classes=0: no head, the pooled features out (a backbone, as timm networks do)
        self.head = (
            nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes)) if num_classes else nn.Identity()
        )

    def forward(self, x):
        return self.head(self.features(x))

    def forward_features(self, x):
        """The last convolutional feature map, before pooling (B x C x H x W): patch-level features."""
        return self.features[:-2](x)
