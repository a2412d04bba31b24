"""The jigsaw puzzle (Noroozi & Favaro, 2016) as a batch transform: images in, shuffled tiles and the index
of their permutation out, so that pretraining is classification over permutation indices.

The per-image transforms of a jigsaw data config resize and crop each image to the puzzle (``crop_size``);
:class:`Jigsaw` then runs on whole batches on the training device. For a puzzle of ``n_tiles`` x
``n_tiles`` cells, each tile is a ``tile_size`` crop inside its cell: the gap between tiles keeps the network
from matching edges. In training each tile's position inside its cell is random, each colour channel of a
tile is shifted by up to ``channel_jitter`` pixels (chromatic aberration otherwise tells where in the photo a
tile came from), a fraction of the puzzles is made grey, and the permutation is drawn at random. In eval
mode (the DataModule puts its evaluation transforms in it) the tiles sit at the centres of their cells and
the permutation is a fixed function of the label, which the unlabeled datasets set to the image's index:
every validation and test sees the same puzzles. Each tile is normalized on its own (mean and standard
deviation per channel), so brightness and contrast do not give neighbours away.

Nothing but the image may tell a tile's position: the pixels a tile is cut from must not show a border the
image was padded with, nor a resampling pattern whose phase differs from cell to cell (a resize by a factor
that puts cell boundaries between source pixels). ``tests/test_jigsaw.py`` trains on noise images to check.

A puzzle's tile ``i`` is the image's tile ``permutation[i]`` (tiles counted row by row);
:func:`reassemble` undoes it.
"""

from pathlib import Path

import torch
from torch import nn

from image_classification.data.permutations import permutation_set
from image_classification.errors import DataError

# Rec. 601 luma, as torchvision's Grayscale.
LUMA = (0.299, 0.587, 0.114)


