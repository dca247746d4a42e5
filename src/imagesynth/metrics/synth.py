"""Synthetic training data: write a labelled dataset from a model, and the CAS study.

`synth_dataset` writes `OUT/<class>/<index>.png` (PNG parameters inside) and `metadata.jsonl`
(file_name, label, class, caption, seed), a layout `folder:OUT` reads back with labels and
captions. Under `accelerate launch` each process writes a contiguous share; image i always
comes from seed + i, so the files do not depend on the number of processes.

`cas_study` (Ravuri & Vinyals 2019, Classification Accuracy Score): train a classifier on
synthetic data only and test it on real held-out data, beside the same classifier trained
on real data; plus the gain from adding the synthetic data to a small real subset.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DataError, ImagesynthError


def _caption(class_name: str, data: str | None) -> str:
    if data == "digits":
        return f"a handwritten digit {class_name}"
    return f"a {class_name}" if class_name else ""


def shard(n: int, rank: int, world: int) -> range:
    """Contiguous share [start, stop) of n items for process `rank` of `world`."""
    start, stop = n * rank // world, n * (rank + 1) // world
    return range(start, stop)


def synth_dataset(
    model_dir: str | os.PathLike,
    n: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    sampler: str = "dpmpp-2m",
    steps: int = 20,
    guidance_scale: float | None = None,
    batch: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Write n labelled synthetic images; returns the dataset record (synth.json)."""
    from accelerate import PartialState

    from ..api import load, resolve_model_dir
    from ..io.atomic import write_json_atomic
    from ..io.pngmeta import save_png

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ImagesynthError(f"--n must be a positive integer, got {n!r}")
    out = Path(out).expanduser()
    state = PartialState()
    rank, world = state.process_index, state.num_processes
    leftovers = out.exists() and any(p for p in out.iterdir() if not p.name.startswith("."))
    if leftovers and not (out / "synth.json").is_file():
        raise DataError(f"{out} is not empty; pass a new or empty folder")
    model_dir = resolve_model_dir(model_dir)
    device = None if state.device.type == "cpu" and world == 1 else str(state.device)
    pipe = load(model_dir, device=device)
    k = int(getattr(pipe, "num_classes", 0) or 0)
    names = list(getattr(pipe, "class_names", []) or [])
    data = ((pipe.info or {}).get("dataset") or {}).get("name")
    mine = shard(n, rank, world)
    rows = []
    bar = tqdm(total=len(mine), desc=f"synth [{rank}/{world}]", disable=not progress or None)
    for start in range(mine.start, mine.stop, batch):
        b = min(batch, mine.stop - start)
        labels = [i % k for i in range(start, start + b)] if k else None
        kw: dict[str, Any] = {"n": b, "seed": seed + start, "sampler": sampler, "steps": steps}
        if labels is not None:
            kw.update(class_labels=labels, guidance_scale=guidance_scale)
        result = pipe(**kw)
        for j, (im, params) in enumerate(zip(result.images, result.params, strict=True)):
            i = start + j
            cls = names[labels[j]] if labels is not None else None
            rel = f"{cls}/{i:06d}.png" if cls is not None else f"{i:06d}.png"
            caption = _caption(cls, data) if cls is not None else ""
            save_png(im, out / rel, {**params, "prompt": params.get("prompt") or caption})
            rows.append({"file_name": rel, "label": None if labels is None else labels[j],
                         "class": cls, "caption": caption, "seed": seed + i})  # fmt: skip
        bar.update(b)
    bar.close()
    part = out / f".metadata-rank{rank}.jsonl"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_text("".join(json.dumps(r) + "\n" for r in rows))
    state.wait_for_everyone()
    record = {
        "model": str(model_dir),
        "model_hash": getattr(pipe, "model_hash", None),
        "n": n,
        "seed": seed,
        "sampler": sampler,
        "steps": steps,
        "cfg": guidance_scale,
        "class_names": names,
        "processes": world,
    }
    if state.is_main_process:
        merged = []
        for r in range(world):
            p = out / f".metadata-rank{r}.jsonl"
            merged += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            p.unlink()
        merged.sort(key=lambda r: r["seed"])
        (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in merged))
        write_json_atomic(out / "synth.json", record)
    state.wait_for_everyone()
    return record


