"""Evaluating a frozen backbone: a linear classifier, or k nearest neighbours, on its features."""

from pathlib import Path

import torch
from torch import nn

from image_classification.networks.features import feature_count
from image_classification.networks.weights import first_conv, load_weights, weights_digest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Backbone(nn.Module):
    """A frozen feature extractor: ``network`` (built as a feature extractor, ``num_classes=0``, so that it
    says ``num_features``) started from ``checkpoint``, never trained and always in eval mode, so neither its
    weights nor its batch-norm statistics change.

    The one interface of a vision backbone: ``backbone(images)`` gives image-level features (B x
    ``num_features``), :meth:`patch_features` patch-level ones where the architecture has them, and
    :meth:`eval_transform` the image transform the network expects (timm's and open_clip's pretrained
    preprocessing), where it says one.

    Args:
        network: any network config built with ``num_classes=0``: the jigsaw CNN, a timm ResNet, ViT or Swin.
        checkpoint: the weights: a jigsaw run's ``feature_extractor.pt``, a checkpoint of a supervised run
            (its classifier is left out with a warning), or a timm/torchvision state dict. None: as
            initialized (a random backbone, the baseline).
        dtype: the forward pass's precision: ``float32``, or ``bfloat16`` / ``float16`` under autocast.
    """

    def __init__(self, network: nn.Module, checkpoint: str | Path | None = None, dtype: str = "float32"):
        super().__init__()
        features = feature_count(network, "the backbone")
        if dtype not in DTYPES:
            raise ValueError(f"backbone dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.network = load_weights(network, checkpoint, "network.backbone.checkpoint") if checkpoint else network
        self.network.requires_grad_(False)
        self.network.eval()
        self.num_features = features
        conv = first_conv(self.network)[1]
        self.in_channels = conv.in_channels if conv is not None else None  # None: whatever the network takes
        self.dtype = DTYPES[dtype]
        self._digest: str | None = None

    def weights_digest(self) -> str:
        """SHA-256 of the backbone's weights and buffers, computed once: they are frozen, and loading others
        (``load_state_dict``) clears it."""
        if self._digest is None:
            self._digest = weights_digest(self)
        return self._digest

    def _load_from_state_dict(self, *args, **kwargs):
        self._digest = None
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        self.network.eval()  # batch-norm statistics and dropout stay as the backbone was trained
        return self

    def _precision(self, images: torch.Tensor):
        return torch.autocast(images.device.type, self.dtype, enabled=self.dtype != torch.float32)

    def _as_input(self, images: torch.Tensor) -> torch.Tensor:
        """Grey images for an RGB network (pretrained weights, open_clip): the channel repeated."""
        if self.in_channels == 3 and images.ndim == 4 and images.shape[1] == 1:
            return images.expand(-1, 3, -1, -1)
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self._as_input(images)
        with torch.no_grad(), self._precision(images):
            return self.network(images).float()

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-level features, B x N x D: a ViT's patch tokens (class and register tokens left out), a
        CNN's or a Swin's last feature map, one vector per position."""
        forward_features = getattr(self.network, "forward_features", None)
        if forward_features is None:
            raise ValueError(f"{type(self.network).__name__} gives no patch-level features (no forward_features)")
        images = self._as_input(images)
        with torch.no_grad(), self._precision(images):
            features = forward_features(images)
        if features.ndim == 4:  # a feature map: channels first, or last (timm's Swin says NHWC)
            channels_last = getattr(self.network, "output_fmt", "NCHW") == "NHWC"
            features = features.flatten(1, 2) if channels_last else features.flatten(2).transpose(1, 2)
        elif features.ndim == 3:  # tokens
            features = features[:, getattr(self.network, "num_prefix_tokens", 0) :]
        return features.float()

    def eval_transform(self):
        """The per-image transform the network expects (PIL image in, normalized tensor out): its own
        (``eval_transform()``: open_clip's preprocessing), timm's for its pretrained configuration, or None
        (a network of this framework: the data config's transforms)."""
        own = getattr(self.network, "eval_transform", None)
        if callable(own):
            return own()
        if getattr(self.network, "pretrained_cfg", None):
            from timm.data import create_transform, resolve_data_config

            return create_transform(**resolve_data_config({}, model=self.network), is_training=False)
        return None


class LinearProbe(nn.Module):
    """A linear classifier on a frozen :class:`Backbone`'s features.

    It takes images (the backbone runs in every step, with the data's augmentation) or features the backbone
    already computed (B x ``num_features``: cached features); either way only the head trains.

    Args:
        normalize: batch norm without affine parameters before the classifier (MAE's linear probe), so one
            learning rate suits backbones whose features have different scales.
    """

    def __init__(self, backbone: Backbone, num_classes: int, normalize: bool = False):
        super().__init__()
        self.backbone = backbone
        self.num_features = backbone.num_features
        norm = nn.BatchNorm1d(backbone.num_features, affine=False) if normalize else nn.Identity()
        self.head = nn.Sequential(norm, nn.Linear(backbone.num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x if x.ndim == 2 else self.backbone(x)
        return self.head(features)


class KNNProbe(nn.Module):
    """Weighted k-nearest-neighbour classification on a frozen :class:`Backbone`'s features (the protocol of
    InstDisc and DINO): the cosine similarities to the ``k`` nearest training features, each neighbour voting
    for its class with weight ``exp(similarity / temperature)``. The output is the log of the normalized votes,
    so the loss and ``nll`` metrics are those of the vote distribution.

    Nothing trains: :meth:`fit` stores the training features and labels (buffers, saved in checkpoints).

    Args:
        normalize: compare L2-normalized features (cosine similarity); False: raw dot products.
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, k: int = 20, temperature: float = 0.07, normalize: bool = True
    ):
        super().__init__()
        if k < 1 or temperature <= 0:
            raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
        self.backbone = backbone
        self.num_features = backbone.num_features
        self.num_classes = num_classes
        self.k = k
        self.temperature = temperature
        self.normalize = normalize
        self.register_buffer("bank", torch.zeros(0, backbone.num_features))
        self.register_buffer("bank_labels", torch.zeros(0, dtype=torch.long))

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "KNNProbe":
        self.bank = self._normalized(features).to(self.bank.device)
        self.bank_labels = labels.long().to(self.bank.device)
        return self

    def _normalized(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(features.float(), dim=1) if self.normalize else features.float()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("bank", "bank_labels"):  # a checkpoint's bank has its own size
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.bank) == 0:
            raise RuntimeError("KNNProbe has no training features: call fit(features, labels) first")
        features = self._normalized(x if x.ndim == 2 else self.backbone(x))
        similarity, index = (features @ self.bank.T).topk(min(self.k, len(self.bank)), dim=1)
        weights = (similarity / self.temperature).exp()
        votes = torch.zeros(len(x), self.num_classes, device=x.device).scatter_add_(1, self.bank_labels[index], weights)
        return (votes / votes.sum(dim=1, keepdim=True)).clamp_min(1e-12).log()
