"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"): one pixel at a time, in raster order.

- Two stacks per layer: a vertical stack that sees only the rows above and a horizontal
  stack that sees the pixels to the left in the current row plus the vertical stack's
  features. The first layer's masks drop the current row (vertical) and the current pixel
  (horizontal); later layers may see their own position, which by then only holds
  information about earlier pixels. The vertical receptive field widens by k // 2 columns
  per layer on both sides, so there is no blind spot.
- Gated activations tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h) with a per-layer
  class embedding h (the class-conditional bias of the paper).
- Pixels are quantized to `levels` values per channel (16 for grayscale by default: 256
  levels learn slowly on a CPU). Colour images are predicted jointly over a palette of
  levels^3 colours (6 levels -> 216 colours), one categorical per pixel, rather than
  R -> G -> B; with so few levels the joint softmax is small and needs no channel masks.
- Loss: cross-entropy of the categorical per pixel, also reported in bits per dimension
  (per channel value) of the quantized image; not comparable with 256-level figures.

Sampling caches the vertical stack once per row (it does not depend on the current row)
and runs only the horizontal stack of that row per pixel, on the columns up to the pixel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImagesynthError
from ..training.family import DataInfo, Family, Phase

MAX_PALETTE = 4096  # levels ** channels: the width of the output softmax
SAMPLE_BATCH = 256  # images per sampling chunk


# ----- helpers -------------------------------------------------------------------------------
def default_levels(channels: int) -> int:
    return 16 if channels == 1 else 6


