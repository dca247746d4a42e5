"""`photos` and `textures`: scikit-image's bundled sample images, as random square crops.

Only images whose files ship inside the scikit-image wheel are used (nothing downloads); they
are read with Pillow from the package folder, so scikit-image itself is never imported.
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar

import numpy as np
from PIL import Image

from ..errors import DataError, unknown_name
from ._files import package_dir
from .base import ImageDataset, Item, check_size, register_dataset

# name -> file inside skimage/data (all in the wheel)
PHOTOS = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "hubble": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
TEXTURES = {"brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png"}
CAPTIONS = {
    "astronaut": "a photo of an astronaut",
    "camera": "a black and white photo of a cameraman",
    "chelsea": "a photo of a cat",
    "coffee": "a photo of a cup of coffee",
    "coins": "a photo of coins",
    "hubble": "a photo of galaxies in deep space",
    "immunohistochemistry": "a microscope image of stained tissue",
    "moon": "a photo of the moon's surface",
    "motorcycle": "a photo of a motorcycle",
    "retina": "a photo of a retina",
    "rocket": "a photo of a rocket launch",
    "brick": "a brick wall texture",
    "grass": "a grass texture",
    "gravel": "a gravel texture",
}


@lru_cache(maxsize=32)
def sample_image(name: str) -> Image.Image:
    """One bundled scikit-image sample image by name, as RGB (grayscale ones replicated)."""
    files = {**PHOTOS, **TEXTURES}
    if name not in files:
        raise unknown_name("sample image", name, list(files))
    path = package_dir("skimage", "scikit-image") / "data" / files[name]
    if not path.is_file():
        raise DataError(f"scikit-image's sample image {name!r} is missing at {path}")
    with Image.open(path) as im:
        return im.convert("RGB")


class CropDataset(ImageDataset):
    """Random square crops of a few large images: item i is a pure function of (seed, i).

    The crop side is drawn log-uniformly in [min_crop, max_crop] x the image's shorter side
    and resized to `size`, so both fine texture and whole-object views appear.
    """

    flip_ok = True
    images: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        size: int = 64,
        seed: int = 0,
        length: int = 10_000,
        min_crop: float = 0.25,
        max_crop: float = 1.0,
        images: str | None = None,
        channels: int = 3,
        split: str = "train",
    ) -> None:
        self.size = check_size(size, 8, 1024)
        if not 0.0 < min_crop <= max_crop <= 1.0:
            raise DataError(
                f"crop fractions must satisfy 0 < min_crop <= max_crop <= 1, "
                f"got min_crop={min_crop}, max_crop={max_crop}"
            )
        if length < 1:
            raise DataError(f"length must be >= 1, got {length}")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels!r}")
        if split not in ("train", "test"):
            raise DataError(f"split must be 'train' or 'test', got {split!r}")
        names = list(self.images) if images is None else [s.strip() for s in images.split(",")]
        for n in names:
            if n not in self.images:
                raise unknown_name(f"{self.name} image", n, list(self.images))
        self.names, self.class_names = names, names
        self.seed, self.length, self.channels, self.split = seed, length, channels, split
        self.min_crop, self.max_crop = min_crop, max_crop

    def __len__(self) -> int:
        return self.length

    def _get(self, index: int) -> Item:
        rng = np.random.default_rng([self.seed, index, 0 if self.split == "train" else 1])
        label = int(rng.integers(len(self.names)))
        name = self.names[label]
        src = sample_image(name)
        w, h = src.size
        short = min(w, h)
        lo, hi = np.log(self.min_crop * short), np.log(self.max_crop * short)
        side = max(1, round(float(np.exp(rng.uniform(lo, hi)))))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        crop = src.crop((x0, y0, x0 + side, y0 + side))
        resample = Image.LANCZOS if side > self.size else Image.BICUBIC
        image = crop.resize((self.size, self.size), resample)
        if self.channels == 1:
            image = image.convert("L")
        return Item(
            image=image,
            label=label,
            caption=CAPTIONS[name],
            attributes={"source": name, "box": [x0, y0, x0 + side, y0 + side]},
        )

    def describe(self) -> dict:
        return {**super().describe(), "images": self.names, "seed": self.seed}


@register_dataset("photos", "scikit-image's bundled photos (astronaut, coffee, cat, ...), crops")
class PhotosDataset(CropDataset):
    name = "photos"
    images = PHOTOS


@register_dataset("textures", "scikit-image's bundled textures (brick, grass, gravel), crops")
class TexturesDataset(CropDataset):
    name = "textures"
    images = TEXTURES