def mix_bits(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) of int64 tensors, on any device: spreads
    consecutive image indices over the permutations."""
    x = x & 0xFFFFFFFF
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def reassemble(tiles: torch.Tensor, permutation: torch.Tensor, gap: int = 0, fill: float = 1.0) -> torch.Tensor:
    """The image of a puzzle: ``tiles`` (T x C x t x t, in puzzle order) put back in the order that
    ``permutation`` shuffled them from, as one C x H x W grid with ``gap`` pixels of ``fill`` between tiles."""
    count, channels, size, _ = tiles.shape
    n = round(count**0.5)
    ordered = tiles[torch.argsort(permutation.to(tiles.device))]
    side = n * size + (n - 1) * gap
    grid = torch.full((channels, side, side), fill, dtype=tiles.dtype, device=tiles.device)
    for i, tile in enumerate(ordered):
        y, x = divmod(i, n)
        grid[:, y * (size + gap) : y * (size + gap) + size, x * (size + gap) : x * (size + gap) + size] = tile
    return grid


class Jigsaw(nn.Module):
    """Batch transform ``(images, labels) -> (tiles, permutation indices)``; tiles are B x T x C x t x t.

    Training mode (an nn.Module's default) augments; eval mode gives the fixed evaluation puzzles.

    Args:
        n_tiles: tiles per side (3: a 3x3 puzzle of 9 tiles).
        tile_size: the side of a tile, at most the cell's (``crop_size // n_tiles``); what the trunk sees.
        permutations, method, seed, cache_dir: the permutation set (:func:`permutation_set`); its size is the
            number of classes. It is a buffer: checkpoints keep it and a resumed or tested run loads it back.
        channel_jitter: the most pixels a colour channel of a tile is shifted by, each way.
        grayscale: the fraction of puzzles made grey.
        normalize: normalize each tile's channels to zero mean and unit standard deviation.
    """

    def __init__(
        self,
        n_tiles: int = 3,
        tile_size: int = 64,
        permutations: int = 100,
        method: str = "max",
        seed: int = 0,
        cache_dir: str | Path | None = None,
        channel_jitter: int = 0,
        grayscale: float = 0.0,
        normalize: bool = True,
    ):
        super().__init__()
        if not isinstance(tile_size, int) or tile_size < 1:
            raise DataError(f"the jigsaw tile size (data.image_size) must be a positive whole number, got {tile_size}")
        if not 0.0 <= grayscale <= 1.0:
            raise DataError(f"data.grayscale is a fraction of the puzzles, in [0, 1]; got {grayscale}")
        if not isinstance(channel_jitter, int) or channel_jitter < 0:
            raise DataError(f"data.channel_jitter is a number of pixels, 0 or more; got {channel_jitter!r}")
        self.n_tiles = n_tiles
        self.tile_size = tile_size
        self.channel_jitter = channel_jitter
        self.grayscale = grayscale
        self.normalize = normalize
        self.seed = seed
        self.register_buffer("permutations", permutation_set(n_tiles, permutations, method, seed, cache_dir))

    def extra_repr(self) -> str:
        return (
            f"n_tiles={self.n_tiles}, tile_size={self.tile_size}, permutations={len(self.permutations)}, "
            f"channel_jitter={self.channel_jitter}, grayscale={self.grayscale}"
        )

    def cell_size(self, crop_size: int) -> int:
        cell = crop_size // self.n_tiles
        if cell < self.tile_size:
            raise DataError(
                f"a {crop_size} px puzzle has {self.n_tiles}x{self.n_tiles} cells of {cell} px, smaller than the "
                f"{self.tile_size} px tiles: raise data.crop_size to at least {self.n_tiles * self.tile_size} "
                "or lower data.image_size"
            )
        return cell

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise DataError(f"jigsaw puzzles are cut from square B x C x H x W batches, got {tuple(images.shape)}")
        if not images.is_floating_point():
            images = images.float() / 255.0
        batch, channels, size, _ = images.shape
        device, t, n = images.device, self.tile_size, self.n_tiles
        count = n * n
        cell = self.cell_size(size)
        if self.training:  # random tile positions, channel shifts, grey puzzles and permutations
            index = torch.randint(len(self.permutations), (batch,), device=device)
            offsets = torch.randint(cell - t + 1, (2, batch, count, 1), device=device)
            shifts = torch.randint(
                -self.channel_jitter, self.channel_jitter + 1, (2, batch, count, channels), device=device
            )
        else:  # centred tiles, a fixed permutation per label
            index = mix_bits(labels.to(device).long() + self.seed * 0x9E3779B9) % len(self.permutations)
            offsets = torch.full((2, batch, count, 1), (cell - t) // 2, device=device)
            shifts = torch.zeros((2, batch, count, channels), dtype=torch.long, device=device)
        # The top-left corner of every channel of every tile, image order, kept inside the image.
        cells = torch.arange(count, device=device)
        starts = torch.stack([cells // n, cells % n])[:, None, :, None] * cell + offsets + shifts
        starts = starts.clamp(0, size - t)
        span = torch.arange(t, device=device)
        rows = (starts[0][..., None] + span)[..., :, None]  # B x T x C x t x 1
        cols = (starts[1][..., None] + span)[..., None, :]  # B x T x C x 1 x t
        b = torch.arange(batch, device=device)[:, None, None, None, None]
        c = torch.arange(channels, device=device)[None, None, :, None, None]
        tiles = images[b, c, rows, cols]  # B x T x C x t x t
        if self.training and self.grayscale > 0 and channels == 3:
            grey = torch.rand(batch, device=device) < self.grayscale
            luma = torch.tensor(LUMA, device=device, dtype=tiles.dtype)[:, None, None]
            tiles = torch.where(grey[:, None, None, None, None], (tiles * luma).sum(2, keepdim=True), tiles)
        if self.normalize:
            mean = tiles.mean(dim=(-2, -1), keepdim=True)
            std = tiles.std(dim=(-2, -1), keepdim=True)
            tiles = (tiles - mean) / std.clamp_min(1e-3)
        order = self.permutations.to(device)[index]  # B x T: puzzle position -> image tile
        puzzles = tiles[torch.arange(batch, device=device)[:, None], order]
        return puzzles, index
