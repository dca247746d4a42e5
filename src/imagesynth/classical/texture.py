"""Texture synthesis: image quilting, Efros-Leung pixel sampling, Gram-based neural textures,
and hole filling.

- Quilting (Efros & Freeman 2001): blocks placed in raster order, each chosen at random among
  the sample blocks whose overlap error is within (1 + tol) of the best, then joined along the
  minimum-error boundary cut (dynamic programming). The overlap error of every candidate is
  computed at once as a masked SSD with convolutions: sum M (P - T)^2 = conv(S^2, M) -
  2 conv(S, M T) + sum M T^2.
- Efros & Leung (1999), multi-resolution: pixels are chosen by Gaussian-weighted neighbourhood
  matching against every sample neighbourhood, with a random choice among matches within
  (1 + eps) of the best; coarse levels first, each finer level starts from the upsampled
  coarser result and updates pixels in interleaved batches (a parallel variant, as in
  Lefebvre & Hoppe 2005) so that a 256 px output takes seconds, not minutes.
- Neural (Gatys, Ecker & Bethge 2015): Gram matching from noise on a feature network.
- `tile=True` makes outputs seamlessly tileable: quilting and Efros-Leung work on a torus
  (wrap-around overlaps and neighbourhoods); the neural method pads circularly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ImagesynthError

METHODS = ("quilting", "efros-leung", "neural")


def _check_sample(sample: np.ndarray, block: int, what: str = "the texture sample") -> None:
    h, w = sample.shape[:2]
    if min(h, w) < block + 1:
        raise ImagesynthError(f"{what} is {w}x{h} px; it must be larger than the {block} px patch")


def default_block(sample: np.ndarray) -> int:
    return int(np.clip(round(min(sample.shape[:2]) / 2.5), 8, 48))


def _ssd_all(
    sample_t: torch.Tensor, sq_t: torch.Tensor, target: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Masked SSD of `target` (b, b, C) against every b x b block of the sample."""
    m = torch.from_numpy(mask.astype(np.float32))
    t = torch.from_numpy(target.astype(np.float32)).permute(2, 0, 1)
    c = t.shape[0]
    cross = F.conv2d(sample_t, (t * m)[None])[0, 0]
    energy = F.conv2d(sq_t, m.expand(c, -1, -1)[None].contiguous())[0, 0]
    return (energy - 2 * cross + float((t * t * m).sum())).numpy()


def _pick(err: np.ndarray, tol: float, rng: np.random.Generator) -> tuple[int, int]:
    best = err.min()
    ys, xs = np.nonzero(err <= best + tol * abs(best) + 1e-6)
    k = int(rng.integers(len(ys)))
    return int(ys[k]), int(xs[k])


def min_cut(err: np.ndarray) -> np.ndarray:
    """Minimum-error vertical path through err (H, W): the column index per row (DP)."""
    h, w = err.shape
    cost = err.copy()
    for i in range(1, h):
        prev = cost[i - 1]
        left = np.r_[np.inf, prev[:-1]]
        right = np.r_[prev[1:], np.inf]
        cost[i] += np.minimum(np.minimum(left, prev), right)
    path = np.empty(h, dtype=int)
    path[-1] = int(np.argmin(cost[-1]))
    for i in range(h - 2, -1, -1):
        j = path[i + 1]
        lo, hi = max(0, j - 1), min(w, j + 2)
        path[i] = lo + int(np.argmin(cost[i, lo:hi]))
    return path


def _cut_mask(
    old: np.ndarray, new: np.ndarray, b: int, ov: int, sides: dict[str, bool]
) -> np.ndarray:
    """Mask (b, b): 1 where the new block shows, 0 where the existing image stays."""
    e = ((old - new) ** 2).sum(-1)
    mask = np.ones((b, b), dtype=bool)
    cols = np.arange(ov)
    if sides.get("left"):
        path = min_cut(e[:, :ov])
        mask[:, :ov] &= cols[None, :] > path[:, None]
    if sides.get("right"):
        path = min_cut(e[:, b - ov :][:, ::-1])
        mask[:, b - ov :] &= (cols[None, :] > path[:, None])[:, ::-1]
    if sides.get("top"):
        path = min_cut(e[:ov, :].T)
        mask[:ov, :] &= (cols[None, :] > path[:, None]).T
    if sides.get("bottom"):
        path = min_cut(e[b - ov :, :][::-1].T)
        mask[b - ov :, :] &= (cols[None, :] > path[:, None]).T[::-1]
    return mask


