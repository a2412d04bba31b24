"""Starting a network from saved weights (a timm or torchvision state dict, or one of our checkpoints), and
digests that say whether two networks hold the same weights."""

import hashlib
import logging
import sys
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
# Our checkpoints keep the network under this prefix of the LightningModule's state dict.
NETWORK_PREFIX = "network."


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a plain state dict (``.pth``, ``.bin``, ``.safetensors``), one nested
    under ``state_dict_ema`` / ``model_ema`` / ``state_dict`` / ``model`` (timm's order: EMA weights first), or a
    checkpoint of this framework (its network's weights, the EMA ones when the run kept an average)."""
    from timm.models import load_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"network.checkpoint {path} does not exist")
    state = load_state_dict(str(path), use_ema=True, weights_only=True)
    ours = {k[len(NETWORK_PREFIX) :]: v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}
    return ours or state


def load_weights(network: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``network``: through the architecture's own timm conversion when it has one (old
    formats, position embeddings resized to the image size), without the tensors whose shapes differ (a
    classifier head for another number of classes), naming what was left out and what did not fit."""
    state = read_state_dict(path)
    convert = getattr(sys.modules.get(type(network).__module__), "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, network)
    own = network.state_dict()
    reshaped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    state = {k: v for k, v in state.items() if k not in reshaped}
    if not set(state) & set(own):
        raise ValueError(f"none of the {len(state)} tensors in {path} belongs to {type(network).__name__}")
    missing, unexpected = network.load_state_dict(state, strict=False)
    if reshaped:
        log.warning(f"{path}: not loaded, other shapes (a new head is trained): {', '.join(reshaped)}")
    if missing:
        log.warning(f"{path}: missing, left at their initial values: {', '.join(missing)}")
    if unexpected:
        log.warning(f"{path}: not used by {type(network).__name__}: {', '.join(unexpected)}")
    return network


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's weights and buffers: changes when any weight or batch-norm statistic does."""
    return state_digest(module.state_dict())
