"""Set metrics on feature arrays: FID, KID, Inception Score, precision / recall, accuracy.

All math runs in float64 numpy on features an extractor produced; the extractors and the
image handling live elsewhere (`extractors.py`, `evaluate.py`). Each function cites its paper.
"""

from __future__ import annotations

import numpy as np

from ..errors import ImagesynthError


def _as_features(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ImagesynthError(f"{what} features must be shaped (N, D), got {arr.shape}")
    if arr.shape[0] < 2:
        raise ImagesynthError(
            f"{what} has {arr.shape[0]} image(s); set metrics need at least 2 images per set"
        )
    if not np.isfinite(arr).all():
        raise ImagesynthError(f"{what} features contain NaN or infinity")
    return arr


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_features(a, "the sample set"), _as_features(b, "the reference set")
    if a.shape[1] != b.shape[1]:
        raise ImagesynthError(
            f"feature sizes differ: {a.shape[1]} (samples) vs {b.shape[1]} (references)"
        )
    return a, b


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    x = _as_features(features, "the feature set")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017).

    Tr (S1 S2)^(1/2) = Tr (S1^(1/2) S2 S1^(1/2))^(1/2): two symmetric eigendecompositions,
    stable for singular covariances (where scipy's sqrtm needs an epsilon on the diagonal).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ImagesynthError(
            f"Gaussian statistics do not match: mu {mu1.shape} / {mu2.shape}, "
            f"sigma {s1.shape} / {s2.shape}"
        )
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    m = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(ev, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid(samples: np.ndarray, references: np.ndarray) -> float:
    """Frechet distance between two feature sets (N, D) and (M, D)."""
    a, b = _check_pair(samples, references)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018, eq. 2)."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def kid_subset_size(n_samples: int, n_refs: int, subset_size: int | None) -> int:
    """The KID subset size: as asked (checked against both sets) or min(1000, both sets)."""
    if subset_size is None:
        return min(1000, n_samples, n_refs)
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise ImagesynthError(f"KID subset size must be an integer >= 2, got {subset_size!r}")
    smallest = min(n_samples, n_refs)
    if subset_size > smallest:
        which = "sample" if n_samples <= n_refs else "reference set"
        raise ImagesynthError(
            f"KID subset size {subset_size} is larger than the {which} ({smallest} images); "
            f"use a subset size <= {smallest} or more images"
        )
    return subset_size


def kid(
    samples: np.ndarray,
    references: np.ndarray,
    subsets: int = 100,
    subset_size: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of unbiased MMD^2 over random subsets."""
    a, b = _check_pair(samples, references)
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ImagesynthError(f"KID subsets must be a positive integer, got {subsets!r}")
    m = kid_subset_size(len(a), len(b), subset_size)
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split; mean and std (Salimans et al. 2016)."""
    x = _as_features(logits, "the sample set")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= len(x):
        raise ImagesynthError(
            f"IS splits must be an integer in 1..{len(x)} (the number of images), got {splits!r}"
        )
    p = _softmax(x)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-300, None)) - np.log(py))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_radii(x: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row."""
    out = np.empty(len(x))
    sq = (x**2).sum(1)
    for i in range(0, len(x), block):
        d2 = sq[i : i + block, None] + sq[None] - 2 * x[i : i + block] @ x.T
        np.clip(d2, 0, None, out=d2)
        # the row's own zero distance is the 0th smallest; the k-th neighbour is index k
        out[i : i + block] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
    return out


def _coverage(
    queries: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int = 2048
) -> float:
    """Fraction of queries inside at least one ball (centre, radius)."""
    inside = 0
    sq_c = (centres**2).sum(1)
    r2 = radii**2
    for i in range(0, len(queries), block):
        q = queries[i : i + block]
        d2 = (q**2).sum(1)[:, None] + sq_c[None] - 2 * q @ centres.T
        inside += int((d2 <= r2[None] + 1e-9 * (1 + r2[None])).any(1).sum())
    return inside / len(queries)


def precision_recall(
    samples: np.ndarray, references: np.ndarray, k: int = 3
) -> tuple[float, float]:
    """Improved precision and recall with k-NN balls (Kynkaanniemi et al. 2019)."""
    a, b = _check_pair(samples, references)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < min(len(a), len(b)):
        raise ImagesynthError(
            f"precision/recall k must be an integer in 1..{min(len(a), len(b)) - 1}, got {k!r}"
        )
    precision = _coverage(a, b, _kth_radii(b, k))
    recall = _coverage(b, a, _kth_radii(a, k))
    return precision, recall


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose argmax class is the label they were generated for."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ImagesynthError(
            f"class accuracy needs logits (N, K) and labels (N,), got {logits.shape} and "
            f"{labels.shape}"
        )
    if len(labels) == 0:
        raise ImagesynthError("class accuracy needs at least one labelled image")
    return float((logits.argmax(1) == labels).mean())
