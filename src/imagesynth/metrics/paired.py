"""Paired metrics: image i of A against image i of B (reconstructions, upscales, edits).

SSIM follows Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03 on the 8-bit range, averaged over the valid region and channels: the same numbers
as scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`. MS-SSIM (Wang et al. 2003) uses the standard
five-scale weights, fewer (renormalised, recorded in the protocol) when an image is too small.
PSNR is 10 log10(255^2 / MSE) per pair, capped at 100 dB for identical pairs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..errors import DataError, ImagesynthError
from .protocol import make_score, parse_metrics

K1, K2, SIGMA, TRUNCATE = 0.01, 0.03, 1.5, 3.5
MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PSNR_CAP_DB = 100.0
WIN = 2 * int(TRUNCATE * SIGMA + 0.5) + 1  # 11, as scipy's gaussian_filter(truncate=3.5)


def _window(channels: int, dtype: torch.dtype) -> torch.Tensor:
    r = WIN // 2
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=dtype) ** 2) / (2 * SIGMA**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, WIN, WIN).contiguous()


def _check(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape or x.ndim != 4:
        raise ImagesynthError(
            f"paired images must have equal shapes (B, C, H, W), got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    return x.double(), y.double()


def _ssim_parts(
    x: torch.Tensor, y: torch.Tensor, data_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image SSIM and contrast-structure (B,) on the valid region."""
    if min(x.shape[-2:]) < WIN:
        raise ImagesynthError(
            f"SSIM needs images of at least {WIN}x{WIN} px, got {x.shape[-1]}x{x.shape[-2]}"
        )
    w = _window(x.shape[1], x.dtype)
    conv = lambda t: F.conv2d(t, w, groups=x.shape[1])  # noqa: E731  valid, (B, C, H-10, W-10)
    mx, my = conv(x), conv(y)
    sxx, syy, sxy = conv(x * x) - mx * mx, conv(y * y) - my * my, conv(x * y) - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs
    return ssim_map.mean((1, 2, 3)), cs.mean((1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM per image pair (B,) for images (B, C, H, W) in 0..data_range."""
    return _ssim_parts(*_check(x, y), data_range)[0]


def ms_ssim_scales(height: int, width: int) -> int:
    """How many of the five MS-SSIM scales fit (the coarsest must still hold the 11 px window)."""
    scales, side = 1, min(height, width)
    while scales < len(MS_WEIGHTS) and side // 2 >= WIN:
        side //= 2
        scales += 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """MS-SSIM per pair (B,): prod_j cs_j^w_j * ssim_M^w_M, negative cs clamped at 0."""
    x, y = _check(x, y)
    m = ms_ssim_scales(*x.shape[-2:])
    weights = torch.tensor(MS_WEIGHTS[:m], dtype=torch.float64)
    weights = weights / weights.sum()
    out = torch.ones(x.shape[0], dtype=torch.float64)
    for j in range(m):
        s, cs = _ssim_parts(x, y, data_range)
        value = s if j == m - 1 else cs
        out = out * value.clamp(min=0) ** weights[j]
        if j < m - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return out


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """PSNR in dB per pair (B,), capped at 100 dB (identical images)."""
    x, y = _check(x, y)
    mse = ((x - y) ** 2).mean((1, 2, 3))
    value = 10 * torch.log10(data_range**2 / mse.clamp(min=1e-300))
    return value.clamp(max=PSNR_CAP_DB)


def pair_files(a: str | os.PathLike, b: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Two image files, or two folders matched by relative path (extension ignored)."""
    from .evaluate import list_images

    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_file() and pb.is_file():
        return [(pa, pb)]
    if pa.is_dir() and pb.is_dir():
        fa = {p.relative_to(pa).with_suffix(""): p for p in list_images(pa)}
        fb = {p.relative_to(pb).with_suffix(""): p for p in list_images(pb)}
        common = sorted(set(fa) & set(fb))
        only = sorted(set(fa) ^ set(fb))
        if only:
            where = pa if only[0] in fa else pb
            raise DataError(
                f"{only[0]} is only in {where}; folders must hold the same file names "
                f"({len(only)} unmatched)"
            )
        return [(fa[k], fb[k]) for k in common]
    for p in (pa, pb):
        if not p.exists():
            raise DataError(f"{str(p)!r} does not exist")
    raise DataError(f"pass two image files or two folders, got {pa} and {pb}")


def _as_uint8(paths: Sequence[Path]) -> torch.Tensor:
    from .evaluate import from_pils, read_image

    return from_pils([read_image(p) for p in paths], source=str(paths[0].parent)).images


def evaluate_pairs(
    a: str | os.PathLike,
    b: str | os.PathLike,
    metrics: str | Sequence[str] = ("ssim", "psnr"),
    *,
    lpips_net: str = "vgg",
    lpips_backbone: str | os.PathLike | None = None,
    lpips_linear: str | os.PathLike | None = None,
    extractor: str = "domain:digits",
    progress: bool = True,
) -> dict[str, Any]:
    """Paired metrics over files or matched folders: mean per metric, plus per-pair values."""
    metric_list = parse_metrics(metrics, kind="paired")
    pairs = pair_files(a, b)
    per: dict[str, list[float]] = {m: [] for m in metric_list}
    proto_extra: dict[str, dict[str, Any]] = {m: {} for m in metric_list}
    lp = dp = None
    if "lpips" in metric_list:
        if not (lpips_backbone and lpips_linear):
            raise ImagesynthError(
                "lpips needs --lpips-backbone (torchvision vgg16/alexnet weights) and "
                "--lpips-linear (the lpips package's v0.1 weights); offline default: "
                "--metrics domain-perceptual (not LPIPS)"
            )
        from .lpips import load_lpips

        lp, shas = load_lpips(lpips_backbone, lpips_linear, lpips_net)
        proto_extra["lpips"] = {"lpips_net": lpips_net, "lpips_version": "0.1", **shas}
    if "domain-perceptual" in metric_list:
        from .extractors import load_extractor
        from .lpips import DomainPerceptual

        ext = load_extractor(extractor, progress=progress)
        dp = DomainPerceptual(ext)
        proto_extra["domain-perceptual"] = {
            "extractor": ext.spec,
            "extractor_sha256": ext.sha256,
            "note": "not LPIPS",
        }
    sizes: set[tuple[int, ...]] = set()
    for i in tqdm(range(0, len(pairs), 32), desc="pairs", disable=not progress or None):
        chunk = pairs[i : i + 32]
        for pa, pb in chunk:
            xa, xb = _as_uint8([pa]), _as_uint8([pb])
            if xa.shape != xb.shape:
                raise DataError(
                    f"{pa} is {xa.shape[-1]}x{xa.shape[-2]}x{xa.shape[1]} but {pb} is "
                    f"{xb.shape[-1]}x{xb.shape[-2]}x{xb.shape[1]}; paired images must match"
                )
            sizes.add(tuple(xa.shape[1:]))
            fa, fb = xa.double(), xb.double()
            for m in metric_list:
                if m == "ssim":
                    v = ssim(fa, fb)
                elif m == "ms-ssim":
                    v = ms_ssim(fa, fb)
                    proto_extra[m]["scales"] = ms_ssim_scales(*fa.shape[-2:])
                elif m == "psnr":
                    v = psnr(fa, fb)
                else:
                    net = lp if m == "lpips" else dp
                    with torch.no_grad():
                        v = net(fa.float() / 127.5 - 1, fb.float() / 127.5 - 1)
                per[m].append(float(v[0]))
    base = {"n_pairs": len(pairs), "data_range": 255, "imagesynth_version": __version__}
    scores = []
    for m in metric_list:
        extra = (
            {"window": f"gaussian {WIN}x{WIN} sigma {SIGMA}", "K1": K1, "K2": K2}
            if "ssim" in m
            else {}
        )
        if m == "psnr":
            extra = {"psnr_cap_db": PSNR_CAP_DB, "average": "mean of per-pair dB"}
        proto = {**base, **extra, **proto_extra[m]}
        vals = torch.tensor(per[m], dtype=torch.float64)
        scores.append(
            make_score(
                m, float(vals.mean()), proto, std=float(vals.std()) if len(vals) > 1 else None
            )
        )
    names = [f"{pa.name}|{pb.name}" for pa, pb in pairs]
    return {
        "values": {s["metric"]: s["value"] for s in scores},
        "scores": scores,
        "per_pair": {"pairs": names, **per},
        "sizes": sorted(sizes),
    }
