"""Locate data files that ship inside installed packages, without importing those packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import DataError


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package (importing scikit-learn / scikit-image costs seconds)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; run: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))
