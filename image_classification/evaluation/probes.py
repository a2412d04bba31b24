"""Closed-form fits of a probe on cached features: multinomial logistic regression with L-BFGS and a search
over the L2 strength on the validation split (the CLIP protocol), and k nearest neighbours."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from image_classification.errors import UserError
from image_classification.evaluation.features import resolve_device

log = logging.getLogger(__name__)
Split = tuple[torch.Tensor, torch.Tensor]  # (features N x D, labels N)


def logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 1000,
    tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS: minimises ``mean cross-entropy + l2 / 2 * ||W||^2`` (the
    bias is not penalized), which is scikit-learn's ``LogisticRegression(C=1 / (l2 * N))``.

    Returns ``(weight C x D, bias C)``; ``init`` warm-starts from another solution.
    """
    x, y = features.float(), labels.long().to(features.device)
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device)
    bias = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    if init is not None:
        weight.copy_(init[0]), bias.copy_(init[1])
    weight.requires_grad_(True), bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _score(
    weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    logits = features @ weight.T + bias
    return (logits.argmax(1) == labels).float().mean().item(), F.cross_entropy(logits, labels).item()


class LogisticRegression:
    """Fits a :class:`~image_classification.networks.LinearProbe`'s head as a multinomial logistic regression
    on the training split's features, with the L2 strength that scores best on the validation split (accuracy,
    then the lower validation loss).

    The search is CLIP's: the strengths ``10^start_exponents`` first, then, around the best so far, steps
    halving in the exponent until ``steps_per_decade``. Features are standardized with the training split's
    mean and standard deviation (the probe's ``normalize`` batch norm holds them; without one they are folded
    into the weights), so one grid suits every backbone.

    Args:
        start_exponents: the first strengths' base-10 exponents.
        steps_per_decade: the finest step of the search.
        max_iter: L-BFGS iterations per fit.
        device: where the fits run: ``auto`` (the GPU when there is one), ``cpu``, ``cuda``, ...
    """

    def __init__(
        self,
        start_exponents: tuple[float, ...] = (-6, -4, -2, 0, 2, 4, 6),
        steps_per_decade: int = 8,
        max_iter: int = 1000,
        device: str = "auto",
    ):
        if not start_exponents or steps_per_decade < 1:
            raise UserError("fit: LogisticRegression needs start_exponents and steps_per_decade >= 1")
        self.start_exponents = sorted(float(e) for e in start_exponents)
        self.steps_per_decade = steps_per_decade
        self.max_iter = max_iter
        self.device = resolve_device(device)

    def search(
        self, train: Split, val: Split, num_classes: int
    ) -> tuple[float, tuple[torch.Tensor, torch.Tensor], list[dict[str, float]]]:
        """The best L2 strength's exponent, its fit ``(weight, bias)``, and every strength tried with its
        validation scores."""
        tried: dict[float, tuple[float, float]] = {}
        solutions: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

        def evaluate(exponent: float) -> None:
            if exponent in tried:
                return
            nearest = min(solutions, key=lambda e: abs(e - exponent), default=None)
            init = solutions[nearest] if nearest is not None else None
            solutions[exponent] = logistic_regression(*train, num_classes, 10**exponent, init, self.max_iter)
            tried[exponent] = _score(*solutions[exponent], *val)

        def best() -> float:
            return max(tried, key=lambda e: (tried[e][0], -tried[e][1]))

        for exponent in self.start_exponents:
            evaluate(exponent)
        gaps = [b - a for a, b in zip(self.start_exponents, self.start_exponents[1:], strict=False)]
        step = (min(gaps) if gaps else 1.0) / 2
        while step >= 1 / self.steps_per_decade - 1e-9:
            centre = best()
            evaluate(centre - step)
            evaluate(centre + step)
            step /= 2
        table = [{"l2": 10**e, "val_acc": a, "val_loss": loss} for e, (a, loss) in sorted(tried.items())]
        return best(), solutions[best()], table

    def __call__(self, network: nn.Module, train: Split, val: Split) -> dict[str, Any]:
        head = getattr(network, "head", None)
        if not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Linear):
            raise UserError("fit=logistic fits a linear probe's head: use network=linear_probe")
        linear, norm = head[-1], head[0]
        features = train[0].to(self.device, torch.float64)
        mean, var = features.mean(0), features.var(0, unbiased=False)
        eps = norm.eps if isinstance(norm, nn.BatchNorm1d) else 1e-5
        std = (var + eps).sqrt()

        def standardize(split: Split) -> Split:
            x = (split[0].to(self.device, torch.float64) - mean) / std
            return x.float(), split[1].to(self.device).long()

        train_std, val_std = standardize(train), standardize(val)
        exponent, (weight, bias), table = self.search(train_std, val_std, linear.out_features)
        with torch.no_grad():
            if isinstance(norm, nn.BatchNorm1d):  # the probe's own normalization holds the training statistics
                norm.running_mean.copy_(mean), norm.running_var.copy_(var)
            else:  # folded into the weights: W (x - m) / s + b
                weight, bias = weight.double() / std, bias.double() - (weight.double() / std) @ mean
            linear.weight.copy_(weight), linear.bias.copy_(bias)  # copy_ converts dtype and device
        accuracy = next(row["val_acc"] for row in table if row["l2"] == 10**exponent)
        log.info(f"Logistic regression: L2 strength {10**exponent:.3g} of {len(table)} tried, val acc {accuracy:.4f}")
        return {"l2": 10**exponent, "search": table}


class NearestNeighbours:
    """Fits a :class:`~image_classification.networks.KNNProbe`: it keeps the training split's features."""

    def __call__(self, network: nn.Module, train: Split, val: Split) -> dict[str, Any]:
        if not hasattr(network, "bank"):
            raise UserError("fit=knn fits a k-nearest-neighbour probe: use network=knn_probe")
        network.fit(*train)
        return {"k": network.k, "temperature": network.temperature, "bank_size": len(train[0])}


def fit_closed_form(fit: Callable, trainer, module, datamodule, path: str | Path) -> tuple[str, dict[str, Any]]:
    """Fit ``module``'s probe in closed form on the cached training features, validate it, and save it as a
    checkpoint: ``last.ckpt`` in the run's checkpoint directory, else ``path`` (what the run then tests).
    Returns the checkpoint's path and what the fit chose."""
    chosen = fit(module.network, datamodule.cached_features("train"), datamodule.cached_features("val"))
    trainer.validate(module, datamodule=datamodule, verbose=False)
    directory = getattr(trainer.checkpoint_callback, "dirpath", None)
    path = Path(directory) / "last.ckpt" if directory else Path(path)
    trainer.save_checkpoint(path, weights_only=False)  # with the callbacks' state, as the run's others
    return str(path), chosen
