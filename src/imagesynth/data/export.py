"""Preview grids and folder exports of any dataset (the folder loader reads exports back)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import DataError
from ..io.atomic import to_json, write_bytes_atomic
from ..io.images import make_grid
from ..io.pngmeta import save_png
from .base import ImageDataset


def _params(ds: ImageDataset, index: int, caption: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "prompt": caption or "",
        "dataset": ds.name,
        "index": index,
        "seed": getattr(ds, "seed", None),
        "split": getattr(ds, "split", None),
        "size": f"{ds.size}x{ds.size}",
        **extra,
    }


def preview_grid(ds: ImageDataset, n: int = 64, start: int = 0, nrow: int | None = None):
    """A grid of items start..start+n-1 (PIL image) and the indices shown."""
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    if start < 0 or start >= len(ds):
        raise DataError(f"start must be in 0..{len(ds) - 1}, got {start}")
    idx = list(range(start, min(start + n, len(ds))))
    return make_grid([ds[i].image for i in idx], nrow=nrow), idx


def save_preview(ds: ImageDataset, out: str | os.PathLike, n: int = 64, start: int = 0) -> Path:
    grid, idx = preview_grid(ds, n, start)
    params = _params(ds, start, f"{ds.name} preview", indices=[idx[0], idx[-1]], grid=len(idx))
    return save_png(grid, out, params)


def export_dataset(
    ds: ImageDataset, out: str | os.PathLike, n: int | None = None, start: int = 0
) -> Path:
    """Write items as PNGs under `out/<class>/` with `metadata.jsonl` (file_name, text, ...).

    The layout is the one `folder:` reads: subfolder = class, captions from metadata.jsonl.
    """
    out = Path(out)
    n = len(ds) - start if n is None else n
    if n < 1 or start < 0 or start + n > len(ds):
        raise DataError(f"cannot export {n} items from index {start} of {ds.name} ({len(ds)})")
    if out.exists() and any(out.iterdir()):
        raise DataError(f"output folder {str(out)!r} is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in tqdm(range(start, start + n), desc=f"export {ds.name}", unit="img", disable=None):
        item = ds[i]
        sub = ds.class_names[item.label] if item.label is not None and ds.class_names else ""
        sub = sub.replace(" ", "_").replace("/", "_")
        rel = f"{sub}/{i:06d}.png" if sub else f"{i:06d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_png(item.image, out / rel, _params(ds, i, item.caption, label=item.label))
        row = {"file_name": rel, "text": item.caption, "label": item.label, "index": i}
        row["attributes"] = item.attributes
        lines.append(to_json(row))
    write_bytes_atomic(out / "metadata.jsonl", ("\n".join(lines) + "\n").encode())
    info = {**ds.describe(), "exported": n, "start": start}
    write_bytes_atomic(out / "dataset.json", json.dumps(info, indent=2).encode())
    return out
