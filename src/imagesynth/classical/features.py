"""Feature networks for style transfer, texture synthesis and perceptual losses.

The networks share one interface, `net(x, layers) -> {layer name: (B, C, H, W)}` on images
in [-1, 1], with `style_layers` and `content_layer` attributes:

- `RandomVGG` (the offline default, `--features random`): a VGG-shaped stack of 3x3
  convolutions with fixed random weights (seeded, never trained, never downloaded), one
  per block, ReLU, 2x2 average pooling, widths 32-64-128-256-256. Style = Gram matrices of
  conv1_1 ... conv5_1 (receptive fields 3 to 78 px), content = conv4_1. Why: random-weight
  deep VGG-like networks with per-layer normalisation of the Gram losses stylise (He, Wang &
  Hopcroft 2016, "A powerful generative model using random weights for the deep image
  representation"), and random filters carry texture statistics (Ustyuzhaninov et al.
  2017). Compared side by side (bench/style_transfer.py, docs/images/style_grid.png), it
  keeps the content's structure and carries the style's colours and strokes, where the
  earlier default, one random layer applied over an image pyramid (`RandomFeatures`,
  `--features random-multiscale`), gave mostly colour noise at 3x the cost per step.
- `RandomFeatures`: that multi-scale single-layer network (Ustyuzhaninov et al.), still
  used as a cheap perceptual feature and as an independent judge of texture statistics.
- `VGG19Features`: the real VGG-19 (Simonyan & Zisserman 2015) from a local weights file in
  torchvision's layout (`features.N.weight` / `features.N.bias`), built here without
  torchvision: conv4_2 content, conv1_1 ... conv5_1 style. `.safetensors` is read directly;
  a `.pth` only with torch's weights-only loader.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImagesynthError, ModelFileError

# VGG-19 "E" configuration: output channels per conv, "M" = 2x2 pooling
VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
VGG19_CFG += [512, 512, 512, 512, "M", 512, 512, 512, 512]
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
CONTENT_LAYER = "conv4_2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg_layer_names(cfg: list) -> list[tuple[str, int]]:
    """[(conv name, index in torchvision's `features` Sequential)] for a VGG config."""
    out, block, conv, idx = [], 1, 1, 0
    for v in cfg:
        if v == "M":
            block, conv, idx = block + 1, 1, idx + 1
        else:
            out.append((f"conv{block}_{conv}", idx))
            conv, idx = conv + 1, idx + 2  # conv + ReLU
    return out


class _ConvStack(nn.Module):
    """VGG-shaped conv stack returning the ReLU outputs of named layers.

    `circular = True` pads circularly (for seamlessly tileable textures); `pool` is "avg"
    (Gatys et al. recommend it for synthesis) or "max" (VGG's own).
    """

    def __init__(self, cfg: list, in_channels: int = 3, pool: str = "avg") -> None:
        super().__init__()
        self.cfg, self.pool, self.circular = cfg, pool, False
        self.convs = nn.ModuleList()
        c = in_channels
        for v in cfg:
            if v != "M":
                self.convs.append(nn.Conv2d(c, v, 3, padding=0))
                c = v
        self.names = [n for n, _ in vgg_layer_names(cfg)]
        self.style_layers, self.content_layer = STYLE_LAYERS, CONTENT_LAYER

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, layers: tuple[str, ...] | list[str]) -> dict:
        want = set(layers)
        unknown = want - set(self.names)
        if unknown:
            raise ImagesynthError(f"unknown feature layers {sorted(unknown)}; have {self.names}")
        last = max(self.names.index(n) for n in want)
        out: dict[str, torch.Tensor] = {}
        h = self.normalize(x)
        i = 0
        for v in self.cfg:
            if v == "M":
                if min(h.shape[-2:]) < 2:
                    break
                h = F.avg_pool2d(h, 2) if self.pool == "avg" else F.max_pool2d(h, 2)
                continue
            mode = "circular" if self.circular else "reflect"
            if min(h.shape[-2:]) < 2:
                mode = "replicate"
            h = F.relu(self.convs[i](F.pad(h, (1, 1, 1, 1), mode=mode)))
            if self.names[i] in want:
                out[self.names[i]] = h
            if i == last:
                break
            i += 1
        return out


class RandomFeatures(nn.Module):
    """Fixed random multi-scale features (see module docstring); needs no weights file.

    One layer of `filters` random k x k filters with ReLU, applied at every level of an
    image pyramid (a k-px filter at level l spans k * 2^l px), as in Ustyuzhaninov et al.'s
    multi-scale single-layer network, whose Gram matrices give natural textures. Layers are
    named `scale0` (full resolution) ... `scale{levels-1}`; different random weights per
    level, all drawn from `seed`.
    """

    kind = "random-multiscale"

    def __init__(
        self,
        in_channels: int = 3,
        filters: int = 128,
        kernel: int = 7,
        levels: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.kernel, self.levels, self.circular = kernel, levels, False
        self.names = [f"scale{i}" for i in range(levels)]
        self.style_layers = tuple(self.names)
        self.content_layer = f"scale{min(2, levels - 1)}"
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(levels, filters, in_channels, kernel, kernel, generator=gen)
        w = w / w.flatten(2).norm(dim=2)[..., None, None, None]  # unit-norm filters
        b = 0.1 * torch.randn(levels, filters, generator=gen)
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, layers: tuple[str, ...] | list[str]) -> dict:
        want = set(layers)
        unknown = want - set(self.names)
        if unknown:
            raise ImagesynthError(f"unknown feature layers {sorted(unknown)}; have {self.names}")
        out: dict[str, torch.Tensor] = {}
        h, p = x, self.kernel // 2
        last = max(self.names.index(n) for n in want)
        for i in range(last + 1):
            if i > 0:
                if min(h.shape[-2:]) < 2:
                    break
                h = F.avg_pool2d(h, 2)
            if self.names[i] in want:
                mode = "circular" if self.circular else "reflect"
                if min(h.shape[-2:]) <= p:
                    mode = "replicate"
                hp = F.pad(h, (p, p, p, p), mode=mode)
                out[self.names[i]] = F.relu(F.conv2d(hp, self.weight[i], self.bias[i]))
        return out


RANDOM_VGG_CFG = [32, "M", 64, "M", 128, "M", 256, "M", 256]


class RandomVGG(_ConvStack):
    """A VGG-shaped network with fixed random weights (the offline default; module docstring).

    One 3x3 convolution + ReLU per block, 2x2 average pooling between blocks, widths
    32-64-128-256-256, so conv1_1 ... conv5_1 see 3 ... 78 px. Filters are zero-mean
    Gaussians scaled by sqrt(2 / fan_in) (He et al. 2015), which keeps activations of the
    same order through the depth; the Gram loss normalises each layer on its own, which is
    He, Wang & Hopcroft's per-layer weighting.
    """

    kind = "random"  # the --features name that rebuilds it

    def __init__(
        self,
        in_channels: int = 3,
        seed: int = 0,
        cfg: list | None = None,
        content_layer: str = "conv4_1",
    ) -> None:
        super().__init__(cfg or RANDOM_VGG_CFG, in_channels, pool="avg")
        gen = torch.Generator().manual_seed(seed)
        for conv in self.convs:
            w = torch.randn(conv.weight.shape, generator=gen)
            w = w - w.mean((1, 2, 3), keepdim=True)
            conv.weight.data.copy_(w * (2.0 / w[0].numel()) ** 0.5)
            conv.bias.data.zero_()
        self.requires_grad_(False)
        if content_layer not in self.names:
            raise ImagesynthError(f"content layer {content_layer!r} not in {self.names}")
        self.content_layer = content_layer
        self.style_layers = tuple(n for n in self.names if n.endswith("_1"))


class VGG19Features(_ConvStack):
    """VGG-19's conv layers from torchvision-layout weights (ImageNet-normalised input)."""

    kind = "vgg19"

    def __init__(self, pool: str = "avg") -> None:
        super().__init__(VGG19_CFG, 3, pool=pool)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return ((x + 1) / 2 - self.mean) / self.std

    def load_torchvision(self, state: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Load `features.N.weight/bias` (or `N.weight/bias`) up to conv5_4; the error names
        every missing key."""
        state = {
            k[len("features.") :] if k.startswith("features.") else k: v for k, v in state.items()
        }
        mine = {}
        missing = []
        for i, (name, idx) in enumerate(vgg_layer_names(VGG19_CFG)):
            conv = self.convs[i]
            for part, param in (("weight", conv.weight), ("bias", conv.bias)):
                key = f"{idx}.{part}"
                if key not in state:
                    missing.append(f"features.{key}")
                    continue
                t = state[key]
                if tuple(t.shape) != tuple(param.shape):
                    raise ModelFileError(
                        f"{source}: features.{key} ({name}) has shape {tuple(t.shape)}, "
                        f"expected {tuple(param.shape)} (VGG-19)"
                    )
                mine[f"convs.{i}.{part}"] = t.float()
        if missing:
            shown = ", ".join(missing[:8]) + (
                f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
            )
            raise ModelFileError(
                f"{source} is not a VGG-19 state dict in torchvision's layout: missing {shown}"
            )
        self.load_state_dict({**mine, "mean": self.mean, "std": self.std})
        self.requires_grad_(False).eval()


def load_vgg19(path: str | Path, pool: str = "avg") -> VGG19Features:
    """VGG19Features from a local file (.safetensors, or .pth via the weights-only loader)."""
    from ..io.model_dir import load_weights

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"--features file {str(path)!r} does not exist")
    # torch's weights-only unpickler refuses code, so torchvision's .pth file is safe to read
    state = load_weights(path, allow_pickle=path.suffix.lower() in (".pth", ".pt"))
    net = VGG19Features(pool=pool)
    net.load_torchvision(state, source=str(path))
    return net


def get_feature_net(features: str | Path | None = None, channels: int = 3) -> nn.Module:
    """`None` / "random": the offline random VGG; "random:SEED" (another draw of it);
    "random-multiscale": the single-layer multi-scale network; else a VGG-19 weights file."""
    name = None if features is None else str(features)
    if name in (None, "random"):
        return RandomVGG(channels)
    if name == "random-multiscale":
        return RandomFeatures(channels)
    if name.startswith("random:"):
        try:
            seed = int(name.split(":", 1)[1])
        except ValueError:
            raise ImagesynthError(
                f"--features random:SEED needs an integer, got {features!r}"
            ) from None
        return RandomVGG(channels, seed=seed)
    return load_vgg19(features)


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix (B, C, C) of features (B, C, H, W), normalised by C*H*W (Gatys et al.)."""
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)
