"""Seeds and noise that do not depend on the device.

Noise is always drawn on the CPU from a seeded `torch.Generator` and then moved, so a seed
gives the same starting noise (and so the same image, up to kernel rounding) on CPU, CUDA
or MPS. Per-image seeds (`seed + i`) make image i independent of the batch size, as in
AUTOMATIC1111.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import ImagesynthError

if TYPE_CHECKING:
    import torch

MAX_SEED = 2**63 - 1


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ImagesynthError(f"seed must be an integer in 0..2**63-1, got {seed!r}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed % 2**32))


def cpu_generator(seed: int) -> torch.Generator:
    import torch

    return torch.Generator("cpu").manual_seed(check_seed(seed))


def randn(
    shape: Sequence[int],
    seed: int | torch.Generator,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `seed`, then moved to `device`."""
    import torch

    gen = seed if isinstance(seed, torch.Generator) else cpu_generator(seed)
    x = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
    return x.to(device=device, dtype=dtype or torch.float32)


def randn_per_sample(
    shape: Sequence[int],
    seeds: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A batch whose i-th entry is `randn(shape[1:], seeds[i])`: independent of batch size."""
    import torch

    if len(seeds) != shape[0]:
        raise ImagesynthError(f"got {len(seeds)} seeds for a batch of {shape[0]}")
    return torch.stack([randn(shape[1:], s) for s in seeds]).to(device=device, dtype=dtype)
