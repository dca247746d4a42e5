"""Neural style transfer (Gatys, Ecker & Bethge 2016) and colour preservation.

The seeds' losses: L_content = ||phi_l(x) - phi_l(c)||^2 on one deep layer, L_style =
sum_l w_l ||G(phi_l(x)) - G(phi_l(s))||^2 over several layers, L = alpha L_content +
beta L_style + tv L_tv. Each term is divided by the squared norm of its target, so alpha and
beta mean the same for the random default features and for VGG-19. Several styles blend
their Gram targets with weights. The image is optimised (L-BFGS or Adam) coarse to fine: at
each scale the previous result, upsampled, is the start point. Colour preservation (Gatys et
al. 2017, "Controlling perceptual factors"): transfer luminance only, or match the style's
colour histogram (mean and covariance) to the content's first.

Defaults: the offline random-weight VGG-like features (`features.RandomVGG`, see there why),
content initialisation, Adam (lr 0.02) for 150 steps per scale, alpha 1, beta 20. L-BFGS is
there too (pixel-count loss scaling, restart after a failed line search), but on the random
features it lowers the loss less per second than Adam (bench/style_transfer.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ImagesynthError
from .features import gram

MIN_SIDE = 16  # below this the deep layers see nothing
OPTIMIZERS = ("lbfgs", "adam")
COLOR_MODES = ("luminance", "histogram")


@dataclass
class StyleOptions:
    size: int = 512  # longer side of the result in px
    content_weight: float = 1.0  # alpha
    style_weight: float = 20.0  # beta
    tv_weight: float = 1e-3
    optimizer: str = "adam"
    steps: int = 150  # iterations per scale (coarse to fine)
    scales: int = 0  # coarse-to-fine levels; 0 = automatic (one per doubling from 128 px)
    style_scale: float = 1.0  # style image size relative to the result
    lr: float = 0.02  # Adam only
    preserve_color: str | None = None  # luminance | histogram
    init: str = "content"  # content | noise
    seed: int = 0
    content_layer: str | None = None  # None: the feature network's default
    style_layers: tuple[str, ...] | None = None
    style_image_weights: list[float] = field(default_factory=list)

    def validate(self) -> StyleOptions:
        if not MIN_SIDE <= self.size <= 4096:
            raise ImagesynthError(f"size must be in {MIN_SIDE}..4096 px, got {self.size}")
        if self.optimizer not in OPTIMIZERS:
            raise ImagesynthError(f"optimizer must be lbfgs or adam, got {self.optimizer!r}")
        if self.steps < 1:
            raise ImagesynthError(f"steps must be >= 1, got {self.steps}")
        if min(self.content_weight, self.style_weight, self.tv_weight) < 0:
            raise ImagesynthError("content, style and tv weights must be >= 0")
        if self.preserve_color not in (None, *COLOR_MODES):
            raise ImagesynthError(
                f"preserve_color must be luminance or histogram, got {self.preserve_color!r}"
            )
        if self.init not in ("content", "noise"):
            raise ImagesynthError(f"init must be content or noise, got {self.init!r}")
        if not 0.1 <= self.style_scale <= 4:
            raise ImagesynthError(f"style_scale must be in 0.1..4, got {self.style_scale}")
        return self


# ----- image helpers ----------------------------------------------------------------------
def to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def to_pil(x: torch.Tensor) -> Image.Image:
    arr = ((x[0].detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


def fit_size(image: Image.Image, longest: int) -> Image.Image:
    """Resize so the longer side is `longest` (Lanczos down, bicubic up)."""
    w, h = image.size
    s = longest / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return image.resize(size, Image.LANCZOS if s < 1 else Image.BICUBIC)


def check_image(image: Image.Image, what: str, min_side: int = MIN_SIDE) -> Image.Image:
    if min(image.size) < min_side:
        raise ImagesynthError(
            f"{what} is {image.size[0]}x{image.size[1]} px; it must be at least "
            f"{min_side}x{min_side} px"
        )
    return image.convert("RGB")


# ----- colour --------------------------------------------------------------------------------
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB2YIQ.to(x), (x + 1) / 2)


def yiq_to_rgb(y: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2YIQ).to(y), y) * 2 - 1


def match_color(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`source` with its RGB mean and covariance moved to `target`'s (Hertzmann 1998's linear
    colour transfer, as in Gatys et al. 2017 section 5)."""
    s = source[0].reshape(3, -1)
    t = target[0].reshape(3, -1)
    mu_s, mu_t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    cov_s = torch.cov(s) + 1e-5 * torch.eye(3)
    cov_t = torch.cov(t) + 1e-5 * torch.eye(3)

    def sqrtm(c: torch.Tensor, inv: bool = False) -> torch.Tensor:
        val, vec = torch.linalg.eigh(c)
        val = val.clamp_min(1e-8)
        return vec @ torch.diag(val ** (-0.5 if inv else 0.5)) @ vec.T

    a = sqrtm(cov_t) @ sqrtm(cov_s, inv=True)
    out = a @ (s - mu_s) + mu_t
    return out.reshape_as(source).clamp(-1, 1)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Y of YIQ as a 3-channel grey image in [-1, 1]."""
    y = rgb_to_yiq(x)[:, :1] * 2 - 1
    return y.expand(-1, 3, -1, -1).contiguous()


# ----- the optimisation ----------------------------------------------------------------------
def _scales(size: int, levels: int) -> list[int]:
    if levels <= 0:
        levels = max(1, int(math.log2(max(size, 128) / 128)) + 1)
    return [max(MIN_SIDE, round(size / 2 ** (levels - 1 - i))) for i in range(levels)]


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bicubic", align_corners=False, antialias=True)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(
        2
    ).mean()


class GatysLoss:
    """alpha * content + beta * style + tv, each normalised by its target's squared norm."""

    def __init__(
        self,
        net: torch.nn.Module,
        content: torch.Tensor | None,
        styles: Sequence[torch.Tensor],
        style_weights: Sequence[float],
        opts: StyleOptions,
    ) -> None:
        self.net, self.opts = net, opts
        self.content_layer = opts.content_layer or net.content_layer
        self.start: dict[str, torch.Tensor] | None = None
        self.layers = list(opts.style_layers or net.style_layers)
        with torch.no_grad():
            self.grams = {}
            for s, w in zip(styles, style_weights, strict=True):
                feats = net(s, self.layers)
                for name in self.layers:
                    g = w * gram(feats[name])
                    self.grams[name] = self.grams.get(name, 0) + g
            self.gram_norm = {n: g.pow(2).sum().clamp_min(1e-12) for n, g in self.grams.items()}
            self.content = None
            if content is not None and opts.content_weight > 0:
                self.content = net(content, [self.content_layer])[self.content_layer]
                self.content_norm = self.content.pow(2).sum().clamp_min(1e-12)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        opts = self.opts
        want = list(self.layers)
        if self.content is not None:
            want.append(self.content_layer)
        feats = self.net(x, want)
        per_layer = {n: (gram(feats[n]) - self.grams[n]).pow(2).sum() for n in self.layers}
        if self.start is None:  # each layer's distance at the start point counts as 1
            self.start = {n: v.detach().clamp_min(1e-12) for n, v in per_layer.items()}
        style = sum(per_layer[n] / self.start[n] for n in self.layers) / len(self.layers)
        loss = opts.style_weight * style
        logs = {"style": float(style.detach())}
        if self.content is not None:
            content = (feats[self.content_layer] - self.content).pow(2).sum() / self.content_norm
            loss = loss + opts.content_weight * content
            logs["content"] = float(content.detach())
        if opts.tv_weight > 0:
            loss = loss + opts.tv_weight * tv_loss(x) * 100.0
        return loss, logs


