"""Texture synthesis: image quilting, Efros-Leung pixel growing, Gram-based neural textures,
and hole filling.

- Quilting (Efros & Freeman 2001): blocks placed in raster order, each chosen at random among
  the sample blocks whose overlap error is within (1 + tol) of the best, then joined along the
  minimum-error boundary cut (dynamic programming). The overlap error of every candidate is
  computed at once as a masked SSD with convolutions: sum M (P - T)^2 = conv(S^2, M) -
  2 conv(S, M T) + sum M T^2.
- Efros & Leung (1999): pixels grow one by one from a seed, the unknown pixel with the most
  known neighbours first (onion peel); each copies the centre of a sample window picked at
  random among those whose Gaussian-weighted SSD over the known neighbourhood is within
  (1 + eps) of the best. Pixels far enough apart not to see each other are matched in one
  batch, which gives the sequential result at batched speed.
- Neural (Gatys, Ecker & Bethge 2015): Gram matching from noise on a feature network, coarse
  to fine, with a small total-variation term and histogram matching of the result.
- `tile=True` makes outputs seamlessly tileable: quilting lays blocks on a torus of exactly
  the output's period (the last row and column are matched and cut against the first ones
  across the wrap-around), Efros-Leung grows on a torus, the neural method pads circularly.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _cut_mask(old: np.ndarray, new: np.ndarray, widths: dict[str, int]) -> np.ndarray:
    """Mask (b, b): 1 where the new block shows, 0 where the existing image stays.

    `widths[side]` is the overlap in px with what is already on that side (0 = none); each
    overlap is split along its minimum-error boundary cut.
    """
    b = old.shape[0]
    e = ((old - new) ** 2).sum(-1)
    mask = np.ones((b, b), dtype=bool)
    if w := widths.get("left", 0):
        mask[:, :w] &= np.arange(w)[None, :] > min_cut(e[:, :w])[:, None]
    if w := widths.get("right", 0):
        mask[:, b - w :] &= (np.arange(w)[None, :] > min_cut(e[:, b - w :][:, ::-1])[:, None])[
            :, ::-1
        ]
    if w := widths.get("top", 0):
        mask[:w, :] &= (np.arange(w)[None, :] > min_cut(e[:w, :].T)[:, None]).T
    if w := widths.get("bottom", 0):
        mask[b - w :, :] &= (np.arange(w)[None, :] > min_cut(e[b - w :, :][::-1].T)[:, None]).T[
            ::-1
        ]
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
    """Image quilting of an (H, W, C) float sample in [0, 1] to a size x size texture.

    With `tile`, blocks are laid on a torus of period `size`: the last column and row
    overlap the first ones across the wrap-around, are matched on both sides, and are cut
    along minimum-error boundaries there too, so the output repeats without seams.
    """
    b = block or default_block(sample)
    _check_sample(sample, b)
    ov = overlap if overlap is not None else max(2, b // 5)
    if not 1 <= ov < b // 2 + 1:
        raise ImagesynthError(f"overlap must be in 1..{b // 2} px for block {b}, got {ov}")
    rng = np.random.default_rng(seed)
    step = b - ov
    if tile:  # n blocks per period, spread evenly: every overlap is >= ov
        n = max(2, int(np.ceil(size / step)))
        if size / n < b / 2:
            raise ImagesynthError(f"--tile needs size >= {b} px for block {b}, got {size}")
        pos = [round(j * size / n) for j in range(n)]
        side = size
    else:
        n = max(1, int(np.ceil((size - ov) / step)))
        pos = [j * step for j in range(n)]
        side = pos[-1] + b
    canvas = np.zeros((side, side, sample.shape[2]), dtype=np.float32)
    sample_t = torch.from_numpy(sample.astype(np.float32)).permute(2, 0, 1)[None]
    sq_t = sample_t**2
    hs, ws = sample.shape[0] - b + 1, sample.shape[1] - b + 1
    # overlap with the previous block, and (tile: last block) with the first across the wrap
    before = [0] + [pos[j - 1] + b - pos[j] for j in range(1, n)]
    wrap = pos[-1] + b - side if tile else 0
    for i in range(n):
        for j in range(n):
            rows = (pos[i] + np.arange(b)) % side
            cols = (pos[j] + np.arange(b)) % side
            widths = {
                "left": before[j],
                "top": before[i],
                "right": wrap if j == n - 1 else 0,
                "bottom": wrap if i == n - 1 else 0,
            }
            old = canvas[np.ix_(rows, cols)]
            if not any(widths.values()):
                y, x = int(rng.integers(hs)), int(rng.integers(ws))
                canvas[np.ix_(rows, cols)] = sample[y : y + b, x : x + b]
                continue
            m = np.zeros((b, b), dtype=bool)
            m[:, : widths["left"]] = True
            m[: widths["top"], :] = True
            m[:, b - widths["right"] :] = widths["right"] > 0
            m[b - widths["bottom"] :, :] |= widths["bottom"] > 0
            err = _ssd_all(sample_t, sq_t, old, m)
            y, x = _pick(err, tol, rng)
            new = sample[y : y + b, x : x + b]
            keep_new = _cut_mask(old, new, widths)
            canvas[np.ix_(rows, cols)] = np.where(keep_new[..., None], new, old)
    return canvas[:size, :size]


# ----- Efros-Leung ------------------------------------------------------------------------------
def _gauss2d(k: int) -> np.ndarray:
    """(k, k) Gaussian window weights, sigma = k / 6.4 (Efros & Leung's choice)."""
    t = np.arange(k, dtype=np.float32) - k // 2
    g = np.exp(-0.5 * (t / (k / 6.4)) ** 2)
    return np.outer(g, g).astype(np.float32)


def default_window(sample: np.ndarray) -> int:
    """An odd neighbourhood side of about a quarter of the sample's shorter side, 7..21 px."""
    return int(np.clip(min(sample.shape[:2]) // 4, 7, 21)) | 1


def efros_leung(
    sample: np.ndarray,
    size: int,
    window: int | None = None,
    eps: float = 0.1,
    seed: int = 0,
    tile: bool = False,
    batch: int = 256,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Efros & Leung (1999) pixel-by-pixel growing of an (H, W, C) sample in [0, 1].

    From a 3 x 3 seed in the centre, the unknown pixel with the most known neighbours comes
    next (onion-peel order). Its Gaussian-weighted SSD over the known part of its window is
    taken against every sample window; the pixel copies the centre of a window picked at
    random among those within (1 + eps) of the best. Pixels whose windows do not contain one
    another are independent, so each round takes a greedy set of such pixels (most known
    neighbours first) and matches them in one batch: the result is that of the one-at-a-time
    algorithm in that order. `tile=True` grows on a torus. `callback(done, total)` reports
    progress in pixels.
    """
    from tqdm.auto import tqdm

    k = window or default_window(sample)
    if k < 3 or k % 2 == 0:
        raise ImagesynthError(f"window must be an odd number >= 3, got {k}")
    _check_sample(sample, k)
    if size < 3:
        raise ImagesynthError(f"size must be at least 3 px, got {size}")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    r = k // 2
    grey = sample.shape[2] == 3 and np.allclose(sample[..., :1], sample[..., 1:])
    src = sample[..., :1] if grey else sample  # one channel is enough for grey samples
    c = src.shape[2]
    st = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)).permute(2, 0, 1)[None]
    cand = F.unfold(st, k)[0].T.contiguous()  # (N, C*k*k): every sample window, channel-major
    cand_sq = (cand * cand).reshape(len(cand), c, k * k).sum(1)  # (N, k*k): summed over C
    centre = cand[:, [ch * k * k + r * k + r for ch in range(c)]]  # (N, C)
    g = torch.from_numpy(_gauss2d(k).ravel())
    side = size + 2 * r  # the image plus an r-px border (never known, or wrapped on a torus)
    img = np.zeros((c, side, side), np.float32)
    known = np.zeros((side, side), bool)
    y0, x0 = int(rng.integers(src.shape[0] - 2)), int(rng.integers(src.shape[1] - 2))
    cy = cx = r + max(0, size // 2 - 1)
    n0 = min(3, size)
    img[:, cy : cy + n0, cx : cx + n0] = src[y0 : y0 + n0, x0 : x0 + n0].transpose(2, 0, 1)
    known[cy : cy + n0, cx : cx + n0] = True
    ones = torch.ones(1, 1, k, k)
    oy, ox = (v.ravel() for v in np.mgrid[-r : r + 1, -r : r + 1])
    total, done = size * size, n0 * n0
    bar = tqdm(total=total, initial=done, desc="efros-leung", unit="px", disable=not progress)
    try:
        while done < total:
            if tile:  # the border mirrors the opposite side of the torus
                for arr in (img, known):
                    inner = arr[..., r : r + size, r : r + size]
                    pad = [(0, 0)] * (arr.ndim - 2) + [(r, r), (r, r)]
                    arr[...] = np.pad(inner, pad, mode="wrap")
            kt = torch.from_numpy(known.astype(np.float32))[None, None]
            count = F.conv2d(kt, ones)[0, 0].numpy()  # (size, size) known pixels per window
            ys, xs = np.nonzero(~known[r : r + size, r : r + size] & (count > 0))
            order = np.lexsort((rng.random(len(ys)), -count[ys, xs]))
            taken = np.zeros((size, size), bool)
            sel: list[tuple[int, int]] = []
            for y, x in zip(ys[order], xs[order], strict=True):
                if taken[y, x]:
                    continue
                sel.append((y, x))
                rows, cols = np.arange(y - r, y + r + 1), np.arange(x - r, x + r + 1)
                if tile:
                    taken[np.ix_(rows % size, cols % size)] = True
                else:
                    taken[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = True
                if len(sel) >= batch:
                    break
            py, px = (np.array(v) + r for v in zip(*sel, strict=True))
            wy, wx = py[:, None] + oy[None], px[:, None] + ox[None]  # (B, k*k) window pixels
            t = torch.from_numpy(img[:, wy, wx].transpose(1, 0, 2).reshape(len(sel), -1))
            wm = torch.from_numpy(known[wy, wx].astype(np.float32)) * g  # (B, k*k)
            wmc = wm.repeat(1, c)  # (B, C*k*k)
            # sum_j w_j (P_j - T_j)^2 for every sample window P, as two matrix products
            d = wm @ cand_sq.T - 2 * (wmc * t) @ cand.T + (wmc * t * t).sum(1, keepdim=True)
            d = d / wm.sum(1, keepdim=True)
            best = d.min(1, keepdim=True).values.clamp_min(0)
            ok = d <= best * (1 + eps) + 1e-6
            pick = (torch.rand(d.shape, generator=gen) * ok).argmax(1)
            img[:, py, px] = centre[pick].numpy().T
            known[py, px] = True
            done += len(sel)
            bar.update(len(sel))
            if callback is not None:
                callback(done, total)
    finally:
        bar.close()
    out = img[:, r : r + size, r : r + size].transpose(1, 2, 0)
    return np.repeat(out, 3, axis=2) if grey else out


# ----- neural -----------------------------------------------------------------------------------
def match_histogram(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """x (H, W, C) with each channel's values replaced by ref's at the same rank."""
    out = np.empty_like(x, dtype=np.float32)
    for ch in range(x.shape[2]):
        v = x[..., ch].ravel()
        q = np.sort(ref[..., ch].ravel())
        flat = np.empty(len(v), dtype=np.float32)
        flat[np.argsort(v, kind="stable")] = np.interp(
            np.linspace(0, 1, len(v)), np.linspace(0, 1, len(q)), q
        )
        out[..., ch] = flat.reshape(x.shape[:2])
    return out


def neural_texture(
    sample: np.ndarray,
    size: int,
    net: torch.nn.Module,
    steps: int = 300,
    seed: int = 0,
    tile: bool = False,
    lr: float = 0.02,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    optimizer: str = "adam",
    tv_weight: float = 1e-3,
    histogram: bool = True,
    coarse_to_fine: bool = True,
) -> np.ndarray:
    """Gram matching from noise (Gatys et al. 2015), coarse to fine.

    The `steps` are shared among the scales of `style._scales` (128 px, 256 px, ...): each
    finer scale starts from the coarser result upsampled, with the sample scaled alike, so
    large structures settle where they are cheap. A small total-variation term removes the
    pixel noise that Gram statistics do not see, and the result's per-channel histogram is
    matched to the sample's (`histogram`). `callback(step, x)` runs after each step with the
    current image x, (1, C, H, W) in [-1, 1]; an exception raised there stops the
    optimisation (a server's cancel).
    """
    from tqdm.auto import tqdm

    from .style import GatysLoss, StyleOptions, _resize, _scales, optimize_image

    _check_sample(sample, 16)
    opts = StyleOptions(
        size=max(size, 16),
        content_weight=0,
        style_weight=1,
        tv_weight=tv_weight,
        steps=steps,
        optimizer=optimizer,
        lr=lr,
    ).validate()
    s = torch.from_numpy(sample.astype(np.float32)).permute(2, 0, 1)[None] * 2 - 1
    # a grey sample gets a grey result: one channel is optimised and fed to the net x3
    grey = s.shape[1] == 3 and bool((s[:, :1] == s[:, 1:]).all())
    gen = torch.Generator().manual_seed(seed)
    sides = _scales(size, 0) if coarse_to_fine else [size]
    share = [steps // len(sides)] * len(sides)
    share[-1] += steps - sum(share)
    x = None
    old = getattr(net, "circular", False)
    net.circular = tile
    bar = tqdm(total=steps, desc="neural texture", disable=not progress)
    done = 0
    try:
        for side, n in zip(sides, share, strict=True):
            f = side / size
            s_k = _resize(s, (max(16, round(s.shape[2] * f)), max(16, round(s.shape[3] * f))))
            if x is None:
                x = torch.rand(1, 1 if grey else s.shape[1], side, side, generator=gen) * 2 - 1
                x = 0.3 * x + s.mean((1, 2, 3) if grey else (2, 3), keepdim=True)
            else:
                x = _resize(x, (side, side))
            gram_loss = GatysLoss(net, None, [s_k], [1.0], opts)

            def loss_fn(xi: torch.Tensor, f: GatysLoss = gram_loss) -> tuple:
                return f(xi.expand(-1, 3, -1, -1) if grey else xi)

            def on_step(i: int, xi: torch.Tensor, logs: dict[str, float]) -> None:
                nonlocal done
                done += 1
                bar.update(1)
                if callback is not None:
                    callback(done, xi.expand(-1, 3, -1, -1) if grey else xi)

            if n > 0:
                x = optimize_image(x, loss_fn, opts, n, on_step)
    finally:
        net.circular = old
        bar.close()
    assert x is not None
    x = x.expand(-1, 3, -1, -1) if grey else x
    out = ((x[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return match_histogram(out, sample) if histogram else out


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
