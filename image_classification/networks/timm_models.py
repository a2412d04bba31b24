"""Every timm architecture, built from config: ``network=resnet50``, ``vit_b16``, ``swin_t`` ... or
``network=timm network.model_name=<any name timm.list_models() gives>``."""

import contextlib
import difflib
from pathlib import Path
from typing import Any

from torch import nn

from image_classification.networks.hub import could_not_download, hub_access
from image_classification.networks.weights import load_weights

# Arguments of timm.create_model that would load weights behind the back of `checkpoint` (and outside
# weights_only loading): refused, so `checkpoint` is the one way in.
FORBIDDEN = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def timm_network(
    model_name: str,
    num_classes: int,
    in_chans: int = 3,
    pretrained: bool = False,
    checkpoint: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(model_name, num_classes=..., in_chans=..., **kwargs)``, started from weights.

    Args:
        pretrained: timm's own pretrained weights for ``model_name``, from its hub (needs a network).
        checkpoint: a weights file to start from (:func:`load_weights`): a timm or torchvision state dict,
            or a checkpoint of this framework; a head for another number of classes is left out.
        kwargs: the architecture's own arguments (``img_size``, ``patch_size``, ``window_size``,
            ``drop_path_rate``, ...).
    """
    import timm  # imported here: a run without a timm network does not pay for it

    refused = sorted(set(kwargs) & set(FORBIDDEN))
    if refused:
        raise ValueError(f"timm_network does not take {', '.join(refused)}: give a weights file as checkpoint")
    if model_name not in timm.list_models():
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() names them"
        raise ValueError(f"timm has no architecture {model_name!r}{hint}")
    try:
        with hub_access() if pretrained else contextlib.nullcontext():
            network = timm.create_model(
                model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
            )
    except Exception as err:
        failed = could_not_download(err, f"timm's pretrained weights for {model_name}", "network.pretrained=true")
        if pretrained and failed is not None:
            raise failed from None
        raise
    return load_weights(network, checkpoint) if checkpoint else network