def optimize_image(
    x0: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
    opts: StyleOptions,
    steps: int,
    on_step: Callable[[int, torch.Tensor, dict[str, float]], None] | None = None,
) -> torch.Tensor:
    """Minimise `loss_fn` over the pixels of `x0` (kept in [-1, 1]); one call per step."""
    x = x0.clone().requires_grad_(True)
    logs: dict[str, float] = {}
    if opts.optimizer == "lbfgs":
        # the loss is O(1) spread over every pixel: scaled by the pixel count, per-pixel
        # gradients are O(1) too, as LBFGS's tolerances and first step length assume
        def make() -> torch.optim.LBFGS:
            return torch.optim.LBFGS(
                [x], lr=1.0, max_iter=1, history_size=20, line_search_fn="strong_wolfe"
            )

        opt = make()
        scale = float(x.numel())

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss, parts = loss_fn(x)
            logs.update(parts, loss=float(loss.detach()))
            (loss * scale).backward()
            return loss.detach() * scale

        for i in range(steps):
            before = x.detach().clone()
            opt.step(closure)  # no clamp in between: it would break LBFGS's curvature pairs
            if torch.equal(before, x.detach()):  # a failed line search (ReLU kinks): restart
                opt = make()
            if on_step is not None:
                on_step(i, x.detach(), logs)
    else:
        opt = torch.optim.Adam([x], lr=opts.lr)
        for i in range(steps):
            opt.zero_grad()
            loss, parts = loss_fn(x)
            logs.update(parts, loss=float(loss.detach()))
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(-1, 1)
            if on_step is not None:
                on_step(i, x.detach(), logs)
    return x.detach().clamp(-1, 1)


