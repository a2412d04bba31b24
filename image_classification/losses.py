"""Losses that accept class indices or soft (probability) targets, like ``nn.CrossEntropyLoss``."""

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): cross-entropy scaled by ``(1 - p_t) ** gamma``.

    ``gamma=0`` is exactly cross-entropy. ``alpha`` optionally weights each class. With soft targets
    (mixup, label smoothing) the modulating factor applies to every class term.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: list[float] | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.register_buffer("alpha", None if alpha is None else torch.tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[-1]
        log_p = F.log_softmax(logits.float(), dim=-1)
        if target.dtype in (torch.long, torch.int, torch.int16, torch.uint8):
            target = F.one_hot(target.long(), num_classes).to(log_p.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        terms = -target * log_p * (1 - log_p.exp()).pow(self.gamma)
        if self.alpha is not None:
            terms = terms * self.alpha
        loss = terms.sum(dim=-1)
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss
