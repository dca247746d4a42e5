"""Bundled and user datasets: `shapes`, `digits`, `photos`, `textures`, `folder:PATH`."""

from __future__ import annotations

from . import digits, folder, shapes, skimage_sets  # register the datasets
from .base import DATASETS, DatasetInfo, ImageDataset, Item, get_dataset, parse_data_spec


def list_datasets() -> list[DatasetInfo]:
    """The registered datasets, in name order."""
    return [DATASETS[k] for k in sorted(DATASETS)]


__all__ = [
    "DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "Item",
    "get_dataset",
    "list_datasets",
    "parse_data_spec",
]
