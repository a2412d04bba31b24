"""Using a trained model: its network together with the preprocessing its run evaluated with and its class
names, rebuilt from the checkpoint file alone (``load_model``)."""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from image_classification.checkpoint import METADATA_KEY, network_from_checkpoint, read_checkpoint
from image_classification.data.datamodule import transform_tree
from image_classification.errors import UserError
from image_classification.evaluation.features import OnPILImages
from image_classification.trust import build_trusted, transform_allow_list

Image = PIL.Image.Image | torch.Tensor


class Preprocess:
    """A run's evaluation preprocessing, from images to the network's input batch: the per-image
    ``data.eval_transform`` (on the CPU, where a DataLoader's workers can run it), then the per-batch
    ``data.eval_batch_transform`` on the network's device, as the run's test step got them.

    Images are PIL images, converted as the run's datasets convert the files they read (to RGB, or to grey for
    ``channels=1``), or uint8 C x H x W tensors, taken as they are (the embedded digits are such tensors).

    Args:
        configs: the transforms' configs, ``{"image": ..., "batch": ...}``, for what an export writes beside
            the model.
    """

    def __init__(
        self,
        image_transform: Callable | None,
        batch_transform: Callable | None,
        channels: int | None = None,
        configs: dict[str, Any] | None = None,
    ):
        self.image_transform = image_transform
        self.batch_transform = batch_transform
        self.channels = channels
        self.configs = configs or {}
        for transform in (image_transform, batch_transform):
            for _, part in transform_tree("", transform):
                if isinstance(part, nn.Module):
                    part.eval()  # what augments in training does not here

    def image(self, image: Image) -> torch.Tensor:
        """One image through the per-image transforms, as a C x H x W tensor."""
        if isinstance(image, PIL.Image.Image):
            mode = {1: "L", 3: "RGB"}.get(self.channels)
            image = image.convert(mode) if mode and image.mode != mode else image
        elif not isinstance(image, torch.Tensor) or image.ndim != 3:
            raise UserError(f"an image must be a PIL image or a C x H x W tensor, got {type(image).__name__}")
        if self.image_transform is not None:
            image = self.image_transform(image)
        if isinstance(image, PIL.Image.Image):  # as the loader's collation needs it: v2.ToImage
            image = TF.pil_to_tensor(image)
        return image.as_subclass(torch.Tensor)  # a plain tensor, as a DataLoader's collation gives it

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """A stacked batch through the per-batch transforms (they take and return ``(images, labels)``)."""
        if self.batch_transform is None:
            return images
        labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
        return self.batch_transform(images, labels)[0]

    def __call__(self, images: Sequence[Image], device: str | torch.device | None = None) -> torch.Tensor:
        """The network's input for ``images``."""
        tensors = [self.image(image) for image in images]
        shapes = sorted({tuple(t.shape) for t in tensors})
        if len(shapes) > 1:
            raise UserError(
                f"the images are of {len(shapes)} sizes after the per-image transforms ({shapes[0]}, {shapes[1]}, "
                "...): this model's preprocessing does not bring them to one size; give one size at a time"
            )
        return self.batch(torch.stack(tensors).to(device))


