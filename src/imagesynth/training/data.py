"""Training data as in-memory tensors and a batch order that is a function of the step.

Small image datasets fit in memory as uint8 (10,000 RGB 64 px images are 123 MB), so the
trainer renders or decodes every item once and then slices tensors: no decoding in the
loop and no input-pipeline stalls. The order of batches depends only on (seed, step), so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.base import ImageDataset
from ..errors import DataError
from ..io.images import pil_to_array

MAX_CACHE_BYTES = 4 << 30


def step_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of integers (seed, rank, step, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class TensorData:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None  # (N,) int64, or None when unlabelled
    flip_ok: bool
    captions: list[str] | None = None  # one per image when the dataset has captions

    def __len__(self) -> int:
        return self.images.shape[0]


def load_tensor_data(
    ds: ImageDataset, *, progress: bool = True, captions: bool = False
) -> TensorData:
    """Every item of `ds` as one uint8 tensor (labels when it has classes, captions if asked)."""
    n = len(ds)
    if n == 0:
        raise DataError(f"dataset {ds.name!r} is empty")
    nbytes = n * ds.size * ds.size * ds.channels
    if nbytes > MAX_CACHE_BYTES:
        raise DataError(
            f"dataset {ds.name!r} needs {nbytes / 2**30:.1f} GiB in memory at {ds.size} px; "
            f"the limit is {MAX_CACHE_BYTES / 2**30:.0f} GiB: use a smaller --size or fewer images"
        )
    images = torch.empty((n, ds.channels, ds.size, ds.size), dtype=torch.uint8)
    labels = torch.empty(n, dtype=torch.int64) if ds.num_classes else None
    texts: list[str] | None = [] if captions else None
    for i in tqdm(range(n), desc=f"load {ds.name}", unit="img", disable=not progress or None):
        item = ds[i]
        arr = pil_to_array(item.image.convert("L" if ds.channels == 1 else "RGB"))
        images[i] = torch.from_numpy(arr.copy()).permute(2, 0, 1)
        if labels is not None:
            labels[i] = -1 if item.label is None else item.label
        if texts is not None:
            texts.append(item.caption or "")
    if texts is not None and not any(texts):
        raise DataError(
            f"dataset {ds.name!r} has no captions; give images sidecar .txt files or a "
            "metadata.jsonl with file_name and text (see `imagesynth datasets --help`)"
        )
    return TensorData(images=images, labels=labels, flip_ok=ds.flip_ok, captions=texts)


class BatchOrder:
    """Epoch-wise shuffles (seeded per epoch) cut into global batches split across ranks.

    Each epoch is a fresh permutation cut into floor(N / G) global batches of G = B x W
    (the remainder is dropped, as with drop_last); micro-batch k of rank r is slice
    [r*B, (r+1)*B) of global batch k. Ranks never overlap and together cover each batch.
    """

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int) -> None:
        self.n, self.batch, self.world, self.rank, self.seed = n, batch, world, rank, seed
        self.per_epoch = n // (batch * world)
        if self.per_epoch < 1:
            raise DataError(
                f"the dataset has {n} images, fewer than one global batch of {batch * world} "
                f"({batch} per process x {world} processes); lower --batch"
            )
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(step_seed(self.seed, 0x5EED, epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return self._perm[1]

    def indices(self, micro_step: int) -> torch.Tensor:
        """Dataset indices of this rank's part of global micro-batch `micro_step`."""
        epoch, k = divmod(micro_step, self.per_epoch)
        start = k * self.batch * self.world + self.rank * self.batch
        return self._permutation(epoch)[start : start + self.batch].clone()

    def epoch(self, micro_step: int) -> float:
        return micro_step / self.per_epoch


def make_batch(
    data: TensorData,
    idx: torch.Tensor,
    *,
    flip: bool,
    generator: torch.Generator,
    device: torch.device,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Images as float (B, C, H, W) in [-1, 1] on `device` (randomly flipped if allowed)."""
    x = data.images[idx].to(device=device, dtype=torch.float32).div_(127.5).sub_(1.0)
    if flip and data.flip_ok:
        mask = torch.rand(x.shape[0], generator=generator) < 0.5
        x[mask.to(device)] = x[mask.to(device)].flip(-1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    labels = data.labels[idx].to(device) if data.labels is not None else None
    batch: dict[str, Any] = {"images": x, "labels": labels, "index": idx}
    if data.captions is not None:
        batch["captions"] = [data.captions[int(i)] for i in idx]
    return batch
