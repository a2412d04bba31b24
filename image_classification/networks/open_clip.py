"""The image tower of an open_clip model (``pip install -e '.[clip]'``): a backbone to evaluate, or a network
to fine-tune with a linear head."""

import contextlib
import difflib
from pathlib import Path

import torch
from torch import nn

from image_classification.networks.hub import could_not_download, hub_access
from image_classification.networks.weights import load_weights


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """Grey images (B x 1 x H x W) as RGB ones, the channel repeated: what an RGB network takes."""
    return images.expand(-1, 3, -1, -1) if images.ndim == 4 and images.shape[1] == 1 else images


class OpenCLIPVisual(nn.Module):
    """An open_clip model's image encoder; the text tower is dropped. It takes RGB images; grey ones (one
    channel) are given as RGB, the channel repeated.

    Args:
        model_name: an open_clip architecture (``open_clip.list_models()``: ``ViT-B-32``, ``ViT-L-14``,
            ``RN50``, ``convnext_base``, ...).
        num_classes: 0 for the image embedding (a backbone: ``num_features`` = the embedding size); more adds
            a linear head.
        pretrained: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``, ...: downloaded from the
            hub, needs a network), or a local file of the whole open_clip model's weights.
        checkpoint: a weights file of this network to start from instead (a checkpoint of this framework).
        image_size: the input size, when not the architecture's (position embeddings are resized).
    """

    def __init__(
        self,
        model_name: str,
        num_classes: int = 0,
        pretrained: str | None = None,
        checkpoint: str | Path | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        try:
            import open_clip
        except ImportError:
            raise ImportError("open_clip models need the optional extra: pip install -e '.[clip]'") from None
        if model_name not in open_clip.list_models():
            close = difflib.get_close_matches(model_name, open_clip.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; open_clip.list_models() names them"
            raise ValueError(f"open_clip has no architecture {model_name!r}{hint}")
        tag = pretrained and not Path(pretrained).expanduser().is_file()  # a tag is downloaded
        try:
            with hub_access() if tag else contextlib.nullcontext():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained or None, force_image_size=image_size
                )
        except Exception as err:
            failed = could_not_download(err, f"open_clip's {pretrained} weights of {model_name}", "network.pretrained")
            if tag and failed is not None:
                raise failed from None
            raise
        self.visual = model.visual
        self.preprocess = preprocess
        self.num_features = self.visual.output_dim
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if checkpoint:
            load_weights(self, checkpoint)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(as_rgb(images)))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The patch tokens of a ViT image tower (B x N x width), the class token left out."""
        if not hasattr(self.visual, "output_tokens"):
            raise ValueError(f"the {type(self.visual).__name__} image tower gives no patch tokens")
        self.visual.output_tokens = True
        try:
            return self.visual(as_rgb(images))[1]
        finally:
            self.visual.output_tokens = False

    def eval_transform(self):
        """open_clip's preprocessing for this model: resize, centre crop, normalize with its mean and std."""
        return self.preprocess
