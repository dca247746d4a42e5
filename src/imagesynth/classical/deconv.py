"""Classical restoration baselines: Wiener and Richardson-Lucy deconvolution, TV denoising.

Both deconvolutions assume a known point-spread function (non-blind). By default the image is
first extended by one PSF width with mirror padding and cropped back afterwards, so the zero
(RL) or periodic (Wiener, FFT) boundary of the plain algorithms does not ring into the image.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _padding(image: np.ndarray, psf: np.ndarray, pad: bool) -> tuple[np.ndarray, int]:
    """The image mirror-padded by one PSF width (or as is), and that width."""
    if image.ndim not in (2, 3):
        raise ImagesynthError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    p = min(psf.shape[0], image.shape[0] - 1, image.shape[1] - 1) if pad else 0
    if p <= 0:
        return np.asarray(image, dtype=np.float64), 0
    width = ((p, p), (p, p)) + (((0, 0),) if image.ndim == 3 else ())
    return np.pad(np.asarray(image, dtype=np.float64), width, mode="reflect"), p


def _crop(image: np.ndarray, p: int) -> np.ndarray:
    return image[p:-p, p:-p] if p else image


def wiener(
    image: np.ndarray, psf: np.ndarray, balance: float = 0.01, pad: bool = True
) -> np.ndarray:
    """Wiener deconvolution (skimage.restoration.wiener) of an (H, W[, C]) image in [0, 1]."""
    from skimage.restoration import wiener as _wiener

    x, p = _padding(image, psf, pad)
    return _crop(_per_channel(x, lambda ch: _wiener(ch, psf, balance, clip=False)), p)


def richardson_lucy_path(
    image: np.ndarray, psf: np.ndarray, iterations: Sequence[int], pad: bool = True
) -> dict[int, np.ndarray]:
    """Richardson-Lucy estimates after each count in `iterations`, from one run.

    The update of skimage.restoration.richardson_lucy (start 0.5, eps 1e-12, `same`-size
    convolutions with zero padding), with FFT convolutions over all channels at once; equal
    to scikit-image's result up to float rounding with `pad=False` (tests/test_restore.py).
    """
    from scipy.signal import fftconvolve

    if not iterations or min(iterations) < 1:
        raise ImagesynthError(f"Richardson-Lucy iterations must be >= 1, got {list(iterations)}")
    x, p = _padding(image, psf, pad)
    k = psf[..., None] if x.ndim == 3 else psf
    k_mirror = np.flip(psf)[..., None] if x.ndim == 3 else np.flip(psf)
    axes = (0, 1)
    est = np.full(x.shape, 0.5)
    out: dict[int, np.ndarray] = {}
    for i in range(1, max(iterations) + 1):
        conv = fftconvolve(est, k, mode="same", axes=axes) + 1e-12
        est = est * fftconvolve(x / conv, k_mirror, mode="same", axes=axes)
        if i in iterations:
            out[i] = np.clip(_crop(est, p), 0, 1)
    return out


def richardson_lucy(
    image: np.ndarray, psf: np.ndarray, num_iter: int = 30, pad: bool = True
) -> np.ndarray:
    """Richardson-Lucy deconvolution (Richardson 1972, Lucy 1974) of an (H, W[, C]) image in
    [0, 1]: scikit-image's algorithm, computed with FFT convolutions."""
    return richardson_lucy_path(image, psf, [num_iter], pad)[num_iter]


def denoise_tv(image: np.ndarray, weight: float = 0.1) -> np.ndarray:
    """Total-variation denoising (Chambolle 2004; skimage.restoration.denoise_tv_chambolle)."""
    from skimage.restoration import denoise_tv_chambolle

    if weight <= 0:
        raise ImagesynthError(f"TV weight must be > 0, got {weight}")
    channel_axis = -1 if image.ndim == 3 else None
    return np.clip(denoise_tv_chambolle(image, weight=weight, channel_axis=channel_axis), 0, 1)
