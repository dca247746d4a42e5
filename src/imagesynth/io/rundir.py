"""Run directories and atomic checkpoints.

    runs/00001-shapes-diffusion-tiny/
      config.json         fully resolved options (a run is reproducible from its directory)
      stats.jsonl         one JSON object per log step
      metrics.jsonl       one JSON object per evaluation
      samples/ plots/     fixed-seed grids, loss and metric plots
      checkpoints/step-000200/   complete checkpoints only (see `save_checkpoint`)
      model/              inference weights (EMA), a model directory

A checkpoint is written under a temporary name, every file fsynced, a manifest written last,
then the folder renamed: a crash at any point leaves either no new checkpoint or a complete
one, and `latest_checkpoint` only ever returns complete ones.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ImagesynthError
from .atomic import fsync_dir, to_json, write_json_atomic

RUN_RE = re.compile(r"^(\d{5,})-")
CKPT_RE = re.compile(r"^step-(\d+)$")
MANIFEST = "checkpoint.json"
SUBDIRS = ("samples", "plots", "checkpoints")


def _slug(text: str) -> str:
    """A short file-name-safe form of a dataset / family / tag name."""
    text = Path(text).name if ("/" in text or os.sep in text) else text
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_-")[:40] or "x"


def run_ids(root: str | os.PathLike) -> dict[int, Path]:
    root = Path(root)
    if not root.is_dir():
        return {}
    out = {}
    for p in root.iterdir():
        m = RUN_RE.match(p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return out


def create_run_dir(
    root: str | os.PathLike,
    *,
    data: str,
    family: str,
    tag: str = "",
    config: Mapping[str, Any] | None = None,
) -> Path:
    """Make `root/NNNNN-<data>-<family>[-<tag>]/` with the next free number."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = "-".join(_slug(s) for s in (data, family, tag) if s)
    run_id = max(run_ids(root), default=0) + 1
    while True:  # another process may take the same number first
        path = root / f"{run_id:05d}-{name}"
        try:
            path.mkdir()
            break
        except FileExistsError:
            run_id += 1
    for sub in SUBDIRS:
        (path / sub).mkdir()
    if config is not None:
        write_json_atomic(path / "config.json", dict(config))
    return path


def find_run(root: str | os.PathLike, spec: str) -> Path:
    """Resolve `latest`, a run number (`3`, `00003`) or a path to a run directory."""
    ids = run_ids(root)
    if spec == "latest":
        if not ids:
            raise ImagesynthError(f"no runs in {str(root)!r} to resume")
        return ids[max(ids)]
    if spec.isdigit():
        if int(spec) not in ids:
            raise ImagesynthError(f"no run number {spec} in {str(root)!r}")
        return ids[int(spec)]
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ImagesynthError(f"run directory {spec!r} does not exist")
    return path


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line and flush (a crash loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(to_json(dict(record)) + "\n")
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete JSON lines of a file; a torn last line (from a crash) is ignored."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out


def _manifest_files(folder: Path) -> dict[str, int]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(folder).as_posix()] = p.stat().st_size
    return files


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fsync_dir(d)


def is_complete(ckpt: str | os.PathLike) -> bool:
    """A checkpoint is complete when its manifest exists and every listed file has its size."""
    ckpt = Path(ckpt)
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    for rel, size in files.items():
        p = ckpt / rel
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    write: Callable[[Path], None],
    *,
    keep: int | None = 3,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `checkpoints/step-<step>/` atomically; `write(tmp_dir)` fills the folder.

    Keeps the newest `keep` complete checkpoints (None keeps all) and clears leftovers of
    earlier crashes.
    """
    if step < 0:
        raise ImagesynthError(f"checkpoint step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ImagesynthError(f"keep must be >= 1 (or None for all), got {keep}")
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_root.glob(".tmp-step-*"):  # a crashed writer's folder
        shutil.rmtree(stale, ignore_errors=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:08d}-", dir=ckpt_root))
    try:
        write(tmp)
        manifest = {
            "step": step,
            "files": _manifest_files(tmp),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **dict(extra or {}),
        }
        _fsync_tree(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)  # the manifest is written last
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first."""
    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return []
    found = []
    for p in ckpt_root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None; half-written ones are never returned."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def iter_stats(run_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    yield from read_jsonl(Path(run_dir) / "stats.jsonl")