def quilt(
    sample: np.ndarray,
    size: int,
    block: int | None = None,
    overlap: int | None = None,
    tol: float = 0.1,
    seed: int = 0,
    tile: bool = False,
) -> np.ndarray:
    """Image quilting of an (H, W, C) float sample in [0, 1] to a size x size texture."""
    b = block or default_block(sample)
    _check_sample(sample, b)
    ov = overlap if overlap is not None else max(2, b // 5)
    if not 1 <= ov < b // 2 + 1:
        raise ImagesynthError(f"overlap must be in 1..{b // 2} px for block {b}, got {ov}")
    rng = np.random.default_rng(seed)
    step = b - ov
    n = max(1, int(np.ceil((size - (0 if tile else ov)) / step)))
    period = n * step
    side = period if tile else period + ov
    canvas = np.zeros((side, side, sample.shape[2]), dtype=np.float32)
    sample_t = torch.from_numpy(sample.astype(np.float32)).permute(2, 0, 1)[None]
    sq_t = sample_t**2
    hs, ws = sample.shape[0] - b + 1, sample.shape[1] - b + 1
    for i in range(n):
        for j in range(n):
            rows = (i * step + np.arange(b)) % side
            cols = (j * step + np.arange(b)) % side
            sides = {
                "left": j > 0,
                "top": i > 0,
                "right": tile and j == n - 1 and n > 1,
                "bottom": tile and i == n - 1 and n > 1,
            }
            old = canvas[np.ix_(rows, cols)]
            if not any(sides.values()):
                y, x = int(rng.integers(hs)), int(rng.integers(ws))
                canvas[np.ix_(rows, cols)] = sample[y : y + b, x : x + b]
                continue
            m = np.zeros((b, b), dtype=bool)
            if sides["left"]:
                m[:, :ov] = True
            if sides["right"]:
                m[:, b - ov :] = True
            if sides["top"]:
                m[:ov, :] = True
            if sides["bottom"]:
                m[b - ov :, :] = True
            err = _ssd_all(sample_t, sq_t, old, m)
            y, x = _pick(err, tol, rng)
            new = sample[y : y + b, x : x + b]
            keep_new = _cut_mask(old, new, b, ov, sides)
            canvas[np.ix_(rows, cols)] = np.where(keep_new[..., None], new, old)
    return canvas[:size, :size] if not tile else _fit_torus(canvas, size)


def _fit_torus(canvas: np.ndarray, size: int) -> np.ndarray:
    """A size x size tileable image from a tileable canvas of another period."""
    if canvas.shape[0] == size:
        return canvas
    t = torch.from_numpy(canvas).permute(2, 0, 1)[None]
    p = 8
    t = F.pad(t, (p, p, p, p), mode="circular")
    s = size / canvas.shape[0]
    out = F.interpolate(t, scale_factor=s, mode="bicubic", align_corners=False)
    q = round(p * s)
    return out[0, :, q : q + size, q : q + size].permute(1, 2, 0).clamp(0, 1).numpy()


# ----- Efros-Leung ------------------------------------------------------------------------------
def _gauss(k: int) -> torch.Tensor:
    t = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-0.5 * (t / (k / 6.4)) ** 2)
    return (g[:, None] * g[None, :]).flatten()


