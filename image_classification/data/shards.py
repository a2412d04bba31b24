"""Images in shards, streamed: ``python -m image_classification.make_shards`` writes a run's splits as litdata
chunks (each image file's bytes, or the image pre-resized and re-encoded as JPEG, with its label), and
``data=shards`` reads them back, locally or from object storage (``s3://...``).

A split is a litdata ``StreamingDataset``: the training split streams (each DDP process and each of its loader
workers reads its own chunks, an epoch shuffles chunks and the images within them, and the loader's state,
kept in every checkpoint, lets a resumed run continue the stream); the evaluation splits are read in order.

Layout under the root: ``manifest.json`` (classes, images per split and class, what was skipped), and one
folder per split (``train/``, ``val/``, ``test/``) of ``chunk-*.bin`` files and litdata's ``index.json``.
"""

import json
import numbers
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.serializers import _SERIALIZERS, Serializer
from litdata.utilities.env import _DistributedEnv

from image_classification.data.datamodule import transformed
from image_classification.data.images import BadImages, decode_image
from image_classification.data.sampling import CheckedLoader
from image_classification.errors import DataError

MANIFEST = "manifest.json"
INDEX = "index.json"
# What make_shards writes, and so all that data=shards reads: each image as bytes, its label as an integer, its
# file's name as bytes, in chunk files named by litdata, uncompressed and unencrypted. Shards are read as data: a
# field stored any other way (litdata's `pickle` format unpickles, and runs whatever the pickle says) is refused
# before any item is read.
FORMATS = ("bytes", "int")
FIELDS = {"image": "bytes", "label": "int", "file": "bytes"}
CHUNK = re.compile(r"chunk-\d+-\d+\.bin")
LEAF = {"type": None, "context": None, "children_spec": []}


class Refused(Serializer):
    """In place of each of litdata's deserializers but :data:`FORMATS`: whatever an index names, nothing but
    bytes and integers is ever decoded."""

    def __init__(self, name: str):
        self.name = name

    def serialize(self, data: Any) -> tuple[bytes, str | None]:
        raise DataError(f"data=shards does not write {self.name!r} fields")

    def deserialize(self, data: bytes) -> Any:
        raise DataError(f"shards with {self.name!r} fields are not read: data=shards reads what make_shards writes")

    def can_serialize(self, data: Any) -> bool:
        return False


def data_only() -> dict[str, Serializer]:
    """litdata's serializers for :data:`FORMATS`, and :class:`Refused` for every other format."""
    return {name: Refused(name) for name in _SERIALIZERS if name not in FORMATS}


def check_index(root: str, split: str, images: int) -> None:
    """The index of a split's chunks describes what make_shards writes (:data:`FIELDS` as one mapping, chunk files
    by their names, no compression or encryption) and the split's ``images`` (the manifest's count), and local
    chunks are files beside it (not links) that hold what the index says; or one line says what differs."""
    path = f"{str(root).rstrip('/')}/{split}/{INDEX}"
    try:
        with fsspec.open(path, "r") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: the {split} split of these shards is incomplete") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a litdata index ({err})") from None
    config = index.get("config") if isinstance(index, dict) else None
    chunks = index.get("chunks") if isinstance(index, dict) else None
    if not isinstance(config, dict) or not isinstance(chunks, list):
        raise DataError(f"{path} is not a litdata index (no config and chunks)")
    types = config.get("types")
    if types != FIELDS or config.get("data_format") != list(FIELDS.values()) or _spec(config) != list(FIELDS):
        raise DataError(
            f"{path} stores {types or config.get('data_format')!r}; data=shards reads only what make_shards writes "
            f"({FIELDS}): a field in another format (pickle, say) is not read, as it could run code"
        )
    for option in ("compression", "encryption"):
        if config.get(option) is not None:
            raise DataError(f"{path} says its chunks use {option} {config[option]!r}: make_shards writes none")
    names = [chunk.get("filename") if isinstance(chunk, dict) else None for chunk in chunks]
    odd = next((name for name in names if not (isinstance(name, str) and CHUNK.fullmatch(name))), False)
    if odd is not False:
        raise DataError(f"{path} names a chunk {odd!r}: a chunk is a chunk-<n>-<n>.bin file beside its index")
    sizes = [chunk.get("chunk_size") for chunk in chunks]
    if not all(type(size) is int and size >= 0 for size in sizes) or sum(sizes) != images:
        raise DataError(f"{path} lists {sizes} images in its chunks, but its manifest says the split has {images}")
    if "://" in str(root):
        return
    for name, size in zip(names, sizes, strict=True):  # local chunks: a file's first 4 bytes count its items
        chunk = Path(path).parent / name
        if chunk.is_symlink() or not chunk.is_file():
            raise DataError(
                f"{chunk} is {'a link' if chunk.is_symlink() else 'missing'}: a chunk is a file of the shards"
            )
        with chunk.open("rb") as f:
            if int.from_bytes(f.read(4), "little") != size:
                raise DataError(f"{chunk} does not hold the {size} images its index says: it is damaged")


