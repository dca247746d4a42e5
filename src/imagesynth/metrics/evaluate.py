"""Set evaluation: samples (a model, a folder, a tensor) against a reference dataset.

    samples --extractor--> features --+-- FID / KID / precision / recall vs references
                                      +-- IS, class accuracy (logits)
    held-out real split --extractor--> features: the same metrics = the real-data floor

Reference and held-out features are cached per (reference set, extractor weights,
preprocessing) under `$IMAGESYNTH_CACHE/features/`. Every score carries its protocol.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .. import __version__
from ..errors import DataError, ImagesynthError
from ..io.images import pil_to_array
from . import stats
from .extractors import Extractor, cache_dir, load_extractor
from .protocol import make_score, parse_metrics

log = logging.getLogger("imagesynth")

FEATURE_CACHE_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_REFS = 50_000


@dataclass
class ImageSet:
    """Images as one uint8 tensor (N, C, H, W), optional labels, and where they came from."""

    images: torch.Tensor
    labels: torch.Tensor | None = None  # (N,) int64; -1 = unknown
    source: str = "samples"
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])


def from_tensor(x: torch.Tensor, labels: Any = None, source: str = "samples") -> ImageSet:
    """(N, C, H, W) float in [-1, 1] (or uint8) -> ImageSet (rounded to 8 bits, as saved PNGs)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ImagesynthError(f"expected images shaped (N, 1|3, H, W), got {shape}")
    if x.dtype != torch.uint8:
        x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    lab = None if labels is None else torch.as_tensor(labels, dtype=torch.int64).cpu()
    if lab is not None and lab.shape != (x.shape[0],):
        raise ImagesynthError(f"got {tuple(lab.shape)} labels for {x.shape[0]} images")
    return ImageSet(x.cpu(), lab, source)


def from_pils(
    images: Sequence[Image.Image],
    labels: Sequence[int] | None = None,
    source: str = "samples",
    names: Sequence[str] | None = None,
) -> ImageSet:
    """PIL images of one size -> ImageSet. Gray and RGB mixed: gray is replicated to RGB."""
    if not images:
        raise ImagesynthError(f"{source} has no images")
    sizes = [im.size for im in images]
    if len(set(sizes)) > 1:
        j = next(i for i, s in enumerate(sizes) if s != sizes[0])
        a = names[0] if names else "image 0"
        b = names[j] if names else f"image {j}"
        raise DataError(
            f"{source} mixes image sizes: {a} is {sizes[0][0]}x{sizes[0][1]}, {b} is "
            f"{sizes[j][0]}x{sizes[j][1]}; resize them to one size first"
        )
    gray = all(im.mode in ("L", "1", "I;16", "I", "F") for im in images)
    mode = "L" if gray else "RGB"
    arrs = [pil_to_array(im if im.mode == mode else _flatten(im, mode)) for im in images]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    lab = None if labels is None else torch.as_tensor(list(labels), dtype=torch.int64)
    return ImageSet(x, lab, source)


def _flatten(im: Image.Image, mode: str) -> Image.Image:
    if im.mode in ("RGBA", "LA", "P") and mode == "RGB":
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")  # transparent -> white
    return im.convert(mode)


def list_images(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(f"no images found in {str(root)!r} ({' '.join(IMAGE_EXTENSIONS)})")
    return files


def read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def load_folder(
    folder: str | os.PathLike, class_names: Sequence[str] | None = None, n: int | None = None
) -> ImageSet:
    """Every image under `folder` (recursive); labels from subfolders named like `class_names`."""
    root = Path(folder).expanduser()
    files = list_images(root)
    if n is not None:
        if n > len(files):
            raise DataError(f"{root} holds {len(files)} images, fewer than n={n}")
        files = files[:n]
    pils = [
        read_image(p) for p in tqdm(files, desc="read images", disable=len(files) < 500 or None)
    ]
    names = [str(p.relative_to(root)) for p in files]
    labels = None
    if class_names:
        index = {c: i for i, c in enumerate(class_names)}
        found = [
            index.get(p.relative_to(root).parts[0], -1)
            if len(p.relative_to(root).parts) > 1
            else -1
            for p in files
        ]
        if any(v >= 0 for v in found):
            labels = found
    out = from_pils(pils, labels, source=str(root), names=names)
    out.class_names = list(class_names) if labels is not None and class_names else None
    return out


# ----------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    """A real image set: dataset spec, split, size, count and the seed choosing the subset."""

    data: str
    split: str
    size: int
    n: int | None = None
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "split": self.split,
            "size": self.size,
            "seed": self.seed,
            "options": dict(self.options),
        }


