"""What a network used as a feature extractor must say about itself."""

from torch import nn


def feature_count(network: nn.Module, role: str) -> int:
    """How many features ``network`` returns (its ``num_features``); an error unless it was built as a
    feature extractor (``num_classes=0``), naming it by its ``role`` ("the jigsaw trunk", "the backbone")."""
    features = getattr(network, "num_features", None)
    if not isinstance(features, int) or getattr(network, "num_classes", 0) != 0:
        raise ValueError(
            f"{role} {type(network).__name__} must return features: build it with num_classes=0 "
            "(timm networks, SmallCNN and JigsawCNN then give num_features)"
        )
    return features
