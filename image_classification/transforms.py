"""Transforms of whole batches, for ``data.train_batch_transform`` / ``data.eval_batch_transform``: they run
after the batch reaches the training device, once per batch instead of once per image. They take and
return ``(images, labels)``, so they compose with torchvision's v2 transforms in ``v2.Compose``."""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2


class RandomShift(nn.Module):
    """Shifts each image of an ``N x C x H x W`` batch by its own random offset of up to ``max_shift`` pixels
    in each direction, filling the uncovered border with ``fill``: ``v2.RandomCrop(size, padding=max_shift)``
    applied image by image, in one vectorised gather."""

    def __init__(self, max_shift: int, fill: float = 0.0):
        super().__init__()
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.fill = fill

    def forward(self, images: torch.Tensor, *rest):
        if self.max_shift == 0:
            return (images, *rest) if rest else images
        n, c, h, w = images.shape
        s, device = self.max_shift, images.device
        padded = F.pad(images, (s, s, s, s), value=self.fill)
        dy = torch.randint(0, 2 * s + 1, (n, 1), device=device)
        dx = torch.randint(0, 2 * s + 1, (n, 1), device=device)
        rows = (dy + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        channel = torch.arange(c, device=device)[None, :, None, None]
        shifted = padded[batch, channel, rows, cols]
        return (shifted, *rest) if rest else shifted


class Normalize(v2.Normalize):
    """torchvision's ``Normalize`` that also takes uint8 images, scaling them to [0, 1] first (as ``ToDtype(float32,
    scale=True)`` then ``Normalize`` would, in one pass less): the batch transform that turns the loaders' uint8
    images into the network's input on the training device, so that workers decode, crop and collate 1-byte pixels
    instead of 4-byte ones."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False):
        super().__init__(mean, std, inplace)
        # (x / 255 - mean) / std as x * scale - shift: the float conversion, then two passes in place
        std_ = torch.tensor(self.std).view(-1, 1, 1)
        self.scale, self.shift = 1 / (255 * std_), torch.tensor(self.mean).view(-1, 1, 1) / std_
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, torch.Tensor) or inpt.dtype != torch.uint8:
            return super().transform(inpt, params)
        if inpt.device not in self._on_device:  # copied to a device once, not with every batch
            self._on_device[inpt.device] = (self.scale.to(inpt.device), self.shift.to(inpt.device))
        scale, shift = self._on_device[inpt.device]
        out = inpt.as_subclass(torch.Tensor).to(torch.float32).mul_(scale).sub_(shift)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out