class Model:
    """A trained network with its evaluation preprocessing and class names (:func:`load_model`).

    ``model.predict(images)`` gives the logits the run's test step would give for those images.
    """

    def __init__(
        self,
        network: nn.Module,
        preprocess: Preprocess,
        class_names: Sequence[str] | None,
        config: dict[str, Any],
        path: str | Path,
    ):
        self.network = network.eval()
        self.preprocess = preprocess
        self.class_names = list(class_names) if class_names is not None else None
        self.config = config
        self.path = Path(path)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters(), torch.empty(0)).device

    def to(self, device: str | torch.device) -> "Model":
        self.network.to(device)
        for _, part in transform_tree("", self.preprocess.batch_transform):
            if isinstance(part, nn.Module):
                part.to(device)
        return self

    @torch.inference_mode()
    def predict(self, images: Sequence[Image] | torch.Tensor) -> torch.Tensor:
        """The logits for ``images`` (PIL images, or uint8 tensors: a list, or one N x C x H x W tensor), in
        their order. Images that the per-image transforms leave in different sizes go through the network in
        one batch per size."""
        return self.logits([self.preprocess.image(image) for image in images])

    @torch.inference_mode()
    def logits(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The logits of images already through the per-image transforms, in their order: one batch per size."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, tensor in enumerate(tensors):
            by_size.setdefault(tuple(tensor.shape), []).append(i)
        logits: list[torch.Tensor | None] = [None] * len(tensors)
        for indices in by_size.values():
            for i, row in zip(indices, self.forward_batch(torch.stack([tensors[i] for i in indices])), strict=True):
                logits[i] = row
        logits = torch.stack(logits)
        if self.class_names is not None and logits.shape[-1] != len(self.class_names):
            raise UserError(
                f"{self.path} names {len(self.class_names)} classes but its network gives {logits.shape[-1]} scores"
            )
        return logits

    @torch.inference_mode()
    def forward_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """The logits of a batch already through the per-image transforms (stacked, on any device)."""
        return self.network(self.preprocess.batch(batch.to(self.device)))

    def name(self, index: int) -> str:
        return self.class_names[index] if self.class_names is not None else str(index)


def backbone_preprocessing(data: dict[str, Any], network: nn.Module) -> Callable | None:
    """The per-image preprocessing of a probe whose features were cached with its backbone's own
    (``data.features.transform=backbone``: a pretrained timm or open_clip model's resize, crop and normalization),
    on images as the datasets read them (uint8 tensors) or PIL images; None for any other network, which its data
    config's transforms preprocess."""
    features = data.get("features")
    if not (isinstance(features, dict) and features.get("transform") == "backbone"):
        return None
    transform = network.backbone.eval_transform() if hasattr(network, "backbone") else None
    if transform is None:
        raise UserError("the checkpoint's probe was trained on its backbone's preprocessing, which this backbone lacks")
    return OnPILImages(transform)


def build_preprocess(
    data: dict[str, Any],
    network: nn.Module,
    trusted_targets: Sequence[str] = (),
    state: dict[str, Any] | None = None,
) -> Preprocess:
    """The evaluation preprocessing of a checkpoint's ``data`` config, built under the transform allow-list.

    Args:
        network: the checkpoint's network: a probe whose features were cached with the backbone's own
            preprocessing (``data.features.transform=backbone``) is preprocessed by that backbone's.
        state: the DataModule state the checkpoint keeps (a stateful transform's, such as a jigsaw puzzle's
            permutation set).
    """
    own = backbone_preprocessing(data, network)
    if own is not None:
        return Preprocess(own, None, data.get("channels"), {"image": "backbone"})
    built = {}
    for name in ("eval_transform", "eval_batch_transform"):
        config = data.get(name)
        allowed = transform_allow_list(config, f"data.{name}", trusted_targets)
        built[name] = build_trusted(config, allowed, f"the checkpoint's data.{name}") if config else None
        if built[name] is not None and not callable(built[name]):
            raise UserError(f"the checkpoint's data.{name} builds a {type(built[name]).__name__}, not a transform")
        for where, part in transform_tree(name, built[name]):
            if isinstance(part, nn.Module) and isinstance(state, dict) and where in state:
                saved = state[where]
                if not (isinstance(saved, dict) and all(isinstance(v, torch.Tensor) for v in saved.values())):
                    raise UserError(f"the checkpoint's state of data.{where} is not a mapping of tensors")
                try:
                    part.load_state_dict(saved)
                except RuntimeError as err:
                    raise UserError(f"the checkpoint's state of data.{where} does not fit it: {err}") from None
    configs = {"image": data.get("eval_transform"), "batch": data.get("eval_batch_transform")}
    return Preprocess(built["eval_transform"], built["eval_batch_transform"], data.get("channels"), configs)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", trusted_targets: Sequence[str] = ()
) -> Model:
    """The trained network of a checkpoint with the preprocessing its run evaluated with and its class names.

    Nothing in the checkpoint's config runs but the constructors of networks and of torchvision v2 transforms
    and this package's (``v2.Lambda`` and any other ``_target_`` are refused), unless ``trusted_targets``
    (names, or ``"my_lab.*"`` patterns) vouches for more: give it only for checkpoints you trust.

    >>> model = load_model("logs/train/runs/<run>/checkpoints/last.ckpt")
    >>> logits = model.predict([PIL.Image.open("seven.png")])
    >>> model.name(logits.argmax(1)[0])
    """
    checkpoint = read_checkpoint(path, map_location)
    metadata = checkpoint[METADATA_KEY]
    network = network_from_checkpoint(checkpoint, path, map_location, trusted_targets)
    data = metadata["config"].get("data") or {}
    preprocess = build_preprocess(data, network, trusted_targets, checkpoint.get("DataModule"))
    return Model(network, preprocess, metadata.get("class_names"), metadata["config"], path).to(map_location)
