"""Environment facts for bug reports and for the records saved beside models and runs."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata
from typing import Any

PACKAGES = (
    "imagesynth",
    "torch",
    "numpy",
    "pillow",
    "safetensors",
    "diffusers",
    "accelerate",
    "transformers",
    "sentence-transformers",
    "scikit-learn",
    "scikit-image",
    "typer",
    "tqdm",
)


def library_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from package metadata (no imports, so this is fast)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def memory_info() -> dict[str, int | None]:
    """Total and available system memory in bytes (Linux /proc/meminfo, else sysconf)."""
    total = available = None
    try:
        with open("/proc/meminfo") as f:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    except (OSError, ValueError, IndexError):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"total_bytes": total, "available_bytes": available}


def device_info() -> dict[str, Any]:
    """Best device and its facts; imports torch (about 2-3 s on first use)."""
    import torch

    info: dict[str, Any] = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "mps_available": bool(getattr(torch.backends, "mps", None))
        and torch.backends.mps.is_available(),
    }
    if info["cuda_available"]:
        info["device"] = "cuda"
        info["cuda_version"] = torch.version.cuda
        gpus = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(
                {"name": torch.cuda.get_device_name(i), "free_bytes": free, "total_bytes": total}
            )
        info["gpus"] = gpus
    elif info["mps_available"]:
        info["device"] = "mps"
    return info


def report() -> dict[str, Any]:
    """Everything `imagesynth env` prints."""
    return {
        "platform": platform.platform(),
        "executable": sys.executable,
        "versions": library_versions(),
        **device_info(),
        "memory": memory_info(),
    }
