"""Model directories: `config.json` + `*.safetensors` per component, and `imagesynth.json`.

    model/
      imagesynth.json          family, components, dataset, recipe, metrics, versions
      config.json              the model's (or the whole pipeline's) config
      model.safetensors        weights of a single-component model, or per component:
      generator/config.json + generator/model.safetensors, ...

Loading never unpickles: a `.ckpt` / `.pt` / `.pth` / `.bin` pickle is refused unless the
caller passes `allow_pickle=True` (then torch's weights-only loader is used).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelFileError
from .atomic import fsync_dir, to_json, write_json_atomic

if TYPE_CHECKING:
    import torch

INFO_NAME = "imagesynth.json"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Component:
    """One network of a model: its JSON config and its weights."""

    config: dict[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    weights_name: str = WEIGHTS_NAME  # e.g. diffusers' "diffusion_pytorch_model.safetensors"


def _prepare(state_dict: Mapping[str, Any], dtype: str | None) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise ModelFileError(f"weight {k!r} is a {type(v).__name__}, expected a torch.Tensor")
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(getattr(torch, dtype))
        out[k] = v.contiguous()
    return out


def save_model(
    path: str | os.PathLike,
    components: Mapping[str, Component] | Component,
    *,
    family: str,
    config: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | str | None = None,
    recipe: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    extra_json: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write a model directory atomically (a reader sees the old model or the new, never half).

    `components` is one `Component` (files at the top level) or a mapping name -> Component
    (one subfolder each). `dtype="float16"` stores floating weights in half precision.
    `extra_json` adds JSON files by relative path (e.g. diffusers' `model_index.json`).
    """
    from safetensors.torch import save_file

    from ..env import library_versions

    path = Path(path)
    if isinstance(components, Component):
        components = {"": components}
    if not components:
        raise ModelFileError("save_model needs at least one component")
    if dtype not in (None, "float32", "float16", "bfloat16"):
        raise ModelFileError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        listed: dict[str, Any] = {}
        for name, comp in components.items():
            sub = tmp / name if name else tmp
            sub.mkdir(parents=True, exist_ok=True)
            weights = sub / comp.weights_name
            tensors = _prepare(comp.state_dict, dtype)
            save_file(tensors, str(weights), metadata={"format": "pt"})
            write_json_atomic(sub / CONFIG_NAME, dict(comp.config))
            listed[name] = {
                "weights": (f"{name}/" if name else "") + comp.weights_name,
                "sha256": sha256_file(weights),
                "parameters": int(sum(t.numel() for t in tensors.values())),
                "dtype": dtype or "as saved",
            }
        for rel, obj in (extra_json or {}).items():
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise ModelFileError(f"extra file path must be relative, got {rel!r}")
            write_json_atomic(tmp / rel, dict(obj))
        if "" not in components:
            write_json_atomic(tmp / CONFIG_NAME, dict(config or {"components": list(listed)}))
        elif config:
            raise ModelFileError("pass `config` only for multi-component models")
        info = {
            "format": "imagesynth-model",
            "format_version": FORMAT_VERSION,
            "family": family,
            "components": listed,
            "dataset": dataset,
            "recipe": dict(recipe or {}),
            "metrics": dict(metrics or {}),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
        }
        write_json_atomic(tmp / INFO_NAME, info)
        fsync_dir(tmp)
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace directory `path` by `tmp` with renames only."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _refuse_pickle(path: Path) -> ModelFileError:
    return ModelFileError(
        f"{path} is a pickle file, and loading a pickle can run arbitrary code; convert it "
        "to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust its source"
    )


def load_weights(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors from a `.safetensors` file; a pickle (`.pt`, `.ckpt`, ...) only if allowed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"weights file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelFileError(f"{path} is not a readable safetensors file ({exc})") from None
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise _refuse_pickle(path)
        import torch

        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelFileError(
                f"could not load {path} with torch's weights-only loader: {exc}"
            ) from None
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]  # Lightning / original-SD checkpoints nest the weights
        if not isinstance(obj, dict):
            raise ModelFileError(f"{path} holds a {type(obj).__name__}, expected a state dict")
        return {k: v for k, v in obj.items() if hasattr(v, "shape")}
    raise ModelFileError(
        f"{path} has suffix {suffix!r}; expected .safetensors (or a pickle with allow_pickle)"
    )


@dataclass
class ModelFiles:
    """A loaded model directory: its record, config and (lazily read) weights."""

    path: Path
    info: dict[str, Any]
    config: dict[str, Any]
    allow_pickle: bool = False
    _cache: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def family(self) -> str:
        return self.info["family"]

    @property
    def components(self) -> list[str]:
        return list(self.info.get("components", {}))

    def component_config(self, name: str = "") -> dict[str, Any]:
        self._check_component(name)
        return self.config if name == "" else _read_json(self.path / name / CONFIG_NAME)

    def state_dict(self, name: str = "") -> dict[str, torch.Tensor]:
        """Weights of one component, checked against the sha256 recorded at save time."""
        self._check_component(name)
        if name not in self._cache:
            entry = self.info["components"][name]
            file = self.path / entry["weights"]
            if not file.exists():
                pickles = [p for p in file.parent.iterdir() if p.suffix in PICKLE_SUFFIXES]
                if pickles and not self.allow_pickle:
                    raise _refuse_pickle(pickles[0])
                if not pickles:
                    raise ModelFileError(f"weights file {file} listed in {INFO_NAME} is missing")
                file = pickles[0]
            elif entry.get("sha256") and sha256_file(file) != entry["sha256"]:
                raise ModelFileError(
                    f"{file} does not match the sha256 recorded in {INFO_NAME}: "
                    "the file is corrupt or was replaced"
                )
            self._cache[name] = load_weights(file, allow_pickle=self.allow_pickle)
        return self._cache[name]

    def _check_component(self, name: str) -> None:
        if name not in self.components:
            shown = ", ".join(repr(c) for c in self.components)
            raise ModelFileError(f"{self.path} has no component {name!r}; it has: {shown}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def load_model(path: str | os.PathLike, *, allow_pickle: bool = False) -> ModelFiles:
    """Open a model directory written by `save_model` (weights are read on first use)."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
            raise _refuse_pickle(path)
        raise ModelFileError(f"{path} is a file; expected a model directory (with {INFO_NAME})")
    if not path.is_dir():
        raise ModelFileError(f"model directory {str(path)!r} does not exist")
    if not (path / INFO_NAME).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = f"; it holds pickle files ({', '.join(pickles)})" if pickles else ""
        raise ModelFileError(f"{path} is not an imagesynth model directory (no {INFO_NAME}){hint}")
    info = _read_json(path / INFO_NAME)
    if info.get("format") != "imagesynth-model" or "family" not in info:
        raise ModelFileError(f"{path / INFO_NAME} is not an imagesynth model record")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer imagesynth (format {info['format_version']}, "
            f"this one reads up to {FORMAT_VERSION}); upgrade imagesynth"
        )
    config = _read_json(path / CONFIG_NAME)
    return ModelFiles(path=path, info=info, config=config, allow_pickle=allow_pickle)


def model_hash(path: str | os.PathLike) -> str:
    """AUTOMATIC1111-style short hash (first 10 hex of sha256) of a model's main weights."""
    files = load_model(path)
    first = next(iter(files.info["components"].values()))
    return str(first.get("sha256") or sha256_file(files.path / first["weights"]))[:10]


def describe(path: str | os.PathLike) -> str:
    """A short JSON summary of a model directory (for `imagesynth models show`)."""
    files = load_model(path)
    return to_json({"path": str(files.path), **files.info}, indent=2)