def _spec(config: dict[str, Any]) -> list[str] | None:
    """The fields of a litdata index's ``data_spec`` when it is one mapping of single values, as make_shards writes."""
    try:
        version, spec = json.loads(config.get("data_spec"))
        leaves = spec["children_spec"]
        if version != 1 or spec["type"] != "builtins.dict" or any(leaf != LEAF for leaf in leaves):
            return None
        fields = json.loads(spec["context"])
    except (TypeError, ValueError, KeyError):
        return None
    return fields if isinstance(fields, list) and len(fields) == len(leaves) else None


def read_manifest(root: str) -> dict[str, Any]:
    """The manifest of the shards under ``root`` (a folder, or a URL fsspec opens: ``s3://`` needs s3fs)."""
    path = f"{str(root).rstrip('/')}/{MANIFEST}"
    try:
        with fsspec.open(path, "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise DataError(
            f"{path} does not exist: data.root must be a folder written by python -m "
            "image_classification.make_shards (out=...)"
        ) from None
    except ImportError as err:  # fsspec's "install s3fs to access S3"
        raise DataError(f"cannot read {path}: {err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a manifest written by make_shards ({err})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path} is not a manifest written by make_shards")
    classes, splits = manifest.get("classes"), manifest.get("splits")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)) or not (
        isinstance(splits, dict)
        and all(isinstance(s, dict) and isinstance(s.get("images"), int) for s in splits.values())
    ):
        raise DataError(f"{path} is not a manifest written by make_shards (its classes or splits are not)")
    if manifest.get("channels", 3) not in (1, 3):
        raise DataError(f"{path} says its images have {manifest['channels']!r} channels: 1 (grey) or 3 (RGB)")
    return manifest


def shard_classes(root: str) -> int:
    """How many classes the shards under ``root`` have (the ``${shard_classes:...}`` resolver)."""
    return len(read_manifest(root)["classes"])


def shard_channels(root: str) -> int:
    """The channels of the images in the shards under ``root`` (the ``${shard_channels:...}`` resolver)."""
    return int(read_manifest(root).get("channels", 3))


