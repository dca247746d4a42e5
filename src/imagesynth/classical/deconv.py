"""Classical deconvolution baselines (scikit-image): Wiener and Richardson-Lucy."""

from __future__ import annotations

import numpy as np

from ..errors import ImagesynthError


def gaussian_psf(sigma: float, radius: int | None = None) -> np.ndarray:
    """A normalised 2-D Gaussian point-spread function."""
    if sigma <= 0:
        raise ImagesynthError(f"blur sigma must be > 0, got {sigma}")
    r = radius if radius is not None else max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    psf = np.outer(k, k)
    return psf / psf.sum()


def _per_channel(image: np.ndarray, fn) -> np.ndarray:
    """Apply fn to each channel of (H, W, C) float image in [0, 1]."""
    if image.ndim == 2:
        return np.clip(fn(image), 0, 1)
    return np.stack([np.clip(fn(image[..., c]), 0, 1) for c in range(image.shape[-1])], -1)


def wiener(image: np.ndarray, psf: np.ndarray, balance: float = 0.01) -> np.ndarray:
    """Wiener deconvolution (skimage.restoration.wiener) of an (H, W[, C]) image in [0, 1]."""
    from skimage.restoration import wiener as _wiener

    return _per_channel(image, lambda ch: _wiener(ch, psf, balance, clip=False))


def richardson_lucy(image: np.ndarray, psf: np.ndarray, num_iter: int = 30) -> np.ndarray:
    """Richardson-Lucy deconvolution (skimage.restoration.richardson_lucy)."""
    from skimage.restoration import richardson_lucy as _rl

    return _per_channel(image, lambda ch: _rl(ch, psf, num_iter=num_iter, clip=False))
