"""The fast input pipeline gives the images the PIL pipeline gave: files decoded by libjpeg-turbo into uint8
tensors, cropped as uint8, normalized per batch, against PIL images through the same transforms normalized
per image."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photos
from PIL import Image
from torchvision.transforms import v2

from image_classification.config import instantiate
from image_classification.data.images import load_image, read_image

IMAGE_CONFIGS = ("image_folder", "imagenet", "tiny_imagenet")


def write_jpegs(folder: Path, count: int = 6, seed: int = 0) -> list[Path]:
    """``count`` JPEGs at quality 90 of about 400x300, cut at random from real photographs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, image in enumerate(list(photos().values()) * count):
        if i == count:
            break
        h, w = image.shape[:2]
        y, x = rng.integers(0, h // 4), rng.integers(0, w // 4)
        crop = Image.fromarray(image[y:, x:]).resize((400, 300) if i % 2 else (300, 400), Image.Resampling.BICUBIC)
        paths.append(folder / f"{i}.jpg")
        crop.save(paths[-1], quality=90)
    return paths


def pipelines(make_config, data: str, training: bool):
    """The data config's per-image and per-batch transforms, and the PIL pipeline they replaced: the same
    per-image transforms on PIL images, then ``ToDtype`` and ``Normalize`` per image."""
    cfg = make_config(f"data={data}", "data.root=unused")
    image = instantiate(cfg.data.train_transform if training else cfg.data.eval_transform, "transform")
    normalize = instantiate(cfg.data.normalize, "normalize")
    batch = instantiate(cfg.data.train_batch_transform if training else cfg.data.eval_batch_transform, "batch")
    reference = v2.Compose([image, v2.ToDtype(torch.float32, scale=True), v2.Normalize(normalize.mean, normalize.std)])

    def ours(path: Path) -> torch.Tensor:
        uint8 = image(read_image(path))
        assert uint8.dtype == torch.uint8
        return batch(uint8[None], torch.zeros(1, dtype=torch.long))[0][0]

    def pil(path: Path) -> torch.Tensor:
        return reference(load_image(path))

    return ours, pil, torch.tensor(normalize.std).view(-1, 1, 1) * 255


@pytest.mark.parametrize("data", IMAGE_CONFIGS)
def test_the_evaluation_images_are_pils_within_rounding(make_config, tmp_path, data):
    ours, pil, levels = pipelines(make_config, data, training=False)
    for path in write_jpegs(tmp_path / "photos"):
        fast, reference = ours(path), pil(path)
        assert fast.shape == reference.shape and fast.dtype == reference.dtype == torch.float32
        difference = ((fast - reference) * levels).abs()  # in 8-bit levels: resizing rounds, at most by one
        assert difference.max() < 1.01 and difference.mean() < 0.01, (path.name, difference.max(), difference.mean())


@pytest.mark.parametrize("data", IMAGE_CONFIGS)
def test_the_training_crops_are_pils_crops(make_config, tmp_path, data):
    """The same seed gives the same crop and flip; both resize it alike."""
    ours, pil, levels = pipelines(make_config, data, training=True)
    paths = write_jpegs(tmp_path / "photos")
    crops = {"ours": [], "pil": []}
    for seed in range(24):
        path = paths[seed % len(paths)]
        for name, pipeline in (("ours", ours), ("pil", pil)):
            torch.manual_seed(seed)
            crops[name].append(pipeline(path))
        difference = ((crops["ours"][-1] - crops["pil"][-1]) * levels).abs()
        assert difference.max() < 1.01 and difference.mean() < 0.25, (seed, difference.max(), difference.mean())
    ours_stack, pil_stack = torch.stack(crops["ours"]), torch.stack(crops["pil"])
    assert torch.allclose(ours_stack.mean(dim=(0, 2, 3)), pil_stack.mean(dim=(0, 2, 3)), atol=0.005)
    assert torch.allclose(ours_stack.std(dim=(0, 2, 3)), pil_stack.std(dim=(0, 2, 3)), atol=0.005)