def quantize(v: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8-valued tensor (any int/float dtype holding 0..255) -> level indices 0..levels-1."""
    v = v.to(torch.int64)
    return (v * (levels - 1) + 127) // 255  # round half up, exactly in integers


def dequantize(q: torch.Tensor, levels: int) -> torch.Tensor:
    """Level indices -> floats in [-1, 1]."""
    return q.float() * (2.0 / (levels - 1)) - 1.0


def to_uint8_values(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> integer values 0..255 (as a saved PNG would hold)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.int64)


def palette_index(q: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, C, H, W) level indices -> (B, H, W) joint palette index (first channel highest)."""
    idx = torch.zeros_like(q[:, 0])
    for c in range(q.shape[1]):
        idx = idx * levels + q[:, c]
    return idx


def palette_levels(idx: torch.Tensor, levels: int, channels: int) -> torch.Tensor:
    """Inverse of `palette_index`: (...,) -> (..., C) level indices."""
    out = []
    for _ in range(channels):
        out.append(idx % levels)
        idx = idx // levels
    return torch.stack(out[::-1], -1)


def check_levels(images: torch.Tensor, levels: int, what: str = "the images") -> None:
    """Refuse uint8 images whose values do not lie on the model's `levels` grid."""
    v = images.to(torch.int64)
    grid = (quantize(v, levels) * 255 + (levels - 1) // 2) // (levels - 1)
    if not torch.equal(grid, v):
        found = max(int(torch.unique(v[:, c]).numel()) for c in range(v.shape[1]))
        raise ImagesynthError(
            f"{what} have up to {found} levels per channel; this PixelCNN was built for "
            f"{levels}: train with levels >= {found}, or quantize the images (quantize=true)"
        )


def sample_logits(
    logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """Category indices (B,) from logits (B, K) by inverse CDF of uniforms u (B,) in [0, 1).

    Temperature divides the logits; top_k keeps the k largest (ties at the k-th kept).
    Drawing with given uniforms makes image i depend only on its own seed.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, -1).cumsum(-1)
    idx = torch.searchsorted(cdf, (u.to(cdf) * cdf[..., -1]).unsqueeze(-1), right=True)
    return idx.squeeze(-1).clamp_max(logits.shape[-1] - 1)


def check_sampling_args(temperature: float, top_k: int | None, vocab: int) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ImagesynthError(f"temperature must be a number > 0, got {temperature!r}")
    if not 0 < temperature <= 100:
        raise ImagesynthError(f"temperature must be in (0, 100], got {temperature}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab
    ):
        raise ImagesynthError(f"top_k must be an integer in 1..{vocab}, got {top_k!r}")


def uniforms(seeds: list[int], count: int) -> torch.Tensor:
    """(len(seeds), count) uniforms; row i drawn from its own seed (batch-size independent)."""
    from ..seeding import cpu_generator

    return torch.stack([torch.rand(count, generator=cpu_generator(s)) for s in seeds])


# ----- blocks --------------------------------------------------------------------------------
def gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer: vertical stack (rows above) and horizontal stack (pixels to the left)."""

    def __init__(self, c_in: int, width: int, kernel: int, first: bool, num_classes: int) -> None:
        super().__init__()
        self.k2, self.first = kernel // 2, first
        self.v_conv = nn.Conv2d(c_in, 2 * width, (self.k2 + 1, kernel))
        self.h_conv = nn.Conv2d(c_in, 2 * width, (1, self.k2 + 1))
        self.v_to_h = nn.Conv2d(2 * width, 2 * width, 1)
        self.h_out = nn.Conv2d(width, width, 1)
        self.embed = nn.Embedding(num_classes, 4 * width) if num_classes else None
        v_mask = torch.ones_like(self.v_conv.weight)
        h_mask = torch.ones_like(self.h_conv.weight)
        if first:  # layer 1: the vertical stack must not see the current row, nor h the pixel
            v_mask[:, :, -1] = 0
            h_mask[:, :, :, -1] = 0
        self.register_buffer("v_mask", v_mask, persistent=False)
        self.register_buffer("h_mask", h_mask, persistent=False)

    def cond(self, labels: torch.Tensor | None) -> tuple[Any, Any]:
        if self.embed is None or labels is None:
            return 0.0, 0.0
        e = self.embed(labels)[:, :, None, None]  # (B, 4w, 1, 1)
        return e.chunk(2, dim=1)

    def vertical(self, v: torch.Tensor, cv: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-activation features for the horizontal stack, gated output), same rows as v."""
        k2 = self.k2
        w = self.v_conv.weight * self.v_mask
        pre = F.conv2d(F.pad(v, (k2, k2, k2, 0)), w, self.v_conv.bias)  # row r sees r-k2..r
        return pre, gate(pre + cv)

    def horizontal(self, h: torch.Tensor, v_pre: torch.Tensor, ch: Any) -> torch.Tensor:
        w = self.h_conv.weight * self.h_mask
        pre = F.conv2d(F.pad(h, (self.k2, 0, 0, 0)), w, self.h_conv.bias)  # col c sees c-k2..c
        out = self.h_out(gate(pre + self.v_to_h(v_pre) + ch))
        return out if self.first else h + out


@dataclass
class PixelCNNConfig:
    """Network shape (saved as the model's pixelcnn/config.json)."""

    channels: int = 1
    levels: int = 16
    size: int = 16
    num_classes: int = 0
    width: int = 64
    layers: int = 8
    kernel: int = 3
    first_kernel: int = 7
    head: int = 128

    @property
    def palette(self) -> int:
        return self.levels**self.channels

    @property
    def reach(self) -> int:
        """Rows above a pixel that can influence it."""
        return self.first_kernel // 2 + (self.layers - 1) * (self.kernel // 2)


class PixelCNN(nn.Module):
    """Gated PixelCNN over quantized pixels: logits (B, levels^C, H, W)."""

    def __init__(self, cfg: PixelCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers = [GatedLayer(cfg.channels, cfg.width, cfg.first_kernel, True, cfg.num_classes)]
        for _ in range(cfg.layers - 1):
            layers.append(GatedLayer(cfg.width, cfg.width, cfg.kernel, False, cfg.num_classes))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(cfg.width, cfg.head, 1),
            nn.GELU(),
            nn.Conv2d(cfg.head, cfg.palette, 1),
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) quantized pixels as floats in [-1, 1]."""
        v = h = x
        for layer in self.layers:
            cv, ch = layer.cond(labels)
            pre, v = layer.vertical(v, cv)
            h = layer.horizontal(h, pre, ch)
        return self.head(h)

    def vertical_stack(self, x: torch.Tensor, labels: torch.Tensor | None) -> list[torch.Tensor]:
        """Pre-activation vertical features of every layer for the rows of x."""
        out, v = [], x
        for layer in self.layers:
            pre, v = layer.vertical(v, layer.cond(labels)[0])
            out.append(pre)
        return out

    def horizontal_stack(
        self, x_row: torch.Tensor, v_pre: list[torch.Tensor], labels: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits of one row (B, K, 1, W') from that row's pixels and vertical features."""
        h = x_row
        for layer, pre in zip(self.layers, v_pre, strict=True):
            h = layer.horizontal(h, pre, layer.cond(labels)[1])
        return self.head(h)


@torch.no_grad()
def sample_pixelcnn(
    net: PixelCNN,
    labels: torch.Tensor | None,
    u: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    on_pixel: Callable[[], None] | None = None,
    keep_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Palette indices (B, H, W) drawn pixel by pixel with uniforms u (B, H*W).

    The vertical stack runs once per row on the `reach` rows above it; each pixel then runs
    the horizontal stack of its row up to its column. With `keep_logits` the logits used
    (B, K, H, W) come back too (tests compare them with one full forward pass).
    """
    cfg = net.cfg
    b, s = u.shape[0], cfg.size
    dev = next(net.parameters()).device
    labels = labels.to(dev) if labels is not None else None
    x = torch.zeros(b, cfg.channels, s, s, device=dev)
    idx = torch.zeros(b, s, s, dtype=torch.int64, device=dev)
    kept = torch.zeros(b, cfg.palette, s, s) if keep_logits else None
    u = u.to(dev)
    for i in range(s):
        top = max(0, i - cfg.reach)  # rows above `reach` cannot influence row i
        v_pre = [p[:, :, -1:] for p in net.vertical_stack(x[:, :, top : i + 1], labels)]
        for j in range(s):
            row = net.horizontal_stack(
                x[:, :, i : i + 1, : j + 1], [p[..., : j + 1] for p in v_pre], labels
            )
            logits = row[:, :, 0, j]  # (B, K)
            if kept is not None:
                kept[:, :, i, j] = logits.float().cpu()
            k = sample_logits(logits, u[:, i * s + j], temperature, top_k)
            idx[:, i, j] = k
            x[:, :, i, j] = dequantize(palette_levels(k, cfg.levels, cfg.channels), cfg.levels)
            if on_pixel is not None:
                on_pixel()
    return idx, kept


def indices_to_images(idx: torch.Tensor, levels: int, channels: int) -> torch.Tensor:
    """(B, H, W) palette indices -> (B, C, H, W) images in [-1, 1]."""
    q = palette_levels(idx, levels, channels).permute(0, 3, 1, 2)
    return dequantize(q, levels)


def bits_per_dim(net: PixelCNN, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Per-image negative log-likelihood in bits per dimension of uint8 images (B, C, H, W)."""
    cfg = net.cfg
    q = quantize(images, cfg.levels)
    logits = net(dequantize(q, cfg.levels), labels)
    nll = F.cross_entropy(logits.float(), palette_index(q, cfg.levels), reduction="none")
    return nll.flatten(1).mean(1) / math.log(2) / cfg.channels


# ----- the family ----------------------------------------------------------------------------
@dataclass
class PixelCNNOptions:
    """Family options (saved in the model's config.json)."""

    levels: int | None = None  # per channel; None: 16 for grayscale, 6 for RGB (216 colours)
    quantize: bool = True  # False: refuse data with more levels than `levels`
    width: int = 64
    layers: int = 8
    kernel: int = 3
    first_kernel: int = 7
    head: int = 128
    sample_temperature: float = 1.0
    sample_top_k: int | None = None

    def validate(self, channels: int) -> PixelCNNOptions:
        levels = self.levels if self.levels is not None else default_levels(channels)
        if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
            raise ImagesynthError(f"levels must be an integer in 2..256, got {self.levels!r}")
        if levels**channels > MAX_PALETTE:
            raise ImagesynthError(
                f"levels {levels} gives a palette of {levels**channels} colours for "
                f"{channels}-channel images; at most {MAX_PALETTE}: use levels <= "
                f"{int(MAX_PALETTE ** (1 / channels))}"
            )
        for name in ("width", "layers", "head"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ImagesynthError(f"{name} must be a positive integer, got {v!r}")
        for name in ("kernel", "first_kernel"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 3 or v % 2 == 0:
                raise ImagesynthError(f"{name} must be an odd integer >= 3, got {v!r}")
        check_sampling_args(self.sample_temperature, self.sample_top_k, levels**channels)
        self.levels = levels
        return self


class PixelCNNFamily(Family):
    """Trains a gated PixelCNN with the categorical cross-entropy of quantized pixels."""

    name = "pixelcnn"
    ema_nets = ("pixelcnn",)

    def __init__(self, opts: PixelCNNOptions, data: DataInfo) -> None:
        super().__init__()
        self.opts, self.data = opts.validate(data.channels), data
        self.net_cfg = PixelCNNConfig(
            channels=data.channels,
            levels=int(opts.levels or 0),
            size=data.size,
            num_classes=data.num_classes,
            width=opts.width,
            layers=opts.layers,
            kernel=opts.kernel,
            first_kernel=opts.first_kernel,
            head=opts.head,
        )
        self.nets["pixelcnn"] = PixelCNN(self.net_cfg)

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "pixelcnn": dataclasses.asdict(self.net_cfg),
            "data": dataclasses.asdict(self.data),
        }

    def prepare(self, data: Any, device: torch.device) -> None:
        if not self.opts.quantize:
            check_levels(data.images, self.net_cfg.levels, f"the {self.data.name} images")

    def phases(self) -> list[Phase]:
        return [Phase("nll", ["pixelcnn"], self.loss)]

    def loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.net_cfg
        q = quantize(to_uint8_values(batch["images"]), cfg.levels)  # (B, C, H, W)
        labels = batch.get("labels") if cfg.num_classes else None
        logits = nets["pixelcnn"](dequantize(q, cfg.levels), labels)
        nll = F.cross_entropy(logits.float(), palette_index(q, cfg.levels))  # nats per pixel
        return nll, {"bits_per_dim": float(nll.detach()) / math.log(2) / cfg.channels}

    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        k = self.data.num_classes
        labels = [i % k for i in range(n)] if k else None
        return generate(
            nets["pixelcnn"],
            n=n,
            seed=seed,
            labels=labels,
            temperature=self.opts.sample_temperature,
            top_k=self.opts.sample_top_k,
        )

    def sample_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.opts.sample_temperature,
            "top_k": self.opts.sample_top_k,
            "levels": self.net_cfg.levels,
        }
        if self.data.num_classes:
            params["class_labels"] = "i % num_classes"
        return params

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        from ..io.model_dir import Component, save_model

        net = getattr(nets["pixelcnn"], "module", nets["pixelcnn"])
        return save_model(
            path,
            {"pixelcnn": Component(dataclasses.asdict(self.net_cfg), net.state_dict())},
            family="pixelcnn",
            config=self.config(),
            dataset=record.get("dataset"),
            recipe=record.get("recipe"),
            metrics=record.get("metrics"),
        )


def generate(
    net: nn.Module,
    *,
    n: int,
    seed: int,
    labels: list[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1]; image i uses the uniforms of seed + i."""
    from tqdm.auto import tqdm

    net = getattr(net, "module", net)
    cfg: PixelCNNConfig = net.cfg
    check_sampling_args(temperature, top_k, cfg.palette)
    was_training = net.training
    net.eval()
    bar = tqdm(
        total=n * cfg.size * cfg.size, desc="pixelcnn", unit="px", disable=not progress or None
    )
    outs = []
    try:
        for start in range(0, n, SAMPLE_BATCH):
            b = min(SAMPLE_BATCH, n - start)
            u = uniforms([seed + start + i for i in range(b)], cfg.size * cfg.size)
            y = torch.tensor(labels[start : start + b]) if labels is not None else None
            idx, _ = sample_pixelcnn(
                net, y, u, temperature=temperature, top_k=top_k, on_pixel=lambda b=b: bar.update(b)
            )
            outs.append(indices_to_images(idx.cpu(), cfg.levels, cfg.channels))
    finally:
        bar.close()
        net.train(was_training)
    return torch.cat(outs)


def load_pixelcnn(files: Any) -> PixelCNN:
    """The network of an opened pixelcnn model directory (`io.model_dir.load_model`)."""
    cfg = PixelCNNConfig(**files.component_config("pixelcnn"))
    net = PixelCNN(cfg)
    net.load_state_dict({k: v.float() for k, v in files.state_dict("pixelcnn").items()})
    return net.eval().requires_grad_(False)
