"""Reading image files as the network expects them, and what happens to the ones that cannot be read.

Every real dataset has a few broken files (truncated downloads, zero bytes, HTML saved as ``.jpg``) and many
unusual ones (CMYK JPEGs, transparent PNGs, palette, 16-bit and grey images). :func:`load_image` decodes the
whole file, so a broken one fails here, naming itself, and converts the unusual ones to 8-bit RGB (or grey).
:func:`read_image` does the same into a uint8 tensor, decoding JPEGs with libjpeg-turbo directly (simplejpeg):
the per-image transforms then work on uint8 tensors, and the batch becomes float on the training device.
:class:`BadImages` decides what a broken file does to a run: skipped with a warning naming it, counted, and
the run stopped once more files than ``max_bad_images`` were skipped; or the run stopped at the first.
"""

import io
import logging
import math
import multiprocessing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import simplejpeg
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate

from image_classification.errors import DataError

log = logging.getLogger(__name__)


class BadImage(Exception):
    """An image file that cannot be read: ``path`` and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def load_image(path: str | Path, mode: Literal["RGB", "L"] = "RGB") -> Image.Image:
    """The image in ``path``, fully decoded, as 8-bit ``mode``: CMYK and palette images converted, transparent
    ones put on white, 16-bit ones scaled to 8 bits. A file that is empty, not an image, or that fails while
    decoding (a truncated JPEG) raises :class:`BadImage`."""
    return pil_image(file_bytes(path), path, mode)


JPEG_START = b"\xff\xd8\xff"


def read_image(path: str | Path, mode: Literal["RGB", "L"] = "RGB") -> torch.Tensor:
    """The image in ``path`` as a uint8 C x H x W tensor in ``mode``: what :func:`load_image` gives, faster.

    JPEGs are decoded by libjpeg-turbo straight into an array (simplejpeg, strict: a truncated or corrupt file
    fails); what it does not decode (CMYK JPEGs, other formats, and broken files, which then raise
    :class:`BadImage` naming themselves) goes through PIL as :func:`load_image` reads it."""
    return decode_image(file_bytes(path), path, mode)


def file_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise BadImage(path, f"{type(err).__name__}: {err}") from None


def decode_image(data: bytes, path: str | Path, mode: Literal["RGB", "L"] = "RGB") -> torch.Tensor:
    """``data``, the bytes of an image file (``path`` names it in errors), as :func:`read_image` reads it."""
    if data.startswith(JPEG_START):
        try:
            array = simplejpeg.decode_jpeg(data, colorspace="RGB" if mode == "RGB" else "GRAY")
            return torch.from_numpy(array).permute(2, 0, 1)
        except ValueError:
            pass  # CMYK, or broken: PIL converts the first and says what is wrong with the second
    array = np.asarray(pil_image(data, path, mode))
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


def pil_image(data: bytes, path: str | Path, mode: Literal["RGB", "L"]) -> Image.Image:
    """``data``, the bytes of an image file (``path`` names it in errors), decoded whole by PIL as ``mode``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode it all now: a truncated file fails here, not in a transform later
            return to_mode(image, mode)
    except UnidentifiedImageError:
        raise BadImage(path, "empty file" if not data else "not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(path, f"{type(err).__name__}: {err}") from None


def to_mode(image: Image.Image, mode: Literal["RGB", "L"]) -> Image.Image:
    """``image`` as 8-bit ``mode``."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit integer) grey: the top 8 bits
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "I" or pixels.max() > 255 else 255.0
        image = Image.fromarray(np.clip(pixels * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):  # transparent: on white, as a viewer shows it
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == mode else image.convert(mode)


class BadImages:
    """What the unreadable files of a split's dataset do: ``on_bad_image="skip"``: each is skipped with a warning that
    names it (once per run), the epoch's count is logged at its end, and the run stops once more than
    ``max_bad_images`` different files were skipped (a whole number, or a fraction of the images); ``"raise"``:
    the run stops at the first, naming it.

    Loader workers report what they skip through a queue; the loader (:meth:`check`, after each batch) names
    and counts them in the main process, where stopping the run is one clear line.
    """

    def __init__(self, on_bad_image: Literal["skip", "raise"] = "skip", max_bad_images: float = 0.001,
                 split: str = "train"):  # fmt: skip
        if on_bad_image not in ("skip", "raise"):
            raise DataError(f"data.on_bad_image must be skip or raise, not {on_bad_image!r}")
        if max_bad_images < 0:
            raise DataError(
                f"data.max_bad_images must be 0 or more (a count, or a fraction below 1), not {max_bad_images}"
            )
        self.on_bad_image = on_bad_image
        self.max_bad_images = max_bad_images
        self.split = split
        self.queue = multiprocessing.get_context().SimpleQueue()
        self.seen: dict[str, str] = {}  # every file skipped in this run, with why
        self.in_epoch = 0  # files skipped since the epoch (or evaluation) started

    def budget(self, images: int) -> int:
        """How many different unreadable files a split of ``images`` images may have."""
        limit = self.max_bad_images
        return int(limit) if limit >= 1 else math.ceil(limit * images)

    def skipped(self, error: BadImage) -> None:
        """A dataset could not read ``error.path``: tell the main process, which names it (and stops the run
        with ``raise``) before the batch it was missing from is used."""
        self.queue.put((error.path, error.reason))

    def check(self, images: int) -> None:
        """Name the files skipped since the last check (each once per run), count them, and stop the run if the
        split has more unreadable files than its budget."""
        while not self.queue.empty():
            path, reason = self.queue.get()
            if self.on_bad_image == "raise":
                raise DataError(f"cannot read {path} ({reason}): fix or remove the file, or skip such files with "
                                "data.on_bad_image=skip")  # fmt: skip
            self.in_epoch += 1
            if path not in self.seen:
                self.seen[path] = reason
                log.warning(f"Skipped an unreadable image: {path} ({reason})")
        budget = self.budget(images)
        if len(self.seen) > budget:
            raise DataError(
                f"{len(self.seen)} unreadable images, more than data.max_bad_images allows ({budget} of the "
                f"{self.split} set's {images}): the first was {next(iter(self.seen))}; fix or remove them (python -m "
                "image_classification.check_data lists them all), or raise data.max_bad_images"
            )

    def end_epoch(self, images: int) -> None:
        """After a pass over the split: the last check, and the count of what it skipped."""
        self.check(images)
        if self.in_epoch:
            log.warning(f"{self.in_epoch} unreadable images skipped in this pass over the {self.split} set "
                        f"({len(self.seen)} different files so far)")  # fmt: skip
        self.in_epoch = 0

    def __getstate__(self) -> dict[str, Any]:  # a worker needs the policy and the queue, not the main's records
        return {**self.__dict__, "seen": {}, "in_epoch": 0}


def collate_readable(batch: list[Any]) -> Any:
    """``default_collate`` of the samples that are not ``None`` (the images skipped as unreadable)."""
    readable = [sample for sample in batch if sample is not None]
    if not readable:
        raise DataError(f"none of the {len(batch)} images of a batch could be read: check the data folder "
                        "(python -m image_classification.check_data)")  # fmt: skip
    return default_collate(readable)
