"""Shared helpers of the benchmarks: machine facts, result files, a digits classifier.

The digits classifier is the stated placeholder feature extractor until the evaluation
issue's `domain:digits` extractor lands: a small CNN trained on the digits train split;
its penultimate features feed the Frechet distance and its logits the class accuracy.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    from imagesynth.env import library_versions

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": dev,
        "platform": platform.platform(),
        "versions": library_versions(),
    }


def write_result(name: str, figures: dict[str, Any], command: str) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {
        **figures,
        "command": command,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def digits_tensors(split: str, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Real digits as float (N, 1, S, S) in [-1, 1] and labels."""
    from imagesynth.data import get_dataset
    from imagesynth.training.data import load_tensor_data

    data = load_tensor_data(get_dataset("digits", size=size, split=split), progress=False)
    return data.images.float() / 127.5 - 1, data.labels


class DigitsNet(nn.Module):
    """A small CNN (~60 k params) for 16 px digits; `features` is its 128-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 16, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_digits_classifier(epochs: int = 30, seed: int = 0) -> tuple[DigitsNet, float]:
    """Train on the digits train split with small shifts; return (net, test accuracy)."""
    torch.manual_seed(seed)
    x, y = digits_tensors("train")
    xt, yt = digits_tensors("test")
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            xb = x[idx]
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()  # +-1 px shifts
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    return net, acc


@torch.no_grad()
def features(net: DigitsNet, x: torch.Tensor) -> np.ndarray:
    return torch.cat([net.features(x[i : i + 512]) for i in range(0, len(x), 512)]).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Heusel et al. 2017)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.asarray(linalg.sqrtm(s_a @ s_b)).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))