def _patches(x: torch.Tensor, k: int, pad_mode: str | None) -> torch.Tensor:
    """(H*W or fewer, C*k*k) neighbourhoods of (1, C, H, W) x."""
    if pad_mode:
        x = F.pad(x, (k // 2,) * 4, mode=pad_mode)
    return F.unfold(x, k)[0].T


def efros_leung(
    sample: np.ndarray,
    size: int,
    window: int = 7,
    levels: int = 3,
    eps: float = 0.1,
    passes: int = 2,
    seed: int = 0,
    tile: bool = False,
) -> np.ndarray:
    """Multi-resolution non-parametric pixel sampling (see module docstring)."""
    _check_sample(sample, window)
    gen = torch.Generator().manual_seed(seed)
    s_full = torch.from_numpy(sample.astype(np.float32)).permute(2, 0, 1)[None]
    c = s_full.shape[1]
    g = _gauss(window).repeat(c)
    out = None
    for lev in range(levels - 1, -1, -1):
        f = 2**lev
        s = F.avg_pool2d(s_full, f) if f > 1 else s_full
        n = max(window + 1, size // f)
        if min(s.shape[-2:]) <= window:
            continue
        cand = _patches(s, window, None)  # (N, D)
        centre = s[
            0, :, window // 2 : s.shape[2] - window // 2, window // 2 : s.shape[3] - window // 2
        ]
        centre = centre.reshape(c, -1).T  # (N, C)
        cw = cand * g.sqrt()
        cn = (cw * cw).sum(1)
        if out is None:  # coarsest level: random sample pixels
            idx = torch.randint(len(centre), (n * n,), generator=gen)
            out = centre[idx].T.reshape(1, c, n, n)
        else:
            out = F.interpolate(out, size=(n, n), mode="bilinear", align_corners=False)
        reps = passes + (2 if lev == levels - 1 else 0)
        k = 3  # interleave: pixels with (y % k, x % k) == (a, b) update together
        for _ in range(reps):
            for a in range(k):
                for bb in range(k):
                    q = _patches(out, window, "circular" if tile else "reflect")
                    q = q.reshape(n, n, -1)[a::k, bb::k].reshape(-1, q.shape[-1])
                    qw = q * g.sqrt()
                    d = cn[None] - 2 * qw @ cw.T + (qw * qw).sum(1, keepdim=True)  # (M, N)
                    best = d.min(1, keepdim=True).values
                    ok = d <= best * (1 + eps) + 1e-6
                    r = torch.rand(d.shape, generator=gen) * ok
                    pick = r.argmax(1)
                    vals = centre[pick]  # (M, C)
                    hh = len(range(a, n, k))
                    ww = len(range(bb, n, k))
                    out[0, :, a::k, bb::k] = vals.T.reshape(c, hh, ww)
    assert out is not None
    return out[0, :, :size, :size].permute(1, 2, 0).clamp(0, 1).numpy()


# ----- neural -----------------------------------------------------------------------------------
def neural_texture(
    sample: np.ndarray,
    size: int,
    net: torch.nn.Module,
    steps: int = 300,
    seed: int = 0,
    tile: bool = False,
    lr: float = 0.02,
    progress: bool = False,
) -> np.ndarray:
    """Gram matching from noise (Gatys et al. 2015) with Adam."""
    from tqdm.auto import tqdm

    from .style import GatysLoss, StyleOptions

    _check_sample(sample, 16)
    opts = StyleOptions(
        size=max(size, 16),
        content_weight=0,
        style_weight=1,
        tv_weight=0,
        steps=steps,
        optimizer="adam",
        lr=lr,
    ).validate()
    s = torch.from_numpy(sample.astype(np.float32)).permute(2, 0, 1)[None] * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    x = ((torch.rand(1, s.shape[1], size, size, generator=gen) * 2 - 1) * 0.3).requires_grad_(True)
    old = getattr(net, "circular", False)
    net.circular = tile
    try:
        loss_fn = GatysLoss(net, None, [s], [1.0], opts)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in tqdm(range(steps), desc="neural texture", disable=not progress):
            opt.zero_grad()
            loss, _ = loss_fn(x)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(-1, 1)
    finally:
        net.circular = old
    return ((x.detach()[0] + 1) / 2).permute(1, 2, 0).numpy()


# ----- hole filling -----------------------------------------------------------------------------
def fill(
    image: np.ndarray,
    mask: np.ndarray,
    block: int = 15,
    tol: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Fill the pixels where mask is True from the rest of the image, patch by patch from the
    hole's border inwards (the most-known window first), by masked-SSD matching."""
    h, w = image.shape[:2]
    if mask.shape != (h, w):
        raise ImagesynthError(f"mask is {mask.shape[1]}x{mask.shape[0]} px, image {w}x{h} px")
    if not mask.any():
        return image.copy()
    b, r = block | 1, (block | 1) // 2
    known = ~mask
    rng = np.random.default_rng(seed)
    img = image.astype(np.float32).copy()
    img[mask] = 0
    # source windows: fully known
    unk = torch.from_numpy((~known).astype(np.float32))[None, None]
    bad = F.conv2d(unk, torch.ones(1, 1, b, b))[0, 0].numpy() > 0
    if bad.all():
        raise ImagesynthError(
            f"the mask leaves no fully known {b}x{b} px window to copy texture from"
        )
    from scipy.ndimage import binary_dilation

    while not known.all():
        border = ~known & binary_dilation(known)
        ys, xs = np.nonzero(border)
        kc = F.conv2d(
            torch.from_numpy(known.astype(np.float32))[None, None],
            torch.ones(1, 1, b, b),
            padding=r,
        )[0, 0].numpy()
        k = int(np.argmax(kc[ys, xs]))
        y, x = int(np.clip(ys[k], r, h - r - 1)), int(np.clip(xs[k], r, w - r - 1))
        win = (slice(y - r, y + r + 1), slice(x - r, x + r + 1))
        t = torch.from_numpy(img).permute(2, 0, 1)[None]
        err = _ssd_all(t, t**2, img[win], known[win])
        err[bad] = np.inf
        sy, sx = _pick(err, tol, rng)
        src = img[sy : sy + b, sx : sx + b]
        hole = ~known[win]
        img[win][hole] = src[hole]
        known[win] = True
    return img
