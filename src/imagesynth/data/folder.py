"""`folder`: a user's own images, searched recursively, with subfolder classes and captions.

Layout (the Hugging Face `imagefolder` convention, plus sidecar captions)::

    root/cats/01.png             class "cats"
    root/cats/01.txt             caption of 01.png (a sidecar wins over metadata.jsonl)
    root/dogs/02.jpg             class "dogs"
    root/dogs/metadata.jsonl     {"file_name": "02.jpg", "text": "a dog", "source": "phone"}

Every file is decoded once when the dataset is built, so unreadable or truncated files are
skipped up front (one warning each) instead of failing in the middle of training.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..errors import DataError
from .base import ImageDataset, Item, check_size, register_dataset

# ImageFile.LOAD_TRUNCATED_IMAGES is deliberately left at Pillow's default (False): with it on,
# truncated files decode to grey-padded images and the scan could not find them.

log = logging.getLogger("imagesynth")

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FITS = ("crop", "pad", "resize")
SPLITS = ("all", "train", "test")
ROOT_CLASS = "_root"  # class of files lying directly in the root when others are in subfolders
CACHE_LIMIT_BYTES = 1 << 30  # cache=None keeps images in memory below this many pixel bytes
PROGRESS_MIN_FILES = 500  # show a progress bar while scanning more files than this
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


# --- single images ------------------------------------------------------------------------


def _check_fit_channels(fit: str, channels: int) -> None:
    if fit not in FITS:
        raise DataError(f"fit must be one of {', '.join(FITS)}; got {fit!r}")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB); got {channels!r}")


def _scale_to_uint8(image: Image.Image) -> Image.Image:
    """Map a 16-bit, 32-bit integer or float image to an 8-bit "L" image."""
    a = np.nan_to_num(np.asarray(image).astype(np.float64))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if image.mode in _MODES_16BIT:
        a = a / 257.0  # 65535 -> 255
    elif image.mode == "I" and lo >= 0 and hi <= 255:
        pass  # 8-bit values stored as int32 (e.g. after convert("I")): already in range
    elif image.mode == "I" and lo >= 0 and hi <= 65535:
        a = a / 257.0  # older Pillow opens 16-bit PNGs as "I"
    elif image.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif image.mode == "F" and lo >= 0 and hi <= 255:
        pass
    else:  # anything else (negative, wider than 16 bits): stretch the real range to 0..255
        a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _on_white(image: Image.Image) -> Image.Image:
    """Alpha-composite onto an opaque white background and drop the alpha channel."""
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def to_8bit(image: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any Pillow mode to "RGB" (channels=3) or "L" (channels=1); alpha goes on white."""
    mode = image.mode
    if mode in (*_MODES_16BIT, "I", "F"):
        image = _scale_to_uint8(image)
    elif mode in ("RGBA", "LA", "PA", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    ):
        image = _on_white(image)
    elif mode == "1":
        image = image.convert("L")
    elif mode not in ("L", "RGB"):  # CMYK, YCbCr, RGBX, HSV, palette without transparency
        image = image.convert("RGB")
    target = "RGB" if channels == 3 else "L"
    return image if image.mode == target else image.convert(target)


def _border_fill(image: Image.Image) -> int | tuple[int, ...]:
    """Mean colour of the two edges that padding will touch."""
    a = np.asarray(image)
    if image.width > image.height:  # wide: bars go above and below
        edge = np.concatenate([a[0], a[-1]])
    else:  # tall: bars go left and right
        edge = np.concatenate([a[:, 0], a[:, -1]])
    mean = np.rint(edge.astype(np.float64).mean(axis=0)).astype(int)
    return int(mean) if mean.ndim == 0 else tuple(int(v) for v in mean)


