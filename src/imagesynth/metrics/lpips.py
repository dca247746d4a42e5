"""LPIPS (Zhang et al. 2018) from local weight files, and our offline `domain-perceptual`.

LPIPS: d(x, y) = sum_l mean_hw( w_l . (phi_l(x)/|phi_l(x)| - phi_l(y)/|phi_l(y)|)^2 ) over
five ReLU layers of VGG-16 or AlexNet. The backbone weights are torchvision's
(`vgg16-397923af.pth` / `alexnet-owt-7be5be79.pth`, keys `features.N.weight`) and the linear
weights the `lpips` package's `weights/v0.1/{vgg,alex}.pth` (keys `linL.model.1.weight`);
pass both as local files (`.pth` read weights-only, or `.safetensors`).

`domain-perceptual` is NOT LPIPS: the same unit-normalised feature distance on our own
domain extractor's three conv blocks with equal, uncalibrated weights. It needs no
download and tracks structure, but its values are not comparable with published LPIPS.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from .extractors import Extractor, convert_channels

# (layer index in torchvision's `features`, kind); taps after these ReLUs
VGG16 = [
    (0, "conv", 3, 64, 3, 1, 1), (2, "conv", 64, 64, 3, 1, 1), (4, "pool"),
    (5, "conv", 64, 128, 3, 1, 1), (7, "conv", 128, 128, 3, 1, 1), (9, "pool"),
    (10, "conv", 128, 256, 3, 1, 1), (12, "conv", 256, 256, 3, 1, 1),
    (14, "conv", 256, 256, 3, 1, 1), (16, "pool"),
    (17, "conv", 256, 512, 3, 1, 1), (19, "conv", 512, 512, 3, 1, 1),
    (21, "conv", 512, 512, 3, 1, 1), (23, "pool"),
    (24, "conv", 512, 512, 3, 1, 1), (26, "conv", 512, 512, 3, 1, 1),
    (28, "conv", 512, 512, 3, 1, 1),
]  # fmt: skip
VGG16_TAPS = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
ALEXNET = [
    (0, "conv", 3, 64, 11, 4, 2), (2, "pool"), (3, "conv", 64, 192, 5, 1, 2), (5, "pool"),
    (6, "conv", 192, 384, 3, 1, 1), (8, "conv", 384, 256, 3, 1, 1), (10, "conv", 256, 256, 3, 1, 1),
]  # fmt: skip
ALEXNET_TAPS = (0, 3, 6, 8, 10)  # relu1 .. relu5
NETS = {"vgg": (VGG16, VGG16_TAPS, (64, 128, 256, 512, 512)),
        "alex": (ALEXNET, ALEXNET_TAPS, (64, 192, 384, 256, 256))}  # fmt: skip
# the lpips package's ScalingLayer: inputs in [-1, 1] to ImageNet statistics
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)


class Backbone(nn.Module):
    """torchvision's VGG-16 / AlexNet `features` with the same parameter names."""

    def __init__(self, net: str) -> None:
        super().__init__()
        layers, self.taps, _ = NETS[net]
        self.net = net
        self.features = nn.ModuleDict()
        self.plan: list[tuple[str, ...]] = []
        for spec in layers:
            if spec[1] == "conv":
                i, _, cin, cout, k, s, p = spec
                self.features[str(i)] = nn.Conv2d(cin, cout, k, stride=s, padding=p)
            self.plan.append(tuple(str(v) for v in spec[:2]))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for idx, kind in self.plan:
            if kind == "pool":
                x = F.max_pool2d(x, 3, 2) if self.net == "alex" else F.max_pool2d(x, 2, 2)
                continue
            x = F.relu(self.features[idx](x))
            if int(idx) in self.taps:
                outs.append(x)
        return outs


