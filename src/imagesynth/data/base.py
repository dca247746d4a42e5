"""Dataset items, the dataset base class and the registry of named datasets.

Datasets are torch-free (numpy + Pillow) so that listing and previewing them is fast;
`imagesynth.data.torch.TorchDataset` adapts any of them for training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from ..errors import DataError, unknown_name


@dataclass
class Item:
    """One dataset sample: a PIL image plus whatever the dataset knows about it."""

    image: Image.Image  # mode "RGB" or "L", size (S, S)
    label: int | None = None  # class index, or None for unlabelled data
    caption: str | None = None  # text description, or None
    attributes: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable facts
    masks: list[Image.Image] | None = None  # per-object masks (mode "L", 0 / 255), if known


class ImageDataset:
    """Base class: a sized, indexable collection of `Item`s of one square size.

    Subclasses set `name`, `size`, `channels`, `class_names` and implement `__len__` and
    `_get(index)`. Index -> item is a pure function of the constructor arguments.
    """

    name: str = "dataset"
    size: int = 32
    channels: int = 3
    class_names: ClassVar[list[str]] = []  # instances may set their own list
    flip_ok: bool = True  # whether a horizontal flip keeps an item valid (False for shapes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        raise NotImplementedError

    def _get(self, index: int) -> Item:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item:
        n = len(self)
        if not isinstance(index, int):
            index = int(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} of length {n}")
        return self._get(index)

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self)):
            yield self[i]

    def describe(self) -> dict[str, Any]:
        """The facts a run directory records about its data."""
        return {
            "name": self.name,
            "size": self.size,
            "channels": self.channels,
            "length": len(self),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
        }


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    factory: Callable[..., ImageDataset]
    description: str
    takes_path: bool = False  # `folder:PATH`


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str, description: str, *, takes_path: bool = False
) -> Callable[[Callable[..., ImageDataset]], Callable[..., ImageDataset]]:
    """Decorator adding a dataset factory to the registry the CLI, API and server list."""

    def wrap(factory: Callable[..., ImageDataset]) -> Callable[..., ImageDataset]:
        DATASETS[name] = DatasetInfo(name, factory, description, takes_path)
        return factory

    return wrap


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """Split `name` or `name:PATH` (e.g. `folder:~/pics`) into (name, path)."""
    name, sep, path = spec.partition(":")
    name = name.strip().lower()
    if name not in DATASETS:
        raise unknown_name("dataset", name, list(DATASETS))
    info = DATASETS[name]
    if info.takes_path and not (sep and path):
        raise DataError(f"dataset {name!r} needs a path: use '{name}:PATH'")
    if not info.takes_path and sep:
        raise DataError(f"dataset {name!r} takes no path, got {spec!r}")
    return name, (path or None)


def get_dataset(spec: str, **options: Any) -> ImageDataset:
    """Build a dataset from `shapes`, `digits`, `photos`, `textures` or `folder:PATH`.

    Options (`size`, `seed`, `split`, ...) go to the dataset's constructor; unknown ones are
    an error naming the valid options.
    """
    name, path = parse_data_spec(spec)
    factory = DATASETS[name].factory
    import inspect

    params = inspect.signature(factory).parameters
    bad = [k for k in options if k not in params]
    if bad:
        valid = [p for p in params if p != "path"]
        raise DataError(
            f"dataset {name!r} has no option {bad[0]!r}; valid options: {', '.join(valid)}"
        )
    if path is not None:
        return factory(path, **options)
    return factory(**options)


def check_size(size: int, lo: int = 8, hi: int = 1024, what: str = "size") -> int:
    """Validate an image size in pixels."""
    if isinstance(size, bool) or not isinstance(size, int) or not lo <= size <= hi:
        raise DataError(f"{what} must be an integer in {lo}..{hi}, got {size!r}")
    return size
