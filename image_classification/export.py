"""Export a trained network to ONNX, torch.export (``.pt2``) or TorchScript, checked against the network.

    python -m image_classification.export ckpt=<file> [format=onnx|pt2|torchscript] [out=<file>]

The exported network takes the batch the run's preprocessing makes (float, N x C x H x W, normalized; N is
free) and returns logits. ``<out>.json`` beside it says what that preprocessing is (the transforms' configs,
the size, mean and std), the class names, and how far the exported network's logits were from the network's
on a check batch. The settings are in configs/export.yaml.
"""

import datetime
import importlib.util
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig
from torch import nn

from image_classification.checkpoint import git_commit
from image_classification.config import run_command
from image_classification.errors import UserError
from image_classification.files import atomic_path
from image_classification.inference import Model, load_model

log = logging.getLogger("export")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def check_images(model: Model, count: int, seed: int = 0) -> list[PIL.Image.Image]:
    """``count`` random images a little larger than the run's images, for the preprocessing to crop."""
    data = model.config.get("data") or {}
    side = round((data.get("image_size") or 224) / 0.875)
    rng = np.random.default_rng(seed)
    return [PIL.Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def _batch_dimension() -> tuple[dict[int, Any]]:
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def export_onnx(network: nn.Module, example: torch.Tensor, out: Path, opset: int | None) -> None:
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"format=onnx needs {', '.join(missing)}: pip install -e '.[export]'")
    for name in ("onnxscript", "onnx_ir"):  # notes about the exporter's own passes
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=_batch_dimension(),
            opset_version=opset,
            verbose=False,
        )
    with atomic_path(out) as tmp:
        program.save(str(tmp), external_data=False)


def run_onnx(path: Path, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy()})[0])


def export_pt2(network: nn.Module, example: torch.Tensor, out: Path) -> None:
    program = torch.export.export(network, (example,), dynamic_shapes=_batch_dimension())
    with atomic_path(out) as tmp:
        torch.export.save(program, tmp)


def export_torchscript(network: nn.Module, example: torch.Tensor, out: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer notes
        traced = torch.jit.trace(network, example)
        with atomic_path(out) as tmp:
            torch.jit.save(traced, str(tmp))


def run_exported(path: Path, format: str, images: torch.Tensor) -> torch.Tensor:
    """The logits of an exported network, loaded from its file."""
    if format == "onnx":
        return run_onnx(path, images)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format == "pt2":
            return torch.export.load(path).module()(images)
        return torch.jit.load(str(path))(images)


def _normalize_constants(config: Any) -> dict[str, Any]:
    """The mean and std of the last ``Normalize`` in a transform config, and the sizes its resizes and crops
    give."""
    found: dict[str, Any] = {}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            name = str(node.get("_target_", "")).rsplit(".", 1)[-1]
            if name == "Normalize":
                found.update(mean=node.get("mean"), std=node.get("std"))
            elif name == "Resize":
                found.update(resize=node.get("size"), interpolation=node.get("interpolation", "bilinear"))
            elif name in ("CenterCrop", "RandomCrop"):
                found["crop"] = node.get("size")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(config)
    return found


def preprocessing_description(model: Model, example: torch.Tensor) -> dict[str, Any]:
    configs = model.preprocess.configs
    return {
        "input": {"name": "images", "shape": ["batch", *example.shape[1:]], "dtype": str(example.dtype)},
        "output": {"name": "logits", "shape": ["batch", len(model.class_names or []) or None]},
        "channels": model.preprocess.channels,
        # what the network expects, in the order they run: per image (on PIL images or uint8 tensors),
        # then per batch
        "image_transform": configs.get("image"),
        "batch_transform": configs.get("batch"),
        **_normalize_constants([configs.get("image"), configs.get("batch")]),
    }


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.ckpt``'s network in ``cfg.format``, check it, and return the description written beside it."""
    if cfg.format not in SUFFIXES:
        raise UserError(f"format={cfg.format} is not one of {', '.join(SUFFIXES)}")
    ckpt = Path(cfg.ckpt)
    out = Path(cfg.out) if cfg.out else ckpt.with_name(ckpt.stem + SUFFIXES[cfg.format])
    model = load_model(ckpt, "cpu", list(cfg.trusted_targets))
    network = model.network
    example = model.preprocess(check_images(model, 2, seed=0))
    check = model.preprocess(check_images(model, 3, seed=1))  # another batch size: the batch dimension is free
    try:
        if cfg.format == "onnx":
            export_onnx(network, example, out, cfg.opset)
        elif cfg.format == "pt2":
            export_pt2(network, example, out)
        else:
            export_torchscript(network, example, out)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{type(network).__name__} could not be exported to {cfg.format}: {err}") from err
    with torch.inference_mode():
        expected = network(check)
    difference = (run_exported(out, cfg.format, check).float() - expected.float()).abs().max().item()
    if not difference <= cfg.tolerance:
        out.unlink()
        raise UserError(
            f"the {cfg.format} model's logits differ from the network's by {difference:.3g} "
            f"(tolerance={cfg.tolerance}): not written"
        )
    description = {
        "format": cfg.format,
        "file": out.name,
        "checkpoint": str(ckpt.absolute()),
        "class_names": model.class_names,
        "preprocessing": preprocessing_description(model, example),
        "max_abs_difference": difference,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_path(out.with_name(out.name + ".json")) as tmp:
        tmp.write_text(json.dumps(description, indent=1))
    log.info(f"{out} ({cfg.format}; logits within {difference:.2g} of the network's) and {out.name}.json")
    return description


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    return run_command("export", export, __doc__, argv)


if __name__ == "__main__":
    main()
