"""imagesynth: train, sample, edit, evaluate and estimate generative image models, offline.

Importing this package is cheap: torch and the heavy parts load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr

__version__ = "0.4.0"

# public name -> module that defines it (imported on first attribute access)
_LAZY = {
    "ImagesynthError": "imagesynth.errors",
    "DataError": "imagesynth.errors",
    "ModelFileError": "imagesynth.errors",
    "get_dataset": "imagesynth.data",
    "list_datasets": "imagesynth.data",
    "save_model": "imagesynth.io.model_dir",
    "load_model": "imagesynth.io.model_dir",
    "load_weights": "imagesynth.io.model_dir",
    "save_png": "imagesynth.io.pngmeta",
    "read_png_metadata": "imagesynth.io.pngmeta",
    "seed_everything": "imagesynth.seeding",
    "train": "imagesynth.api",
    "load": "imagesynth.api",
    "TrainConfig": "imagesynth.training.config",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from .api import load, train
    from .data import get_dataset, list_datasets
    from .errors import DataError, ImagesynthError, ModelFileError
    from .io.model_dir import load_model, load_weights, save_model
    from .io.pngmeta import read_png_metadata, save_png
    from .seeding import seed_everything
    from .training.config import TrainConfig


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