def _dataset(ref: Reference) -> Any:
    from ..data import get_dataset
    from ..data.base import parse_data_spec

    kind, _ = parse_data_spec(ref.data)
    opts = dict(ref.options)
    if kind == "shapes":
        opts.setdefault("seed", ref.seed)
        opts.setdefault("length", ref.n or 10_000)
    if kind == "folder":
        opts.setdefault("seed", ref.seed)
    return get_dataset(ref.data, size=ref.size, split=ref.split, **opts)


def reference_images(ref: Reference, progress: bool = False) -> ImageSet:
    """The reference images (a seeded subset of `n` when the dataset is larger)."""
    ds = _dataset(ref)
    total = len(ds)
    n = min(ref.n or total, total, MAX_REFS)
    if n < 2:
        raise DataError(
            f"reference set {ref.data!r} split {ref.split!r} has {total} image(s); need >= 2"
        )
    if n < total:
        idx = np.sort(np.random.default_rng(ref.seed).permutation(total)[:n])
    else:
        idx = np.arange(total)
    arrs, labels = [], []
    for i in tqdm(idx, desc=f"render {ref.data} {ref.split}", disable=not progress or None):
        item = ds[int(i)]
        arrs.append(pil_to_array(item.image.convert("L" if ds.channels == 1 else "RGB")))
        labels.append(-1 if item.label is None else item.label)
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(
        x, torch.tensor(labels), f"{ref.data}:{ref.split}", list(getattr(ds, "class_names", []))
    )


