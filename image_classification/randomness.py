"""The random state a resumed run needs to continue exactly where it stopped.

Lightning's checkpoints hold the weights, the optimizer and the loop's position, but no random state: a run
resumed mid-epoch would draw other dropout masks, mixup pairs and augmentations than the run that was never
stopped. The module saves the global generators' states (Python's, NumPy's, torch's on the CPU and on each GPU)
in every checkpoint and restores them before the first batch of the resumed run; the training sampler gives each
image a seed of its own, so its augmentation does not depend on which loader worker made it, or when.
"""

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

# Where a checkpoint keeps the random state (a plain dict of tensors, lists and numbers: weights_only loads it).
RANDOM_STATE_KEY = "random_state"


def random_state() -> dict[str, Any]:
    """This process's global random generators, as plain tensors, lists and numbers."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Puts back what :func:`random_state` returned (the GPU states only where this process has those GPUs)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global generators seeded with ``seed`` inside: one image's random
    transforms. In the main process (a loader without workers) the generators are put back afterwards, so the
    training step draws what it would have drawn; a loader worker draws from them for nothing else."""
    in_worker = torch.utils.data.get_worker_info() is not None
    saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.default_generator.get_state())
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # torch.manual_seed would also reseed every GPU: 70x slower
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])
