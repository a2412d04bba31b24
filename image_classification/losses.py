"""Losses that accept class indices or soft (probability) targets, like ``nn.CrossEntropyLoss``."""

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): cross-entropy with each class term scaled by ``(1 - p) ** gamma``.

    ``gamma=0`` is exactly ``nn.CrossEntropyLoss(weight=alpha, label_smoothing=...)``, including how a
    ``mean`` is taken with class weights: over the weights of the targets for class-index targets, over the
    batch for probability targets. With soft targets (mixup, label smoothing) the modulating factor applies
    to every class term.
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
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.register_buffer("alpha", None if alpha is None else torch.tensor(alpha, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[-1]
        log_p = F.log_softmax(logits.float(), dim=-1)
        hard = not target.is_floating_point()
        weights = torch.ones(num_classes, device=logits.device) if self.alpha is None else self.alpha
        if hard:
            target_weight = weights[target.long()]
            target = F.one_hot(target.long(), num_classes).to(log_p.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + self.label_smoothing / num_classes
        terms = -target * log_p * weights
        if self.gamma:
            # 1 - p, floored: its gamma-th power has an infinite slope at 0 when gamma < 1, which turns a
            # confident right answer's gradient into 0 * inf = NaN. Below the floor the factor is constant.
            one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
            terms = terms * one_minus_p.pow(self.gamma)
        loss = terms.sum(dim=-1)
        if self.reduction == "mean":
            return loss.sum() / target_weight.sum() if hard else loss.mean()
        return loss.sum() if self.reduction == "sum" else loss