def _feature_key(ref: Reference, ext: Extractor) -> str:
    blob = json.dumps(
        {"ref": ref.describe(), "n": ref.n, "ext": ext.protocol(), "v": FEATURE_CACHE_VERSION},
        sort_keys=True,
        default=str,
    )
    if ref.data.startswith("folder:"):  # a folder's content can change under the same path
        files = list_images(ref.data.partition(":")[2])
        blob += json.dumps([(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def reference_features(
    ref: Reference, ext: Extractor, *, cache: bool = True, progress: bool = False
) -> dict[str, Any]:
    """Features, logits and labels of a reference set, cached on disk per reference + extractor."""
    from safetensors.numpy import load_file, save_file

    path = cache_dir() / "features" / f"{_feature_key(ref, ext)}.safetensors"
    if cache and path.is_file():
        try:
            arrays = load_file(str(path))
            meta = json.loads(path.with_suffix(".json").read_text())
            return {**arrays, **meta, "cached": True}
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable feature cache %s (%s)", path, exc)
    images = reference_images(ref, progress)
    feats, logits = ext.extract(images.images, progress=progress, desc=f"features {ref.data}")
    labels = images.labels.numpy() if images.labels is not None else np.full(len(images), -1)
    out = {"features": feats, "logits": logits, "labels": labels.astype(np.int64)}
    meta = {"channels": images.channels, "class_names": images.class_names, "n": len(images)}
    if cache:
        from ..io.atomic import atomic_path, write_json_atomic

        with atomic_path(path) as tmp:
            save_file(out, str(tmp))
        write_json_atomic(path.with_suffix(".json"), {**meta, "reference": ref.describe()})
    return {**out, **meta, "cached": False}


def make_reference(
    spec: str,
    size: int,
    *,
    n: int | None = None,
    split: str = "train",
    seed: int = 0,
    options: dict[str, Any] | None = None,
) -> Reference:
    """A Reference; shapes (infinite) default to n references, finite sets to all their images."""
    from ..data.base import parse_data_spec

    parse_data_spec(spec)
    return Reference(spec, split, size, n, seed, tuple(sorted((options or {}).items())))


def held_out(ref: Reference, n: int) -> Reference:
    """The real split disjoint from `ref` (its test split), `n` images: the floor's 'samples'."""
    split = "test" if ref.split == "train" else "train"
    return Reference(ref.data, split, ref.size, n, ref.seed, ref.options)


# ----------------------------------------------------------------------- evaluation


def _channel_policy(
    sample_channels: int, ref_channels: int, convert_channels: bool, ref_name: str
) -> str | None:
    if sample_channels == ref_channels:
        return None
    names = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}
    if not convert_channels:
        raise DataError(
            f"the samples are {names[sample_channels]} but the reference set {ref_name!r} is "
            f"{names[ref_channels]}; pass convert_channels=True (--convert-channels) to convert "
            "the samples to the references' channels (gray replicated to RGB, RGB to luma)"
        )
    return "gray->rgb (replicate)" if sample_channels == 1 else "rgb->gray (ITU-R 601 luma)"


def set_scores(
    metrics: Sequence[str],
    sample: dict[str, np.ndarray],
    refs: dict[str, Any],
    held: dict[str, Any] | None,
    protocol: dict[str, Any],
    *,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    pr_k: int = 3,
    is_splits: int = 10,
    seed: int = 0,
    real_accuracy: float | None = None,
) -> list[dict[str, Any]]:
    """Score records for set metrics from features (and the held-out floor when given)."""
    fs, fr = sample["features"], refs["features"]
    fh = held["features"] if held is not None else None
    n_s, n_r = len(fs), len(fr)
    base = {**protocol, "n_samples": n_s, "n_refs": n_r}
    floor_n = len(fh) if fh is not None else None
    out: list[dict[str, Any]] = []
    pr = pr_floor = None
    for m in metrics:
        if m == "fid":
            value = stats.fid(fs, fr)
            floor = stats.fid(fh, fr) if fh is not None else None
            out.append(make_score(m, value, base, floor=floor, floor_n=floor_n))
        elif m == "kid":
            size = stats.kid_subset_size(n_s, n_r, kid_subset_size)
            value, std = stats.kid(fs, fr, kid_subsets, size, seed)
            floor = None
            if fh is not None and len(fh) >= 2:
                floor = stats.kid(fh, fr, kid_subsets, min(size, len(fh)), seed)[0]
            proto = {**base, "kid_subsets": kid_subsets, "kid_subset_size": size}
            out.append(make_score(m, value, proto, std=std, floor=floor, floor_n=floor_n))
        elif m in ("precision", "recall"):
            if pr is None:
                pr = stats.precision_recall(fs, fr, pr_k)
                pr_floor = (
                    stats.precision_recall(fh, fr, pr_k)
                    if fh is not None and len(fh) > pr_k
                    else None
                )
            i = 0 if m == "precision" else 1
            floor = pr_floor[i] if pr_floor else None
            out.append(make_score(m, pr[i], {**base, "pr_k": pr_k}, floor=floor, floor_n=floor_n))
        elif m == "is":
            splits = min(is_splits, n_s)
            value, std = stats.inception_score(sample["logits"], splits)
            floor = None
            if held is not None:
                floor = stats.inception_score(held["logits"], min(is_splits, len(held["logits"])))[
                    0
                ]
            proto = {**base, "is_splits": is_splits}
            out.append(make_score(m, value, proto, std=std, floor=floor, floor_n=floor_n))
        elif m == "acc":
            labels = sample.get("labels")
            if labels is None or (np.asarray(labels) < 0).all():
                raise ImagesynthError(
                    "class accuracy (acc) needs labelled samples: a class-conditional model, or a "
                    "folder with one subfolder per class named like the extractor's classes"
                )
            keep = np.asarray(labels) >= 0
            value = stats.class_accuracy(sample["logits"][keep], np.asarray(labels)[keep])
            floor = real_accuracy
            if held is not None and (np.asarray(held["labels"]) >= 0).any():
                hk = np.asarray(held["labels"]) >= 0
                floor = stats.class_accuracy(held["logits"][hk], np.asarray(held["labels"])[hk])
            proto = {**base, "n_samples": int(keep.sum())}
            out.append(make_score(m, value, proto, floor=floor, floor_n=floor_n))
        else:
            raise ImagesynthError(f"{m!r} is not a set metric")
    return out


def _check_classes(ext: Extractor, class_names: Sequence[str] | None) -> None:
    if class_names is None:
        return
    if list(class_names) != list(ext.class_names):
        raise ImagesynthError(
            f"class accuracy needs the extractor's classes to be the samples' classes; "
            f"extractor {ext.spec} has {list(ext.class_names)[:6]}..., samples have "
            f"{list(class_names)[:6]}..."
        )


def default_extractor(ref: str) -> str:
    """`domain:<dataset>` for a bundled reference set, else `domain:folder:PATH`."""
    from ..data.base import parse_data_spec

    kind, path = parse_data_spec(ref)
    if kind in ("digits", "shapes"):
        return f"domain:{kind}"
    if kind == "folder":
        return f"domain:folder:{path}"
    raise ImagesynthError(f"no default extractor for reference {ref!r}; pass --extractor")


def evaluate_samples(
    images: torch.Tensor | Sequence[Image.Image] | ImageSet,
    ref: str = "digits",
    metrics: str | Sequence[str] = ("fid",),
    n: int | None = None,
    extractor: str | Extractor | None = None,
    *,
    labels: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    n_ref: int | None = None,
    ref_size: int | None = None,
    ref_options: dict[str, Any] | None = None,
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    pr_k: int = 3,
    is_splits: int = 10,
    convert_channels: bool = False,
    floor: bool = True,
    cache: bool = True,
    progress: bool = False,
    source: str = "samples",
    extra_protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Set metrics of `images` against the reference set `ref`, each with its real floor.

    `images`: a float tensor (N, C, H, W) in [-1, 1] (rounded to 8 bits first, as a saved PNG
    would be), a uint8 tensor, PIL images or an ImageSet. Returns {"values": {"fid": ..,
    "fid_floor": .., ...}, "scores": [score records with protocols]}.
    """
    metric_list = parse_metrics(metrics, kind="set")
    if isinstance(images, ImageSet):
        sample = images
    elif isinstance(images, torch.Tensor):
        sample = from_tensor(images, labels, source)
    else:
        sample = from_pils(list(images), labels, source)
    if labels is not None and sample.labels is None:
        sample.labels = torch.as_tensor(list(labels), dtype=torch.int64)
    if n is not None:
        if n > len(sample):
            raise ImagesynthError(f"asked for n={n} images but {sample.source} has {len(sample)}")
        sample = ImageSet(
            sample.images[:n],
            None if sample.labels is None else sample.labels[:n],
            sample.source,
            sample.class_names,
        )
    if len(sample) < 2:
        raise ImagesynthError(
            f"{sample.source} has {len(sample)} image(s); set metrics need at least 2"
        )
    ext = (
        extractor
        if isinstance(extractor, Extractor)
        else load_extractor(extractor or default_extractor(ref), progress=progress)
    )
    if "acc" in metric_list:
        _check_classes(ext, class_names or sample.class_names)
    size = ref_size or sample.size[0]
    from ..data.base import parse_data_spec

    infinite = parse_data_spec(ref)[0] == "shapes"
    reference = make_reference(
        ref, size, n=n_ref or (len(sample) if infinite else None), seed=seed, options=ref_options
    )
    refs = reference_features(reference, ext, cache=cache, progress=progress)
    conversion = _channel_policy(sample.channels, int(refs["channels"]), convert_channels, ref)
    imgs = sample.images
    if conversion:
        from .extractors import convert_channels as _convert

        imgs = ((_convert(imgs.float(), int(refs["channels"]))).round().clamp(0, 255)).to(
            torch.uint8
        )
    feats, logits = ext.extract(imgs, progress=progress, desc="features samples")
    held = None
    if (floor and any(m != "acc" for m in metric_list)) or (floor and "acc" in metric_list):
        hold = held_out(reference, len(sample))
        try:
            held = reference_features(hold, ext, cache=cache, progress=progress)
        except DataError as exc:
            log.warning("no real floor: %s", exc)
    protocol = {
        **ext.protocol(),
        "reference": reference.describe(),
        "ref_size_px": size,
        "channel_conversion": conversion,
        "seed": seed,
        "imagesynth_version": __version__,
        "source": sample.source,
        "sample_size_px": list(sample.size),
        "sample_channels": sample.channels,
        **(extra_protocol or {}),
    }
    sample_arrays = {
        "features": feats,
        "logits": logits,
        "labels": None if sample.labels is None else sample.labels.numpy(),
    }
    scores = set_scores(
        metric_list,
        sample_arrays,
        refs,
        held,
        protocol,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        pr_k=pr_k,
        is_splits=is_splits,
        seed=seed,
        real_accuracy=ext.accuracy,
    )
    values: dict[str, float] = {}
    for s in scores:
        values[s["metric"]] = s["value"]
        if s.get("floor") is not None:
            values[s["metric"] + "_floor"] = s["floor"]
    return {"values": values, "scores": scores}


def generate_images(
    model_dir: str | os.PathLike,
    n: int,
    *,
    seed: int = 0,
    sampler: str = "dpmpp-2m",
    steps: int = 20,
    guidance_scale: float | None = None,
    batch: int = 64,
    device: str | None = None,
    progress: bool = True,
    labels: Sequence[int] | None = None,
    callback: Callable[[int, int, Any], None] | None = None,
) -> tuple[ImageSet, Any]:
    """n images from a model (image i from seed + i; classes round-robin when conditional).

    `callback(done, n, info)` runs after each denoising step of a batch (info: the pipeline's
    step info, where the pipeline reports steps) and after each batch (info None); an
    exception raised there stops the generation (a server's cancel).
    """
    import inspect

    from ..api import load

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ImagesynthError(f"n must be a positive integer, got {n!r}")
    pipe = load(model_dir, device=device)
    k = int(getattr(pipe, "num_classes", 0) or 0)
    if labels is None and k:
        labels = [i % k for i in range(n)]
    pils: list[Image.Image] = []
    bar = tqdm(total=n, desc="sample", unit="img", disable=not progress or None)
    for start in range(0, n, batch):
        b = min(batch, n - start)
        kw: dict[str, Any] = {"n": b, "seed": seed + start, "sampler": sampler, "steps": steps}
        if labels is not None:
            kw["class_labels"] = list(labels[start : start + b])
            kw["guidance_scale"] = guidance_scale
        if callback is not None and "callback" in inspect.signature(pipe.__call__).parameters:
            kw["callback"] = lambda info, start=start: callback(start, n, info)
        pils.extend(pipe(**kw).images)
        bar.update(b)
        if callback is not None:
            callback(start + b, n, None)
    bar.close()
    out = from_pils(pils, labels, source=str(model_dir))
    out.class_names = list(getattr(pipe, "class_names", []) or []) or None
    return out, pipe


def evaluate_model(
    model_dir: str | os.PathLike,
    ref: str | None = None,
    metrics: str | Sequence[str] = ("fid", "kid"),
    n: int = 10_000,
    extractor: str | Extractor | None = None,
    *,
    seed: int = 0,
    sampler: str = "dpmpp-2m",
    steps: int = 20,
    guidance_scale: float | None = None,
    device: str | None = None,
    progress: bool = True,
    callback: Callable[[int, int, Any], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Generate n images from a model directory and evaluate them (see evaluate_samples).

    `callback`: as in `generate_images` (progress of the sampling, which dominates the time).
    """
    from ..api import resolve_model_dir
    from ..io.model_dir import load_model

    info = load_model(resolve_model_dir(model_dir)).info
    dataset = info.get("dataset") or {}
    if ref is None:
        ref = dataset.get("spec") or dataset.get("name")
        if not ref or ref not in ("digits", "shapes"):
            raise ImagesynthError(f"{model_dir}: pass --ref (the model's dataset is {ref!r})")
    sample, pipe = generate_images(
        model_dir, n, seed=seed, sampler=sampler, steps=steps,
        guidance_scale=guidance_scale, device=device, progress=progress, callback=callback,
    )  # fmt: skip
    sampling = {
        "model": str(model_dir),
        "model_hash": getattr(pipe, "model_hash", None),
        "sampler": sampler,
        "steps": steps,
        "cfg": guidance_scale,
        "sample_seed": seed,
    }
    metric_list = parse_metrics(metrics, kind="set")
    if "acc" in metric_list and sample.labels is None:
        raise ImagesynthError(f"{model_dir} is unconditional; class accuracy (acc) needs classes")
    result = evaluate_samples(
        sample, ref, metric_list, extractor=extractor, seed=seed, progress=progress,
        extra_protocol={"sampling": sampling}, **options,
    )  # fmt: skip
    return result


def evaluate_folder(
    folder: str | os.PathLike,
    ref: str,
    metrics: str | Sequence[str] = ("fid", "kid"),
    n: int | None = None,
    extractor: str | Extractor | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a folder of images (e.g. another tool's samples) against a reference set."""
    ext = (
        extractor
        if isinstance(extractor, Extractor)
        else load_extractor(extractor or default_extractor(ref), progress=progress)
    )
    metric_list = parse_metrics(metrics, kind="set")
    sample = load_folder(folder, ext.class_names if "acc" in metric_list else None, n)
    return evaluate_samples(sample, ref, metric_list, extractor=ext, progress=progress, **options)
