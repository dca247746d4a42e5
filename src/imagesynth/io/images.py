"""Image conversions and grids (numpy + Pillow; torch only for tensor conversions)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import ImagesynthError

if TYPE_CHECKING:
    import torch


def make_grid(
    images: Sequence[Image.Image], nrow: int | None = None, padding: int = 2, fill: int = 255
) -> Image.Image:
    """Tile equally sized images row by row (`nrow` per row, default ~square)."""
    if not images:
        raise ImagesynthError("make_grid needs at least one image")
    w, h = images[0].size
    mode = "RGB" if any(im.mode != "L" for im in images) else "L"
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / nrow)
    grid = Image.new(
        mode,
        (nrow * w + (nrow + 1) * padding, rows * h + (rows + 1) * padding),
        (fill,) * 3 if mode == "RGB" else fill,
    )
    for i, im in enumerate(images):
        if im.size != (w, h):
            raise ImagesynthError(f"grid images must share one size, got {im.size} and {(w, h)}")
        r, c = divmod(i, nrow)
        grid.paste(im.convert(mode), (padding + c * (w + padding), padding + r * (h + padding)))
    return grid


def pil_to_array(image: Image.Image) -> np.ndarray:
    """uint8 array (H, W, C) with C = 1 or 3."""
    arr = np.asarray(image.convert("L" if image.mode == "L" else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """float32 (C, H, W) in [-1, 1], the range the models work in."""
    import torch

    arr = pil_to_array(image)  # (H, W, C) uint8
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) or (C, H, W) in [-1, 1] -> PIL images (clamped, rounded)."""
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ImagesynthError(f"expected images shaped (B, 1|3, H, W), got {tuple(x.shape)}")
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    arr = arr.permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]
