"""Starting a network from saved weights (a timm or torchvision state dict, or one of our checkpoints), and
digests that say whether two networks hold the same weights."""

import hashlib
import logging
import sys
from pathlib import Path

import torch
from torch import nn

from image_classification.errors import UserError

log = logging.getLogger(__name__)
# Our checkpoints keep the network under this prefix of the LightningModule's state dict.
NETWORK_PREFIX = "network."


def read_state_dict(path: str | Path, key: str = "network.checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a plain state dict (``.pth``, ``.bin``, ``.safetensors``), one nested
    under ``state_dict_ema`` / ``model_ema`` / ``state_dict`` / ``model`` (timm's order: EMA weights first), or a
    checkpoint of this framework (its network's weights, the EMA ones when the run kept an average). ``key``:
    the config key that named the file, for the error when it is not there."""
    from timm.models import load_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{key}: {path} does not exist")
    state = load_state_dict(str(path), use_ema=True, weights_only=True)
    ours = {k[len(NETWORK_PREFIX) :]: v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}
    return ours or state


def head_keys(network: nn.Module) -> set[str]:
    """The state-dict keys of ``network``'s classifier head (timm's ``get_classifier()``, else a ``head``
    attribute); none for a feature extractor, whose head is an identity."""
    get = getattr(network, "get_classifier", None)
    heads = get() if callable(get) else getattr(network, "head", None)
    heads = [h for h in (heads if isinstance(heads, tuple | list) else [heads]) if isinstance(h, nn.Module)]
    keys = set()
    for name, module in network.named_modules():
        if any(module is head for head in heads):
            keys |= {f"{name}.{k}" if name else k for k in module.state_dict()}
    return keys


def first_conv(network: nn.Module) -> tuple[str, nn.Conv2d] | tuple[None, None]:
    """``network``'s first 2-D convolution (the one that sees the image), with its name."""
    return next(((name, m) for name, m in network.named_modules() if isinstance(m, nn.Conv2d)), (None, None))


def load_weights(network: nn.Module, path: str | Path, key: str = "network.checkpoint") -> nn.Module:
    """Load ``path`` into ``network``, all or nothing: every tensor of the network comes from the file, or a
    UserError names the first that is missing or has another shape. Only the classifier head may be left out
    (a head for another number of classes, or none in the file: a new head is trained, as said once). The
    architecture's own timm conversion runs first (old formats, position embeddings resized to the image
    size), and the first convolution of RGB weights is adapted to grey input as timm does (channels summed).
    ``key``: the config key that named the file, for the messages."""
    state = read_state_dict(path, key)
    convert = getattr(sys.modules.get(type(network).__module__), "checkpoint_filter_fn", None)
    if convert is not None:
        state = convert(state, network)
    own = network.state_dict()
    name = type(network).__name__
    if not set(state) & set(own):
        raise UserError(f"{key}: none of the {len(state)} tensors in {path} belongs to {name}")
    name_of_first = first_conv(network)[0]
    first = f"{name_of_first}.weight" if name_of_first is not None else None
    if first in state and first in own:
        theirs, ours = state[first], own[first]
        if theirs.ndim == 4 and theirs.shape[1] != ours.shape[1] and theirs.shape[2:] == ours.shape[2:]:
            from timm.models import adapt_input_conv

            state[first] = adapt_input_conv(ours.shape[1], theirs)
            log.info(f"{path}: {first} adapted from {theirs.shape[1]} input channels to {ours.shape[1]}")
    head = head_keys(network)
    reshaped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in reshaped:
        if k not in head:
            raise UserError(
                f"{key}: {path} does not fit {name}: {k} is {list(state[k].shape)} in the file, "
                f"{list(own[k].shape)} in the network; give weights of this architecture and width"
            )
    missing = [k for k in own if k not in state and k not in head]
    missing_buffers = {k for k, _ in network.named_buffers() if k.endswith("num_batches_tracked")}
    missing = [k for k in missing if k not in missing_buffers]  # batch norm fills it in (old torchvision files)
    if missing:
        raise UserError(
            f"{key}: {path} does not fit {name}: {missing[0]} is not in the file ({len(missing)} of the "
            f"network's {len(own)} tensors are not); give weights of this architecture"
        )
    state = {k: v for k, v in state.items() if k not in reshaped}
    _, unexpected = network.load_state_dict(state, strict=False)
    left = sorted(k for k in head if k in reshaped or k not in state)
    if left:
        why = "other shapes in the file" if any(k in reshaped for k in left) else "not in the file"
        log.warning(f"{path}: the classifier head ({', '.join(left)}) is not loaded, {why}: a new head is trained")
    if unexpected:
        log.info(f"{path}: not used by {name} (the file's own head, or layers it does not have): "
                 f"{', '.join(unexpected)}")  # fmt: skip
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
