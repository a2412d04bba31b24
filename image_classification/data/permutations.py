"""Permutation sets for the jigsaw puzzle: far apart in Hamming distance, deterministic, cached.

Noroozi & Favaro (2016, Algorithm 1) pick permutations greedily, each new one as far as possible from those
already chosen, because a set of near-identical permutations makes the task ambiguous and a set far apart
makes the network look at every tile. Two criteria:

- ``max`` (default): each new permutation maximises the distance to its *nearest* chosen one (ties: the
  larger mean distance, then at random). The set's minimum pairwise distance is as large as the greedy
  search makes it: for 3x3 tiles and 100 permutations, every two differ in at least 6 of 9 positions.
- ``max_avg``: each new permutation maximises the *mean* distance to the chosen ones: Noroozi's Algorithm 1
  as written (his code's ``max`` selection, VISSL's ``max_avg``). The same mean distance (8.08 of 9 for
  100 permutations), but two permutations may differ in only 4 positions (2 of 9 for 1,000).

For up to 3x3 tiles the search runs over all permutations (9! = 362,880); for larger grids over
``candidates`` random ones drawn from the seed. The measured minimum and mean distances of the sets the
configs use are in ``experiments/jigsaw/README.md``.
"""

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import torch

from image_classification.errors import DataError
from image_classification.files import atomic_path

log = logging.getLogger(__name__)
METHODS = ("max", "max_avg")
# Enumerating every permutation costs n! x n bytes: 3.3 MB for 3x3 tiles, 580 GB for 4x4.
MAX_ENUMERATED_TILES = 9


def candidate_permutations(n: int, candidates: int, rng: np.random.Generator) -> np.ndarray:
    """All permutations of ``n`` items when ``n <= 9``, else ``candidates`` distinct random ones."""
    if n <= MAX_ENUMERATED_TILES:
        return np.array(list(itertools.permutations(range(n))), dtype=np.uint8)
    drawn = np.argsort(rng.random((candidates, n)), axis=1).astype(np.uint8)
    return np.unique(drawn, axis=0)


def hamming_distances(permutations: np.ndarray | torch.Tensor) -> np.ndarray:
    """The matrix of pairwise Hamming distances: in how many positions two permutations differ."""
    p = np.asarray(permutations)
    return (p[:, None, :] != p[None, :, :]).sum(axis=-1)


def select_permutations(
    n: int, size: int, method: str = "max", seed: int = 0, candidates: int = 1_000_000
) -> np.ndarray:
    """``size`` permutations of ``range(n)`` chosen greedily for Hamming distance (see the module docstring)."""
    if method not in METHODS:
        raise DataError(f"permutation method must be one of {', '.join(METHODS)}, got {method!r}")
    available = math.factorial(n) if n <= MAX_ENUMERATED_TILES else candidates
    if not 1 <= size <= available:
        raise DataError(f"{n} tiles have {available} permutations to choose from, so {size} cannot be chosen")
    rng = np.random.default_rng(seed)
    pool = candidate_permutations(n, candidates, rng)
    pool = pool[rng.permutation(len(pool))]  # argmax takes the first of equals: ties go at random
    if len(pool) < size:
        raise DataError(f"only {len(pool)} distinct candidates were drawn for {size} permutations: raise candidates")
    nearest = np.full(len(pool), n + 1, dtype=np.int32)  # distance to the nearest chosen permutation
    total = np.zeros(len(pool), dtype=np.int64)  # summed distance to the chosen permutations
    chosen = np.empty(size, dtype=np.int64)
    columns = np.ascontiguousarray(pool.T)  # one row per position: n fast comparisons per chosen permutation
    pick = int(rng.integers(len(pool)))
    for i in range(size):
        chosen[i] = pick
        distance = np.zeros(len(pool), dtype=np.int32)
        for position, item in enumerate(pool[pick]):
            distance += columns[position] != item
        np.minimum(nearest, distance, out=nearest)
        total += distance
        if i + 1 == size:
            break
        # Both criteria in one integer key, lexicographically: the secondary is below the primary's unit.
        primary, secondary = (nearest, total) if method == "max" else (total, nearest)
        key = primary * np.int64(n * size + 1) + secondary
        key[nearest == 0] = -1  # already chosen
        pick = int(np.argmax(key))
    return pool[chosen].astype(np.int64)


def cache_file(cache_dir: str | Path, n: int, size: int, method: str, seed: int) -> Path:
    return Path(cache_dir).expanduser() / f"permutations_{n}tiles_{size}_{method}_seed{seed}.npy"


def permutation_set(
    n_tiles: int, size: int = 100, method: str = "max", seed: int = 0, cache_dir: str | Path | None = None
) -> torch.Tensor:
    """The ``size`` x ``n_tiles**2`` permutation set of a ``n_tiles`` x ``n_tiles`` puzzle, read from
    ``cache_dir`` when an earlier run made it (a large set takes seconds to minutes to choose)."""
    if not isinstance(n_tiles, int) or n_tiles < 2:
        raise DataError(f"data.n_tiles must be 2 or more (tiles per side of the puzzle), got {n_tiles!r}")
    n = n_tiles * n_tiles
    path = cache_file(cache_dir, n, size, method, seed) if cache_dir is not None else None
    if path is not None and path.is_file():
        permutations = np.load(path, allow_pickle=False)
        if permutations.shape == (size, n):
            return torch.from_numpy(permutations.astype(np.int64))
        log.warning(f"{path} holds a {permutations.shape} array, not {size} x {n}: choosing the set again")
    if size >= 1000:
        log.info(f"Choosing {size} permutations of {n} tiles ({method}, seed {seed}); cached for later runs")
    permutations = select_permutations(n, size, method, seed)
    if path is not None:
        with atomic_path(path) as tmp, tmp.open("wb") as f:  # a concurrent run reads a whole file or none
            np.save(f, permutations)
    return torch.from_numpy(permutations)