def _real(
    data: str, split: str, size: int, options: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from ..data import get_dataset
    from .extractors import _labelled_tensors

    ds = get_dataset(data, size=size, split=split, **options)
    x, y = _labelled_tensors(ds, None, progress=False)
    return x, y, list(ds.class_names)


def small_subset(y: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of `per_class` images of each class (seeded)."""
    rng = np.random.default_rng(seed)
    idx = []
    for c in torch.unique(y).tolist():
        members = np.flatnonzero(y.numpy() == c)
        idx.extend(rng.choice(members, min(per_class, len(members)), replace=False).tolist())
    return torch.tensor(sorted(idx))


def cas_study(
    model_dir: str | os.PathLike | None = None,
    data: str = "digits",
    *,
    synthetic: str | os.PathLike | None = None,
    n_synthetic: int = 2000,
    per_class: int = 10,
    train_steps: int = 600,
    seed: int = 0,
    sampler: str = "dpmpp-2m",
    steps: int = 20,
    guidance_scale: float | None = None,
    size: int | None = None,
    data_options: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Real-trained vs synthetic-only accuracy on real test data, and the small-real gain.

    Synthetic images come from `model_dir` (n_synthetic, classes round-robin) or from a folder
    written by `synth_dataset`. Every classifier gets the same number of updates.
    """
    from .evaluate import generate_images, load_folder
    from .extractors import accuracy, fit_classifier

    if (model_dir is None) == (synthetic is None):
        raise ImagesynthError("pass a model directory or --synthetic FOLDER (one of them)")
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if model_dir is not None:
        from ..api import resolve_model_dir
        from ..io.model_dir import load_model

        mdir = resolve_model_dir(model_dir)
        dataset = load_model(mdir).info.get("dataset") or {}
        size = size or dataset.get("size")
        if not size:
            raise ImagesynthError(f"{model_dir} records no image size; pass --size")
        syn, pipe = generate_images(
            mdir, n_synthetic, seed=seed, sampler=sampler, steps=steps,
            guidance_scale=guidance_scale, progress=progress,
        )  # fmt: skip
        if syn.labels is None:
            raise ImagesynthError(
                f"{model_dir} is unconditional; CAS needs a class-conditional model"
            )
        info = {"model": str(mdir), "model_hash": getattr(pipe, "model_hash", None),
                "sampler": sampler, "steps": steps, "cfg": guidance_scale}  # fmt: skip
    opts = dict(data_options or {})
    xr, yr, class_names = _real(data, "train", size or 16, opts)
    xt, yt, _ = _real(data, "test", size or 16, opts)
    if synthetic is not None:
        syn = load_folder(synthetic, class_names)
        if syn.labels is None or (syn.labels < 0).all():
            raise DataError(f"{synthetic} has no class subfolders named like {class_names[:5]}...")
        info = {"synthetic": str(synthetic)}
    keep = syn.labels >= 0
    xs, ys = syn.images[keep], syn.labels[keep]
    if xs.shape[1:] != xr.shape[1:]:
        raise DataError(
            f"synthetic images are {tuple(xs.shape[1:])} (C, H, W) but real {data} images are "
            f"{tuple(xr.shape[1:])}; generate at the real size or pass --size"
        )
    k = len(class_names)
    fit = lambda x, y, name: fit_classifier(  # noqa: E731
        x, y, k, steps=train_steps, seed=seed, progress=progress, desc=name
    )
    sub = small_subset(yr, per_class, seed)
    results = {
        "real_accuracy": accuracy(fit(xr, yr, "real"), xt, yt),
        "synthetic_accuracy": accuracy(fit(xs, ys, "synthetic"), xt, yt),
        "small_real_accuracy": accuracy(fit(xr[sub], yr[sub], "small-real"), xt, yt),
        "small_real_plus_synthetic_accuracy": accuracy(
            fit(torch.cat([xr[sub], xs]), torch.cat([yr[sub], ys]), "small+synthetic"), xt, yt
        ),
    }
    results["small_real_gain"] = (
        results["small_real_plus_synthetic_accuracy"] - results["small_real_accuracy"]
    )
    results["cas_ratio"] = results["synthetic_accuracy"] / max(results["real_accuracy"], 1e-9)
    return {
        **results,
        "n_real": len(xr),
        "n_synthetic": len(xs),
        "n_small_real": len(sub),
        "per_class": per_class,
        "n_test": len(xt),
        "train_steps": train_steps,
        "classifier": "DomainNet (imagesynth.metrics.extractors), Adam one-cycle, +-1 px shifts",
        "data": data,
        "size": size,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        **info,
    }
