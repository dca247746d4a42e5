"""Models the server can use, by name only: the bundled ones, `--models DIR` subfolders and the
models of training runs it made. Pipelines load lazily (first use) and stay cached."""

from __future__ import annotations

import collections
import json
import re
import threading
from pathlib import Path
from typing import Any

from ..errors import ImagesynthError, unknown_name
from .settings import Settings

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}$")
# (model dir, device) -> pipeline: one cache per process, shared by every app in it (tests)
_PIPES: collections.OrderedDict[tuple[str, str | None], Any] = collections.OrderedDict()
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
        from ..api import load

        key = (str(self.path(name)), self.settings.device)
        with _PIPES_LOCK:
            if key in _PIPES:
                _PIPES.move_to_end(key)
                return _PIPES[key]
        pipe = load(key[0], device=self.settings.device)  # safetensors only (no pickles)
        with _PIPES_LOCK:
            _PIPES[key] = pipe
            while len(_PIPES) > self.cache_size:
                _PIPES.popitem(last=False)
        return pipe
