"""`digits`: scikit-learn's bundled 1,797 handwritten 8x8 digits (UCI optdigits test set).

Read straight from the CSV inside the scikit-learn wheel. Pixels are 0..16 ink intensity;
we draw white ink on black, as MNIST does, and resize on request.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from typing import ClassVar

import numpy as np
from PIL import Image

from ..errors import DataError
from ._files import package_dir
from .base import ImageDataset, Item, check_size, register_dataset

NUM_IMAGES = 1797
TEST_FRACTION = 0.2  # per class; fixed split, see `split_indices`
SPLIT_SEED = 0
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@lru_cache(maxsize=1)
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, 8, 8) in 0..255 and their int64 labels (N,)."""
    path = package_dir("sklearn", "scikit-learn") / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"scikit-learn's digits file is missing at {path}; reinstall scikit-learn")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    if table.shape != (NUM_IMAGES, 65):
        raise DataError(f"unexpected digits table shape {table.shape}, expected (1797, 65)")
    images = np.round(table[:, :64] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
    return images, table[:, 64].astype(np.int64)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """The fixed, class-stratified split: 20 % of each class (by a seed-0 shuffle) is test."""
    _, labels = load_digits_arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = round(TEST_FRACTION * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return {
        "train": np.sort(np.concatenate(train)),
        "test": np.sort(np.concatenate(test)),
        "all": np.arange(NUM_IMAGES),
    }


@register_dataset("digits", "scikit-learn's 1,797 handwritten 8x8 digits, 10 classes, resized")
class DigitsDataset(ImageDataset):
    """Handwritten digits, grayscale (or RGB on request), resized to `size` px."""

    name = "digits"
    class_names: ClassVar[list[str]] = [str(d) for d in range(10)]
    flip_ok = False  # a mirrored 3 is not a 3

    def __init__(
        self,
        size: int = 16,
        split: str = "train",
        resample: str = "bilinear",
        channels: int = 1,
        seed: int = 0,
    ) -> None:
        self.size = check_size(size, 8, 512)
        if split not in ("train", "test", "all"):
            raise DataError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
        if resample not in RESAMPLE:
            raise DataError(
                f"digits resample must be one of {', '.join(RESAMPLE)}, got {resample!r}"
            )
        if channels not in (1, 3):
            raise DataError(f"digits channels must be 1 or 3, got {channels!r}")
        self.split, self.resample, self.channels = split, resample, channels
        self.seed = seed  # the data is fixed; kept so every dataset takes a seed
        self.indices = split_indices()[split]

    def __len__(self) -> int:
        return len(self.indices)

    def _get(self, index: int) -> Item:
        images, labels = load_digits_arrays()
        src = int(self.indices[index])
        image = Image.fromarray(images[src], mode="L")
        if self.size != 8:
            image = image.resize((self.size, self.size), RESAMPLE[self.resample])
        if self.channels == 3:
            image = image.convert("RGB")
        label = int(labels[src])
        return Item(
            image=image,
            label=label,
            caption=f"a handwritten digit {label}",
            attributes={"digit": label, "source_index": src, "split": self.split},
        )

    def describe(self) -> dict:
        return {**super().describe(), "split": self.split, "resample": self.resample}