def image_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for image ``index`` in ``epoch`` of a stream shuffled from ``seed``."""
    return hash((seed, epoch, int(index))) % 2**62


class Shards(StreamingDataset):
    """One split of the shards under ``root``: ``(image, label)``, the image a uint8 C x H x W tensor (decoded as
    :func:`~image_classification.data.images.read_image` decodes files: grey where the data written had one
    channel, else RGB). ``classes`` are the class names.

    Indexed (``shards[i]``) it reads the split's images in order, as the evaluation loaders do; iterated, it
    streams them (the training loader, :class:`StreamLoader`), once :meth:`stream` gave it its transform.

    Args:
        cache_dir: where chunks of remote shards are kept while read (litdata's default: a folder under
            ``~/.lightning`` or ``/cache``); local shards are read in place.
        max_cache_size: how much of the cache litdata may fill (``"50GB"``) before it deletes chunks it read.
    """

    streamed = False  # until stream()

    def __init__(
        self,
        root: str,
        split: str,
        cache_dir: str | None = None,
        max_cache_size: int | str | None = None,
    ):
        manifest = read_manifest(root)
        if split not in manifest["splits"]:
            raise DataError(f"the shards under {root} have no {split} split ({', '.join(manifest['splits'])})")
        check_index(root, split, manifest["splits"][split]["images"])
        super().__init__(
            f"{str(root).rstrip('/')}/{split}",
            cache_dir=cache_dir,
            max_cache_size=max_cache_size,
            serializers=data_only(),
        )
        self.root, self.split = str(root), split
        self.cache_dir_option, self.max_cache_size_option = cache_dir, max_cache_size
        self.classes = list(manifest["classes"])
        files = manifest["splits"][split].get("files")  # evaluation splits list their files, for reports
        self.samples = [tuple(entry) for entry in files] if files else None
        self.images = int(manifest["splits"][split]["images"])
        self.mode = "L" if manifest.get("channels", 3) == 1 else "RGB"
        self.image_transform: Callable | None = None
        self.bad_images: BadImages | None = None

    def __len__(self) -> int:
        """The images of the split; streamed, those of this process's share of an epoch."""
        return super().__len__() if self.streamed else self.images

    def stream(self, transform: Callable | None, bad_images: BadImages | None) -> "Shards":
        """Serve this split as a stream (the training loader): each image through ``transform``, the unreadable
        ones handed to ``bad_images`` and left out of their batch."""
        self.image_transform, self.bad_images, self.streamed = transform, bad_images, True
        self.set_shuffle(True)
        return self

    def in_order(self) -> "Shards":
        """The split's images in order, untransformed (what a check reads), however this one is served."""
        return Shards(self.root, self.split, self.cache_dir_option, self.max_cache_size_option)

    def share(self, world_size: int, rank: int, num_nodes: int, seed: int) -> None:
        """Read this process's share of the stream, shuffled from ``seed``: its own chunks among ``world_size``
        processes, all with the same number of batches (litdata leaves out the last few images of an epoch
        that do not make up a batch on every process)."""
        self.distributed_env = _DistributedEnv(world_size, rank, num_nodes)
        self.drop_last = world_size > 1
        self.seed = seed % 2**31  # litdata's shuffles seed NumPy's legacy generator with seed + epoch
        self.shuffler = None  # drawn again for the new share

    def __getitem__(self, index: Any) -> Any:
        # litdata takes a position as a Python int only (a held-out split's indices are NumPy's)
        item = super().__getitem__(int(index) if isinstance(index, numbers.Integral) else index)
        file = bytes(item["file"]).decode(errors="replace")
        label = item["label"]
        if not (isinstance(label, int) and 0 <= label < len(self.classes)):
            raise DataError(f"{file} in the shards under {self.root} has label {label!r}, not one of its classes")

        def read() -> tuple[torch.Tensor, int]:
            return decode_image(bytes(item["image"]), file, self.mode), label

        if not self.streamed:
            return read()
        # the image's own seed in this epoch: augmented alike whichever worker streams it, so that a resumed run's
        # images are the uninterrupted run's
        seed = image_seed(self.seed, self.current_epoch, getattr(index, "index", index))
        return transformed(read, self.image_transform, self.bad_images, seed)


class StreamLoader(CheckedLoader, StreamingDataLoader):
    """The training loader of streamed :class:`Shards`: litdata's loader, whose state (epoch, images served)
    the DataModule keeps in every checkpoint so that a resumed run continues the stream, and after each of whose
    batches the unreadable images are named and counted as in any loader here."""

    def first_batch(self) -> int:
        return self._num_samples_yielded_streaming // self.batch_size if self.restore else 0

    def position(self) -> dict[str, Any]:
        return {"stream": self.state_dict()}

    def seek(self, state: dict[str, Any]) -> None:
        """Continue where :meth:`position` was: the next batch is the one after it, in the same shuffle."""
        if "stream" not in state:
            raise DataError("the checkpoint's training loader did not read shards: resume it with the data it used")
        self.dataset.seed = state["stream"]["dataset"]["seed"]
        self.dataset.shuffler = None
        self.load_state_dict(state["stream"])