def style_transfer(
    content: Image.Image,
    styles: Sequence[Image.Image],
    net: torch.nn.Module,
    opts: StyleOptions | None = None,
    *,
    progress: bool = False,
    callback: Callable[[int, int, Image.Image], None] | None = None,
    save_every: int = 0,
) -> tuple[Image.Image, dict[str, Any]]:
    """The stylised content image and a record of how it was made (for PNG metadata).

    `callback(scale_index, step, image)` is called every `save_every` steps (intermediate
    results) when both are given.
    """
    from tqdm.auto import tqdm

    opts = (opts or StyleOptions()).validate()
    if not styles:
        raise ImagesynthError("style transfer needs at least one style image")
    weights = list(opts.style_image_weights) or [1.0] * len(styles)
    if len(weights) != len(styles):
        raise ImagesynthError(f"got {len(weights)} style weights for {len(styles)} style images")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ImagesynthError(f"style weights must be >= 0 with a positive sum, got {weights}")
    weights = [w / sum(weights) for w in weights]
    content = check_image(content, "the content image")
    styles = [check_image(s, f"style image {i + 1}") for i, s in enumerate(styles)]
    content = fit_size(content, opts.size)
    c_full = to_tensor(content)
    s_full = [
        to_tensor(fit_size(s, max(MIN_SIDE, round(opts.size * opts.style_scale)))) for s in styles
    ]
    if opts.preserve_color == "histogram":
        s_full = [match_color(s, c_full) for s in s_full]
    chroma = None
    if opts.preserve_color == "luminance":
        chroma = rgb_to_yiq(c_full)[:, 1:]  # the content's own colour, put back at the end
        c_lum = luminance(c_full)
        s_full = [luminance(s) for s in s_full]
        # match each style's luminance mean / std to the content's (Gatys et al. 2017)
        s_full = [
            ((s - s.mean()) / s.std().clamp_min(1e-6) * c_lum.std() + c_lum.mean()).clamp(-1, 1)
            for s in s_full
        ]
        c_full = c_lum
    h, w = c_full.shape[-2:]
    sizes = _scales(max(h, w), opts.scales)
    gen = torch.Generator().manual_seed(opts.seed)
    x = None
    total = opts.steps * len(sizes)
    bar = tqdm(total=total, desc="style", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for k, side in enumerate(sizes):
            f = side / max(h, w)
            hw = (max(MIN_SIDE, round(h * f)), max(MIN_SIDE, round(w * f)))
            c = _resize(c_full, hw)
            ss = [
                _resize(
                    s,
                    (max(MIN_SIDE, round(s.shape[-2] * f)), max(MIN_SIDE, round(s.shape[-1] * f))),
                )
                for s in s_full
            ]
            if x is None:
                if opts.init == "content":
                    x = c.clone()
                else:
                    x = (torch.rand(c.shape, generator=gen) * 2 - 1) * 0.5
            else:
                x = _resize(x, hw)
            loss_fn = GatysLoss(net, c, ss, weights, opts)

            def on_step(i: int, xi: torch.Tensor, logs: dict[str, float], k: int = k) -> None:
                bar.update(1)
                bar.set_postfix(scale=f"{xi.shape[-1]}px", loss=f"{logs.get('loss', 0):.3g}")
                if callback is not None and save_every and (i + 1) % save_every == 0:
                    callback(k, i + 1, to_pil(_finish(xi, chroma)))

            x = optimize_image(x, loss_fn, opts, opts.steps, on_step)
    finally:
        bar.close()
    out = _finish(x, chroma)
    record = {
        "content_weight": opts.content_weight,
        "style_weight": opts.style_weight,
        "tv_weight": opts.tv_weight,
        "optimizer": opts.optimizer,
        "steps": opts.steps,
        "scales": sizes,
        "preserve_color": opts.preserve_color or "no",
        "style_image_weights": weights,
        "features": getattr(net, "kind", type(net).__name__),
        "seed": opts.seed,
    }
    return to_pil(out), record


def _finish(x: torch.Tensor, chroma: torch.Tensor | None) -> torch.Tensor:
    """Recombine transferred luminance with the content's chroma (luminance mode)."""
    if chroma is None:
        return x
    y = (x[:, :1] + 1) / 2
    iq = F.interpolate(chroma, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return yiq_to_rgb(torch.cat([y, iq], 1)).clamp(-1, 1)