def fit_square(image: Image.Image, size: int, fit: str = "crop") -> Image.Image:
    """Make an image exactly (size, size): centre `crop`, `pad` to square, or `resize` (squash).

    Padding uses the mean colour of the edges it touches, so the bars blend in rather than
    adding hard white borders the model would learn to draw.
    """
    w, h = image.size
    if fit == "crop" and w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    elif fit == "pad" and w != h:
        s = max(w, h)
        canvas = Image.new(image.mode, (s, s), _border_fill(image))
        canvas.paste(image, ((s - w) // 2, (s - h) // 2))
        image = canvas
    elif fit not in FITS:
        raise DataError(f"fit must be one of {', '.join(FITS)}; got {fit!r}")
    if image.size != (size, size):
        # Lanczos anti-aliases when shrinking; bicubic rings less when enlarging
        shrinking = image.width > size or image.height > size
        resample = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        image = image.resize((size, size), resample)
    return image


def _read(path: Path, size: int, channels: int) -> Image.Image:
    """Open and fully decode one file (raising on truncation), upright and 8-bit."""
    with Image.open(path) as image:
        # JPEG can decode at 1/2..1/8 scale almost for free; draft keeps both sides >= size
        image.draft(None, (size, size))
        image.load()
        # exif_transpose returns a new image, so the result outlives the closed file
        return to_8bit(ImageOps.exif_transpose(image), channels)


def load_image(
    source: str | os.PathLike[str] | Image.Image, size: int, fit: str = "crop", channels: int = 3
) -> Image.Image:
    """Open a file (or take an image) and return it as a (size, size) "RGB" or "L" image."""
    check_size(size, 1, 8192)
    _check_fit_channels(fit, channels)
    if isinstance(source, Image.Image):
        image = to_8bit(ImageOps.exif_transpose(source), channels)
    else:
        image = _read(Path(source), size, channels)
    return fit_square(image, size, fit)


def _reason(error: BaseException) -> str:
    """A short, path-free reason for a warning line."""
    if isinstance(error, UnidentifiedImageError):
        return "not a recognised image file"
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# --- the folder -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    file: str  # posix path relative to the root
    label: int | None
    caption: str | None
    attributes: dict[str, Any] = field(default_factory=dict)


def _check_root(path: str | os.PathLike[str]) -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder '{root}' does not exist; expected a directory of images")
    if not root.is_dir():
        raise DataError(f"image folder '{root}' is not a directory; expected a directory of images")
    return root.absolute()


def _walk(root: Path) -> tuple[list[str], set[str], list[str]]:
    """Relative posix paths of the images, .txt files and metadata.jsonl files under root."""
    images: list[str] = []
    texts: set[str] = set()
    jsonls: list[str] = []
    seen: set[str] = set()

    def on_error(error: OSError) -> None:
        log.warning(f"skipping {error.filename}: {error.strerror or error}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            lower = name.lower()
            if lower.endswith(EXTENSIONS):
                images.append(rel)
            elif lower.endswith(".txt"):
                texts.add(rel)
            elif name == "metadata.jsonl":
                jsonls.append(rel)
    # shallower metadata.jsonl files first, so a row nearer the image overrides one above it
    return sorted(images), texts, sorted(jsonls, key=lambda r: (r.count("/"), r))


def _classes(files: list[str]) -> tuple[list[str], list[int | None]]:
    """Class names (first folder under the root) and each file's label index."""
    if not any("/" in f for f in files):
        return [], [None] * len(files)
    names = [f.split("/", 1)[0] if "/" in f else ROOT_CLASS for f in files]
    class_names = sorted(set(names))
    index = {c: i for i, c in enumerate(class_names)}
    return class_names, [index[n] for n in names]


def _read_metadata(root: Path, jsonls: list[str]) -> dict[str, dict[str, Any]]:
    """Rows of every metadata.jsonl, keyed by the image path relative to the root."""
    rows: dict[str, dict[str, Any]] = {}
    for rel in jsonls:
        base = posixpath.dirname(rel)
        try:
            text = (root / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            log.warning(f"skipping {rel}: {_reason(e)}")
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                log.warning(f"skipping {rel} line {lineno}: not valid JSON ({e.msg})")
                continue
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                log.warning(
                    f"skipping {rel} line {lineno}: expected an object with a string 'file_name'"
                )
                continue
            name = row["file_name"].replace("\\", "/")
            rows[posixpath.normpath(posixpath.join(base, name))] = row
    return rows


def _split(n: int, split: str, test_fraction: float, seed: int) -> list[int]:
    """Sorted indices of the files in `split`, from a seeded permutation of all n files."""
    if split == "all":
        return list(range(n))
    n_test = min(max(round(n * test_fraction), 1), n - 1) if n >= 2 else 0
    perm = np.random.default_rng(seed).permutation(n)
    chosen = perm[:n_test] if split == "test" else perm[n_test:]
    return sorted(int(i) for i in chosen)


@register_dataset(
    "folder",
    "your own images: recursive, subfolder = class, captions from name.txt or metadata.jsonl",
    takes_path=True,
)
class FolderDataset(ImageDataset):
    """Images under a folder (.png .jpg .jpeg .webp .bmp), recursive, hidden files skipped.

    Class = first folder under the root; with no subfolders there are no classes, and in a
    mixed layout files directly in the root get the class "_root". Captions come from a
    sidecar `name.txt`, else from a `metadata.jsonl` row (`file_name`, `text` or `caption`).
    """

    name = "folder"
    flip_ok = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int = 32,
        fit: str = "crop",
        channels: int = 3,
        seed: int = 0,
        split: str = "all",
        test_fraction: float = 0.1,
        cache: bool | None = None,
    ) -> None:
        self.size = check_size(size, 8, 1024)
        _check_fit_channels(fit, channels)
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        if (
            isinstance(test_fraction, bool)
            or not isinstance(test_fraction, (int, float))
            or not 0 < test_fraction < 1
        ):
            raise DataError(
                f"test_fraction must be a number between 0 and 1; got {test_fraction!r}"
            )
        self.channels, self.fit, self.seed = channels, fit, seed
        self.split, self.test_fraction = split, float(test_fraction)
        self.root = root = _check_root(path)

        files, texts, jsonls = _walk(root)
        if not files:
            raise DataError(
                f"no images found in '{root}'; looked recursively for "
                f"{' '.join(EXTENSIONS)} files (hidden files and folders are skipped)"
            )
        # classes and the split come from every file found, readable or not, so train and test
        # agree on label indices and a file going bad does not move the others between splits
        self.class_names, labels = _classes(files)
        chosen = _split(len(files), split, self.test_fraction, seed)
        if not chosen:
            raise DataError(
                f"split {split!r} of '{root}' is empty: {len(files)} image(s) with "
                f"test_fraction {test_fraction}; use split='all' or add images"
            )
        metadata = _read_metadata(root, jsonls)

        pixels = len(chosen) * self.size * self.size * channels
        keep = cache if cache is not None else pixels < CACHE_LIMIT_BYTES
        self._cache: list[Image.Image] | None = [] if keep else None
        self._records: list[_Record] = []
        self.found = len(chosen)
        progress = tqdm(
            chosen,
            desc=f"scanning {root.name}",
            unit="file",
            leave=False,
            disable=True if len(chosen) <= PROGRESS_MIN_FILES else None,
        )
        for i in progress:
            rel = files[i]
            try:
                # decoding the whole file is the only way to find truncated ones
                image = _read(root / rel, self.size, channels)
                fitted = fit_square(image, self.size, fit) if keep else None
            except Exception as e:  # any decoder failure means "skip this file", never a crash
                log.warning(f"skipping {rel}: {_reason(e)}")
                continue
            self._records.append(self._record(rel, labels[i], texts, metadata))
            if self._cache is not None and fitted is not None:
                self._cache.append(fitted)
        self.skipped = self.found - len(self._records)
        if not self._records:
            raise DataError(
                f"none of the {self.found} image files in '{root}' could be read "
                "(unreadable or truncated)"
            )
        if self.skipped:
            log.warning(
                f"skipped {self.skipped} of {self.found} files in {root} (unreadable or truncated)"
            )

    def _record(
        self, rel: str, label: int | None, texts: set[str], metadata: dict[str, dict[str, Any]]
    ) -> _Record:
        """Label, caption and attributes of one readable file."""
        row = metadata.get(rel, {})
        text = row.get("text", row.get("caption"))
        caption = (text.strip() or None) if isinstance(text, str) else None
        sidecar = posixpath.splitext(rel)[0] + ".txt"
        if sidecar in texts:
            try:
                side = (self.root / sidecar).read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                log.warning(f"ignoring caption {sidecar}: {_reason(e)}")
            else:
                caption = side.strip() or caption  # an empty sidecar falls back to the jsonl
        attributes: dict[str, Any] = {
            "file": rel,
            "class": self.class_names[label] if label is not None else None,
        }
        for key, value in row.items():
            if key not in ("file_name", "text", "caption"):
                attributes.setdefault(key, value)  # our own `file` / `class` win
        return _Record(rel, label, caption, attributes)

    def __len__(self) -> int:
        return len(self._records)

    def _get(self, index: int) -> Item:
        rec = self._records[index]
        if self._cache is not None:
            image = self._cache[index].copy()  # a copy, so callers cannot edit the cache
        else:
            try:
                image = load_image(self.root / rec.file, self.size, self.fit, self.channels)
            except Exception as e:  # readable at scan time: the file changed since
                raise DataError(
                    f"cannot read '{self.root / rec.file}' any more: {_reason(e)}"
                ) from e
        return Item(image, rec.label, rec.caption, dict(rec.attributes))

    def describe(self) -> dict[str, Any]:
        """The base facts plus the root, fit, split and how many files were skipped."""
        return {
            **super().describe(),
            "root": str(self.root),
            "fit": self.fit,
            "split": self.split,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "found": self.found,
            "skipped": self.skipped,
        }
