"""Trainer state in safetensors + JSON (no pickles, unlike torch.save / accelerate's state).

An optimizer's `state_dict()` is split into its tensors (`state.<param>.<key>`) and the rest
(param groups and non-tensor state) as JSON, and put back together on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import ImagesynthError


def save_optimizer(opt: torch.optim.Optimizer, folder: Path, name: str) -> None:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    save_file(tensors, str(folder / f"{name}.safetensors"))
    meta = {"param_groups": sd["param_groups"], "plain_state": plain}
    (folder / f"{name}.json").write_text(json.dumps(meta, default=list))


def load_optimizer(opt: torch.optim.Optimizer, folder: Path, name: str) -> None:
    try:
        tensors = load_file(str(folder / f"{name}.safetensors"))
        meta = json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError) as exc:
        raise ImagesynthError(
            f"checkpoint {folder} has no readable optimizer {name!r}: {exc}"
        ) from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, sub = key.split(".", 2)
        state.setdefault(int(pid), {})[sub] = value
    for pid, values in meta["plain_state"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})
    # safetensors stores contiguous tensors; a channels_last parameter needs its moments in
    # the same layout, since fused / foreach kernels walk parameter and state memory together
    for group in opt.param_groups:
        for param in group["params"]:
            for key, value in opt.state.get(param, {}).items():
                tensor = isinstance(value, torch.Tensor) and value.shape == param.shape
                if tensor and value.stride() != param.stride():
                    opt.state[param][key] = torch.empty_like(param).copy_(value)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (OSError, ValueError) as exc:
        raise ImagesynthError(f"cannot read checkpoint file {path}: {exc}") from None