class LPIPS(nn.Module):
    """Published LPIPS: backbone + per-layer 1x1 linear weights; input (B, 3, H, W) in [-1, 1]."""

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        if net not in NETS:
            raise ModelFileError(f"LPIPS backbone must be 'vgg' or 'alex', got {net!r}")
        self.backbone = Backbone(net)
        chans = NETS[net][2]
        self.lins = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in chans])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = convert_channels(x, 3), convert_channels(y, 3)
        fx = self.backbone((x - self.shift) / self.scale)
        fy = self.backbone((y - self.shift) / self.scale)
        d = 0
        for a, b, w in zip(fx, fy, self.lins, strict=True):
            d = d + ((_unit(a) - _unit(b)) ** 2 * w).sum(1).mean((1, 2))
        return d  # (B,)


def _load(path: str | os.PathLike, what: str, expected: str | None) -> tuple[dict, str]:
    from ..io.model_dir import load_weights, sha256_file

    path = Path(path).expanduser()
    exp = expected or "not pinned (pass --lpips-sha256 to check it)"
    if not path.is_file():
        raise ModelFileError(
            f"LPIPS {what} file {str(path)!r} does not exist (expected sha256 {exp})"
        )
    digest = sha256_file(path)
    if expected and digest != expected.lower():
        raise ModelFileError(f"LPIPS {what} file {path} has sha256 {digest}, expected {expected}")
    try:
        state = load_weights(path, allow_pickle=path.suffix.lower() != ".safetensors")
    except ModelFileError as exc:
        raise ModelFileError(f"{exc} (expected sha256 {exp})") from None
    return state, digest


def load_lpips(
    backbone: str | os.PathLike,
    linear: str | os.PathLike,
    net: str = "vgg",
    backbone_sha256: str | None = None,
    linear_sha256: str | None = None,
) -> tuple[LPIPS, dict[str, str]]:
    """LPIPS with torchvision backbone weights and lpips linear weights from local files."""
    model = LPIPS(net)
    bstate, bsha = _load(backbone, "backbone", backbone_sha256)
    lstate, lsha = _load(linear, "linear", linear_sha256)
    feats = {k.removeprefix("features."): v for k, v in bstate.items() if k.startswith("features.")}
    want = model.backbone.features.state_dict()
    missing = sorted(set(want) - set(feats))
    if missing:
        raise ModelFileError(
            f"{backbone} is not torchvision {net} weights: missing features.{missing[0]}"
        )
    for k, v in want.items():
        if feats[k].shape != v.shape:
            raise ModelFileError(
                f"{backbone}: features.{k} has shape {tuple(feats[k].shape)}, expected "
                f"{tuple(v.shape)} for {net}"
            )
    model.backbone.features.load_state_dict({k: feats[k] for k in want})
    for i, p in enumerate(model.lins):
        key = next(
            (k for k in (f"lin{i}.model.1.weight", f"lin{i}.model.weight") if k in lstate), None
        )
        if key is None or lstate[key].shape != p.shape:
            found = tuple(lstate[key].shape) if key else "missing"
            raise ModelFileError(
                f"{linear} is not LPIPS {net} linear weights: lin{i}.model.1.weight is {found}, "
                f"expected {tuple(p.shape)}"
            )
        p.data.copy_(lstate[key])
    return model.eval(), {"backbone_sha256": bsha, "linear_sha256": lsha}


class DomainPerceptual(nn.Module):
    """NOT LPIPS: sum over conv blocks of mean squared unit-feature differences, equal weights."""

    def __init__(self, extractor: Extractor) -> None:
        super().__init__()
        if not hasattr(extractor.net, "feature_maps"):
            raise ModelFileError(
                f"domain-perceptual needs a domain:NAME extractor, got {extractor.spec!r}"
            )
        self.ext = extractor

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.ext.channels
        fx = self.ext.net.feature_maps(convert_channels(x, c))
        fy = self.ext.net.feature_maps(convert_channels(y, c))
        d = 0
        for a, b in zip(fx, fy, strict=True):
            d = d + ((_unit(a) - _unit(b)) ** 2).mean((1, 2, 3))
        return d  # (B,)
