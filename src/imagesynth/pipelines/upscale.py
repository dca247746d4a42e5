"""Upscaling and restoration recipes: classical baselines and the learned ResidualSR family.

Tiled inference: the input is cut into tiles that overlap by `overlap` px; each output tile
is weighted by a window that ramps (linearly or as a raised cosine) across the overlap and is
1 elsewhere, and the weighted sum is divided by the summed weights, so seams vanish when the
overlap exceeds the network's receptive radius. The tile size defaults to what fits in an
eighth of the free memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ImagesynthError

CLASSICAL = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


@dataclass
class UpscaleOutput:
    images: list[Image.Image]
    params: list[dict[str, Any]] = field(default_factory=list)


def classical_upscale(image: Image.Image, scale: int, method: str = "bicubic") -> Image.Image:
    """Bicubic or Lanczos resize by `scale` (Pillow)."""
    if method not in CLASSICAL:
        from ..errors import unknown_name

        raise unknown_name("upscaling method", method, [*CLASSICAL, "model"])
    w, h = image.size
    return image.resize((w * scale, h * scale), CLASSICAL[method])


def _window(n: int, ramp: int, start: bool, end: bool, kind: str) -> torch.Tensor:
    """1-D blending weights of length n with ramps of `ramp` px at the open ends."""
    w = torch.ones(n)
    if ramp <= 0:
        return w
    t = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
    r = t if kind == "linear" else 0.5 - 0.5 * torch.cos(math.pi * t)
    if start:
        w[:ramp] = r
    if end:
        w[-ramp:] = r.flip(0)
    return w


def auto_tile(net: torch.nn.Module, device: torch.device) -> int:
    """Largest input tile side whose activations fit in 1/8 of the free memory."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        from ..env import memory_info

        free = memory_info()["available_bytes"] or (2 << 30)
    width, scale = getattr(net, "width", 64), getattr(net, "scale", 2)
    bytes_per_px = 4 * (4 * width + 4 * 3 * scale * scale)
    side = int(math.sqrt(free / 8 / bytes_per_px))
    return max(64, min(1024, side // 16 * 16))


@torch.no_grad()
def run_tiled(
    net: torch.nn.Module,
    x: torch.Tensor,
    scale: int,
    tile: int | None = None,
    overlap: int = 16,
    blend: str = "linear",
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """net(x) for (1, C, H, W) `x`, in overlapping tiles blended with ramp windows.

    `callback(done, total)` runs after each tile (an exception raised there stops the run).
    """
    from tqdm.auto import tqdm

    if blend not in ("linear", "cosine"):
        raise ImagesynthError(f"blend must be linear or cosine, got {blend!r}")
    _, c, h, w = x.shape
    tile = tile or auto_tile(net, x.device)
    if overlap < 0 or ((tile < h or tile < w) and overlap * 2 >= tile):
        raise ImagesynthError(f"overlap must be in 0..{tile // 2 - 1} px for tile {tile}")
    if tile >= h and tile >= w:
        y = net(x)
        if callback is not None:
            callback(1, 1)
        return y
    stride = tile - overlap
    ys = list(range(0, max(h - tile, 0) + 1, stride))
    xs = list(range(0, max(w - tile, 0) + 1, stride))
    if ys[-1] + tile < h:
        ys.append(h - tile)
    if xs[-1] + tile < w:
        xs.append(w - tile)
    out = torch.zeros(1, c, h * scale, w * scale, device=x.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, device=x.device)
    bar = tqdm(total=len(ys) * len(xs), desc="tiles", disable=not progress, unit="tile")
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            piece = net(x[..., y0:y1, x0:x1])
            wy = _window(piece.shape[-2], overlap * scale, y0 > 0, y1 < h, blend)
            wx = _window(piece.shape[-1], overlap * scale, x0 > 0, x1 < w, blend)
            win = (wy[:, None] * wx[None, :]).to(x.device)[None, None]
            sl = (..., slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale))
            out[sl] += piece * win
            weight[sl] += win
            bar.update(1)
            if callback is not None:
                callback(bar.n, bar.total)
    bar.close()
    return out / weight.clamp_min(1e-8)


class SuperResolutionPipeline:
    """`imagesynth.load(DIR)` for upscaler / restorer models: call it on a PIL image."""

    def __init__(
        self,
        net: torch.nn.Module,
        config: dict[str, Any],
        info: dict[str, Any],
        path: Path | None = None,
    ) -> None:
        self.net, self.config, self.info, self.path = net, config, info, path
        self.task, self.scale = config["task"], int(config["scale"])

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> SuperResolutionPipeline:
        from ..models.superres import load_superres

        net, cfg, info = load_superres(path, device or "cpu", allow_pickle=allow_pickle)
        return cls(net, cfg, info, Path(path))

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def __call__(
        self,
        image: Image.Image | None = None,
        *,
        scale: int | None = None,
        tile: int | None = None,
        overlap: int = 16,
        blend: str = "linear",
        progress: bool = False,
        callback: Callable[[int, int], None] | None = None,
        **ignored: Any,
    ) -> UpscaleOutput:
        from ..io.images import pil_to_tensor, tensor_to_pil

        if image is None:
            raise ImagesynthError(f"this {self.task} model needs an input image")
        if scale is not None and scale != self.scale:
            raise ImagesynthError(
                f"this model upscales x{self.scale}, got --scale {scale}; use a x{scale} model "
                "(imagesynth train upscaler --scale N) or --method bicubic|lanczos"
            )
        radius = getattr(self.net, "field_radius", 0)
        if min(image.size) < 8:
            raise ImagesynthError(f"image is {image.size[0]}x{image.size[1]} px; need >= 8 px")
        want_c = self.net.channels
        x = pil_to_tensor(image.convert("L" if want_c == 1 else "RGB"))[None].to(self.device)
        y = run_tiled(self.net, x, self.scale, tile, overlap, blend, progress, callback)
        params = {
            "task": self.task,
            "scale": self.scale,
            "model": self.path.name if self.path else "",
            "tile": tile or "auto",
            "overlap": overlap,
            "blend": blend,
            "receptive_radius": radius,
        }
        return UpscaleOutput(tensor_to_pil(y), [params])
