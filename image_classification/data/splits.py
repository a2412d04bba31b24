"""Held-out sets: stratified by class, reproducible from a seed."""

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset


def _quotas(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainders), summing to ``total``."""
    exact = counts * total / max(1, counts.sum())
    quotas = np.floor(exact).astype(int)
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[: total - quotas.sum()]] += 1
    return quotas


def stratified_hold_out(
    targets: Sequence[int] | None, n_items: int, sizes: Sequence[int], seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Hold out disjoint sets of ``sizes`` items, each with the class proportions of the whole (so a small
    class is represented), chosen by a permutation seeded with ``seed``; returns them and the rest.

    Without ``targets`` (a dataset that does not list its labels) the sets are plain random draws.
    """
    order = np.random.default_rng(seed).permutation(n_items)
    if targets is None or n_items == 0:
        bounds = np.cumsum([0, *sizes])
        return [order[a:b] for a, b in zip(bounds, bounds[1:], strict=False)], order[bounds[-1] :]
    labels = np.asarray(targets)[order]
    classes = np.unique(labels)
    remaining = {c: order[labels == c] for c in classes}  # each class's items, in permutation order
    position = np.empty(n_items, dtype=np.int64)
    position[order] = np.arange(n_items)

    def in_order(items: np.ndarray) -> np.ndarray:  # as the permutation drew them: classes interleaved
        return items[np.argsort(position[items])]

    held = []
    for size in sizes:
        counts = np.array([len(remaining[c]) for c in classes])
        quotas = _quotas(counts, size)
        held.append(in_order(np.concatenate([remaining[c][:q] for c, q in zip(classes, quotas, strict=True)])))
        remaining = {c: remaining[c][q:] for c, q in zip(classes, quotas, strict=True)}
    return held, in_order(np.concatenate(list(remaining.values())))


def dataset_targets(dataset: Dataset) -> list[int] | None:
    """The labels of a dataset without reading its images, where it lists them (``targets``, as
    torchvision's datasets do)."""
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) != len(dataset):
        return None
    return [int(t) for t in targets]
