"""Models the server can use, by name only: the bundled ones, `--models DIR` subfolders and the
models of training runs it made. Pipelines load lazily (first use) and stay cached."""

from __future__ import annotations

import collections
import json
import os
import re
import threading
from pathlib import Path
from typing import Any

from ..errors import ImagesynthError, unknown_name
from .settings import Settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}$")
# (model dir, device) -> (model_stamp, pipeline): one cache per process, shared by every app in
# it (tests)
_PIPES: collections.OrderedDict[tuple[str, str | None], tuple[tuple[int, int], Any]] = (
    collections.OrderedDict()
)
_PIPES_LOCK = threading.Lock()


def _family(path: Path) -> str | None:
    meta = path / "imagesynth.json"
    if meta.is_file():
        try:
            return str(json.loads(meta.read_text()).get("family") or "") or None
        except (OSError, ValueError):
            return None
    index = path / "model_index.json"
    if index.is_file():
        try:
            cls = json.loads(index.read_text()).get("_class_name", "")
        except (OSError, ValueError):
            return None
        return "latent-diffusion" if "StableDiffusion" in cls else "diffusion"
    return None


class ModelRegistry:
    """Name -> model directory, re-scanned on each listing (folders may appear while serving)."""

    def __init__(self, settings: Settings, cache_size: int = 2) -> None:
        self.settings = settings
        self.cache_size = cache_size

    def scan(self) -> dict[str, dict[str, Any]]:
        from ..bundled import BUNDLED, DEFAULT, bundled_model_path

        out: dict[str, dict[str, Any]] = {}
        for name in BUNDLED:
            try:
                path = bundled_model_path(name)
            except ImagesynthError:
                continue
            out[name] = {"path": path, "source": "bundled", "default": name == DEFAULT}
        root = self.settings.models_dir
        if root is not None and root.is_dir():
            for sub in sorted(root.iterdir()):
                if not sub.is_dir() or not NAME_RE.match(sub.name):
                    continue
                model = sub / "model" if (sub / "model" / "imagesynth.json").is_file() else sub
                if _family(model) and sub.name not in out:
                    out[sub.name] = {"path": model, "source": "models", "default": False}
        runs = self.settings.runs_dir
        if runs.is_dir():
            for sub in sorted(runs.iterdir()):
                model = sub / "model"
                if (model / "imagesynth.json").is_file() and NAME_RE.match(sub.name):
                    out[f"run:{sub.name}"] = {"path": model, "source": "run", "default": False}
        for info in out.values():
            info["family"] = _family(info["path"])
        return out

    def listing(self) -> list[dict[str, Any]]:
        models = self.scan()
        return [
            {
                "name": name,
                "family": info["family"],
                "source": info["source"],
                "default": info["default"],
                "text": info["family"] == "latent-diffusion",
                "loaded": (str(info["path"]), self.settings.device) in _PIPES,
            }
            for name, info in models.items()
        ]

    def default_name(self) -> str:
        from ..bundled import DEFAULT

        return DEFAULT

    def path(self, name: str | None) -> Path:
        name = name or self.default_name()
        models = self.scan()
        if name not in models:
            raise unknown_name("model", name, list(models))
        return Path(models[name]["path"])

    def load(self, name: str | None) -> Any:
        """The pipeline of a model (loaded on first use, the last `cache_size` kept)."""
        return self.load_path(self.path(name))

    def load_path(self, path: Path) -> Any:
        """The pipeline of a model directory, cached by (dir, device) and checked against the
        directory's newest file time: a model rewritten on disk (a resumed training run saves
        its `model/` again) is loaded afresh, never served stale."""
        from ..api import load

        key = (str(path), self.settings.device)
        stamp = model_stamp(path)
        with _PIPES_LOCK:
            if key in _PIPES:
                if _PIPES[key][0] == stamp:
                    _PIPES.move_to_end(key)
                    return _PIPES[key][1]
                del _PIPES[key]  # stale: the files changed since it was loaded
        pipe = load(key[0], device=self.settings.device)  # safetensors only (no pickles)
        with _PIPES_LOCK:
            _PIPES[key] = (stamp, pipe)
            while len(_PIPES) > self.cache_size:
                _PIPES.popitem(last=False)
        return pipe


def model_stamp(path: Path) -> tuple[int, int]:
    """(newest mtime in ns, file count) of a model directory and its subfolders (one level):
    diffusers layouts keep weights in unet/, vae/, ..."""
    newest, count = 0, 0
    dirs = [path]
    for level in range(2):
        subdirs = []
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_dir(follow_symlinks=False):
                        if level == 0:
                            subdirs.append(e.path)
                    else:
                        newest = max(newest, e.stat().st_mtime_ns)
                        count += 1
                except OSError:
                    continue
        dirs = subdirs
    return newest, count
