"""What a model family gives the trainer: networks, training phases, sampling and saving.

The trainer knows nothing family-specific. Diffusion has one phase (denoise); a GAN has two
(D step, G step) with their own optimizers; regularizers are phases that run every k steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# loss(nets, batch, generator) -> (scalar loss, {name: float for stats.jsonl})
LossFn = Callable[
    [dict[str, torch.nn.Module], dict[str, Any], torch.Generator],
    tuple[torch.Tensor, dict[str, float]],
]


@dataclass
class Phase:
    """One optimizer step per training step (or every `every` steps) on some networks."""

    name: str
    nets: list[str]  # networks whose parameters this phase's optimizer updates
    loss: LossFn
    every: int = 1
    lr_scale: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class DataInfo:
    """What a family needs to know about its data to build its networks."""

    name: str
    size: int
    channels: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)


class Family:
    """Base class of model families (see `models/diffusion.py` for a complete one)."""

    name: str = "family"
    ema_nets: tuple[str, ...] = ()  # networks that get an EMA copy (used for sampling)

    def __init__(self) -> None:
        self.nets: dict[str, torch.nn.Module] = {}

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def prepare(self, data: Any, device: torch.device) -> None:
        """Called once with the training TensorData before the loop (e.g. to encode latents)."""

    def sample(self, nets: dict[str, torch.nn.Module], n: int, seed: int) -> torch.Tensor:
        """n images (B, C, H, W) in [-1, 1] from `nets` (EMA copies where there are)."""
        raise NotImplementedError

    def sample_params(self) -> dict[str, Any]:
        """How `sample` makes images, for the grids' PNG metadata."""
        return {}

    def save(self, path: Path, nets: dict[str, torch.nn.Module], record: dict[str, Any]) -> Path:
        """Write an inference model directory from `nets`."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError
