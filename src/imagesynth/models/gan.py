"""GANs: DCGAN and ResNet SNGAN generators / discriminators, unconditional or class-conditional.

- Objective (Goodfellow et al. 2014, "the seeds"): min_G max_D E_x[log D(x)] + E_z[log(1 -
  D(G(z)))] with D = sigmoid(logit). `minimax` trains G on log(1 - D(G(z))) as written;
  `nonsat` on -log D(G(z)); `hinge` (Lim & Ye 2017; Miyato et al. 2018); `wgan-gp`
  (Gulrajani et al. 2017): E[D(G(z))] - E[D(x)] + lambda E[(|grad D(x_hat)| - 1)^2].
- R1 (Mescheder et al. 2018): gamma / 2 E_x[|grad_x D(x)|^2] on reals, lazily every k D steps
  and scaled by k (Karras et al. 2020). It is added to the D phase's loss on those steps
  rather than being a Phase of its own: the trainer gives every phase its own Adam, and
  Adam's normalisation would cancel gamma in a separate optimizer.
- Conditional: `concat` feeds one-hot labels to G (concatenated to z) and to D (as constant
  feature maps), the seeds' cGAN; `projection` (Miyato & Koyama 2018, the default) gives G
  class-conditional batch norm and D an inner product <embed(y), phi(x)> added to its logit.
- Augmentation for D (Zhao et al. 2020, DiffAugment: color, translation, cutout, applied
  differentiably to reals and fakes in the D and G steps). `ada` applies each transform with
  probability p adapted from r_t = E[sign(D(x_real))] toward a target (Karras et al. 2020,
  StyleGAN2-ADA); p and its accumulator live in D's buffers, so they resume exactly.
- Sampling uses the EMA generator with "standing" batch-norm statistics re-estimated on
  random z (Brock et al. 2019), and optional truncation z <- psi z: since z enters a linear
  layer, this moves the first layer's pre-activation toward its mean for the given class.
- Logged per step: D accuracy on reals / fakes, mean logits, D's gradient norm, the ADA p and
  r_t, and the diversity of a fixed batch of fakes (mean pairwise RMS distance) against the
  same figure for real images (diversity_ratio near 0 = mode collapse).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImagesynthError, unknown_name
from ..training.family import DataInfo, Family, Phase

# Presets are data: architecture, noise size and base widths (channels double per 2x down to
# 4x4, at most 8x). Parameters of G / D for 1-channel images at 16 px and 32 px.
PRESETS: dict[str, dict[str, Any]] = {
    # 0.11 M / 0.04 M at 16 px, 0.31 M / 0.17 M at 32 px: ~12 steps/s at 16 px, batch 64, 1 core
    "dcgan-tiny": {"arch": "dcgan", "z_dim": 64, "g_width": 16, "d_width": 16},
    # 0.30 M / 0.16 M at 16 px, 0.96 M / 0.69 M at 32 px
    "dcgan-small": {"arch": "dcgan", "z_dim": 64, "g_width": 32, "d_width": 32},
    # 1.2 M / 0.66 M at 16 px, 3.8 M / 2.8 M at 32 px: for GPUs
    "dcgan-base": {"arch": "dcgan", "z_dim": 128, "g_width": 64, "d_width": 64},
    # SNGAN residual blocks: 0.10 M / 0.07 M at 16 px, 0.29 M / 0.30 M at 32 px
    "resnet-tiny": {"arch": "resnet", "z_dim": 64, "g_width": 16, "d_width": 16},
    # 0.28 M / 0.30 M at 16 px, 0.89 M / 1.2 M at 32 px
    "resnet-small": {"arch": "resnet", "z_dim": 64, "g_width": 32, "d_width": 32},
    # 1.1 M / 1.2 M at 16 px, 3.6 M / 4.9 M at 32 px: for GPUs (SNGAN's CIFAR model is 128 wide)
    "resnet-base": {"arch": "resnet", "z_dim": 128, "g_width": 64, "d_width": 64},
}
LOSSES = ("minimax", "nonsat", "hinge", "wgan-gp")
CONDITIONING = ("projection", "concat")
AUGMENTS = ("none", "diffaugment", "ada")
AUG_POLICIES = ("color", "translation", "cutout")
SAMPLE_BATCH = 256  # images per generator call when sampling
DIVERSITY_SEED = 777  # the fixed batch whose diversity is logged


@dataclass
class GanOptions:
    """Family options (saved in the model's config.json)."""

    preset: str = "dcgan-tiny"
    loss: str = "hinge"  # minimax | nonsat | hinge | wgan-gp
    cond: str = "projection"  # projection | concat (used when the data is class-conditional)
    spectral_norm: bool = True  # spectral normalisation of every D layer
    g_lr_scale: float = 1.0  # phase learning rates relative to --lr (TTUR: d > g)
    d_lr_scale: float = 1.0
    beta1: float | None = None  # Adam betas; None: (0.5, 0.999) dcgan, (0.0, 0.9) resnet
    beta2: float | None = None
    g_every: int | None = None  # one G step per this many D steps; None: 5 wgan-gp, else 1
    gp_weight: float = 10.0  # WGAN-GP lambda
    r1_gamma: float = 0.0  # R1 weight gamma (0 = off)
    r1_every: int = 4  # lazy R1: every k D steps, scaled by k
    augment: str = "none"  # none | diffaugment | ada
    aug_policy: str = "color,translation,cutout"
    ada_target: float = 0.6  # target of r_t = E[sign(D(real))]
    ada_interval: int = 4  # D steps between p updates
    ada_kimg: float = 100.0  # thousands of images for p to move by 1
    truncation: float = 1.0  # psi of the training grids (1 = none)
    diversity_n: int = 8  # fakes in the logged diversity batch (0 = off)

    def validate(self) -> GanOptions:
        if self.preset not in PRESETS:
            raise unknown_name("gan preset", self.preset, list(PRESETS))
        if self.loss not in LOSSES:
            raise unknown_name("gan loss", self.loss, list(LOSSES))
        if self.cond not in CONDITIONING:
            raise unknown_name("gan conditioning", self.cond, list(CONDITIONING))
        if self.augment not in AUGMENTS:
            raise unknown_name("gan augment", self.augment, list(AUGMENTS))
        parse_policy(self.aug_policy)
        for name in ("g_lr_scale", "d_lr_scale"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or not 0 < v <= 100:
                raise ImagesynthError(f"{name} must be in (0, 100], got {v!r}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                raise ImagesynthError(f"{name} must be in [0, 1), got {v!r}")
        if self.g_every is not None and (not isinstance(self.g_every, int) or self.g_every < 1):
            raise ImagesynthError(f"g_every must be an integer >= 1, got {self.g_every!r}")
        if self.gp_weight < 0 or self.r1_gamma < 0:
            raise ImagesynthError("gp_weight and r1_gamma must be >= 0")
        if not isinstance(self.r1_every, int) or self.r1_every < 1:
            raise ImagesynthError(f"r1_every must be an integer >= 1, got {self.r1_every!r}")
        if not 0 < self.ada_target < 1:
            raise ImagesynthError(f"ada_target must be in (0, 1), got {self.ada_target}")
        if not isinstance(self.ada_interval, int) or self.ada_interval < 1 or self.ada_kimg <= 0:
            raise ImagesynthError("ada_interval must be an integer >= 1 and ada_kimg > 0")
        check_truncation(self.truncation)
        if not isinstance(self.diversity_n, int) or self.diversity_n < 0:
            raise ImagesynthError(f"diversity_n must be an integer >= 0, got {self.diversity_n}")
        if self.diversity_n == 1:
            raise ImagesynthError("diversity_n must be 0 (off) or >= 2 (pairs of images)")
        return self

    def resolved_betas(self) -> tuple[float, float]:
        dcgan = PRESETS[self.preset]["arch"] == "dcgan"
        b1 = self.beta1 if self.beta1 is not None else (0.5 if dcgan else 0.0)
        b2 = self.beta2 if self.beta2 is not None else (0.999 if dcgan else 0.9)
        return (b1, b2)

    def resolved_g_every(self) -> int:
        if self.g_every is not None:
            return self.g_every
        return 5 if self.loss == "wgan-gp" else 1


# ----- helpers -------------------------------------------------------------------------------
def check_truncation(psi: float) -> float:
    if isinstance(psi, bool) or not isinstance(psi, int | float) or not 0 <= psi <= 1:
        raise ImagesynthError(f"truncation psi must be in [0, 1] (1 = off), got {psi!r}")
    return float(psi)


def stages_for(size: int) -> int:
    """Number of 2x up/down-sampling stages between 4x4 and `size` (16 -> 2, 64 -> 4)."""
    n = round(math.log2(max(size, 1) / 4))
    if size < 8 or 4 * 2**n != size:
        raise ImagesynthError(
            f"GAN image size must be 4 x a power of two, >= 8 (8, 16, 32, 64, ...), got {size}"
        )
    return n


def parse_policy(policy: str) -> list[str]:
    parts = [p.strip() for p in policy.split(",") if p.strip()]
    for p in parts:
        if p not in AUG_POLICIES:
            raise unknown_name("augmentation", p, list(AUG_POLICIES))
    return parts


def d_loss_fn(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from logits on reals and fakes (without WGAN-GP's penalty)."""
    if kind in ("minimax", "nonsat"):  # -[log sigmoid(real) + log(1 - sigmoid(fake))]
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    raise unknown_name("gan loss", kind, list(LOSSES))


def g_loss_fn(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss from D's logits on fakes."""
    if kind == "minimax":  # minimise log(1 - sigmoid(fake)) = -softplus(fake)
        return -F.softplus(fake).mean()
    if kind == "nonsat":  # minimise -log sigmoid(fake)
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise unknown_name("gan loss", kind, list(LOSSES))


def input_grad_sq(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|grad_x sum(out)|^2 per sample (B,), kept in the graph (double backprop)."""
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return g.pow(2).flatten(1).sum(1)


def r1_penalty(d_real: torch.Tensor, x_real: torch.Tensor, gamma: float) -> torch.Tensor:
    """gamma / 2 E[|grad_x D(x)|^2] over reals `x_real` (which must require grad)."""
    return 0.5 * gamma * input_grad_sq(d_real, x_real).mean()


def gradient_penalty(
    disc: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    labels: torch.Tensor | None,
    gen: torch.Generator,
) -> torch.Tensor:
    """WGAN-GP: E[(|grad D(x_hat)| - 1)^2] at x_hat = eps x + (1 - eps) G(z), eps ~ U(0, 1)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, generator=gen).to(real.device)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    norm = input_grad_sq(disc(x_hat, labels), x_hat).add(1e-12).sqrt()
    return (norm - 1).pow(2).mean()


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean over pairs i < j of the RMS pixel distance between images i and j."""
    flat = x.flatten(1).float()
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    n = flat.shape[0]
    return float(d.sum() / max(1, n * (n - 1)))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between latent vectors (Shoemake 1985; White 2016 for GANs)."""
    an, bn = a / a.norm(), b / b.norm()
    omega = torch.acos((an * bn).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    if so.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


# ----- DiffAugment ---------------------------------------------------------------------------
def _per_sample(b: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """(B,) float mask: 1 where a transform applies (probability p)."""
    return (torch.rand(b, generator=gen) < p).float()  # drawn even at p = 1: same RNG stream


def augment(x: torch.Tensor, policy: list[str], p: float, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment (Zhao et al. 2020): differentiable color / translation / cutout.

    Each transform applies to each image with probability p (p = 1: always, as DiffAugment;
    p < 1: ADA-style). All random draws come from `gen` (the same count whatever p is).
    """
    b, c, h, w = x.shape
    dev = x.device
    for name in policy:
        on = _per_sample(b, p, gen)
        if name == "color":
            bright = (torch.rand(b, generator=gen) - 0.5) * on  # + U(-0.5, 0.5), [0, 1] scale
            sat = 1 + (torch.rand(b, generator=gen) * 2 - 1) * on  # x U(0, 2)
            con = 1 + (torch.rand(b, generator=gen) - 0.5) * on  # x U(0.5, 1.5)
            v = lambda t: t.view(b, 1, 1, 1).to(dev)  # noqa: E731
            x = x + 2 * v(bright)  # images are in [-1, 1]: twice the [0, 1] shift
            mean_c = x.mean(1, keepdim=True)
            x = (x - mean_c) * v(sat) + mean_c
            mean_all = x.mean((1, 2, 3), keepdim=True)
            x = (x - mean_all) * v(con) + mean_all
        elif name == "translation":  # shift by up to 1/8 of the size, 0 (mid gray) padded
            s = max(1, h // 8)
            shift = torch.randint(-s, s + 1, (2, b), generator=gen) * on.long()
            pad = F.pad(x, (s, s, s, s))  # (B, C, H + 2s, W + 2s), zeros
            rows = (torch.arange(h).view(1, h) + s - shift[0].view(b, 1)).to(dev)  # (B, H)
            cols = (torch.arange(w).view(1, w) + s - shift[1].view(b, 1)).to(dev)  # (B, W)
            idx = rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * s)
            pad = pad.gather(2, idx)  # (B, C, H, W + 2s)
            x = pad.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
        elif name == "cutout":  # zero a square of half the size at a random centre
            ch, cw = h // 2, w // 2
            top = torch.randint(0, h, (b,), generator=gen).view(b, 1, 1) - ch // 2
            left = torch.randint(0, w, (b,), generator=gen).view(b, 1, 1) - cw // 2
            ys = torch.arange(h).view(1, h, 1)
            xs = torch.arange(w).view(1, 1, w)
            inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (B, H, W)
            mask = 1 - inside.float() * on.view(b, 1, 1)
            x = x * mask.view(b, 1, h, w).to(dev)
    return x


# ----- blocks --------------------------------------------------------------------------------
class Norm2d(nn.Module):
    """Batch norm; class-conditional (gain 1 + embed_g(y), bias embed_b(y)) when num_classes."""

    def __init__(self, channels: int, num_classes: int = 0) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        self.num_classes = num_classes
        if num_classes:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.bn(x)
        if self.num_classes:
            g = 1 + self.gain(y)[:, :, None, None]
            return h * g + self.bias(y)[:, :, None, None]
        return h


class GBlock(nn.Module):
    """SNGAN generator block: BN-ReLU-up-conv3-BN-ReLU-conv3 + up-conv1 shortcut."""

    def __init__(self, cin: int, cout: int, num_classes: int) -> None:
        super().__init__()
        self.n1, self.n2 = Norm2d(cin, num_classes), Norm2d(cout, num_classes)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.sc = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.n1(x, y)), scale_factor=2.0, mode="nearest")
        h = self.c2(F.relu(self.n2(self.c1(h), y)))
        return h + self.sc(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DBlock(nn.Module):
    """SNGAN discriminator block: (ReLU)-conv3-ReLU-conv3-avgpool + conv1-avgpool shortcut."""

    def __init__(self, cin: int, cout: int, down: bool, first: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.sc = nn.Conv2d(cin, cout, 1)
        self.down, self.first = down, first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.c2(F.relu(self.c1(h)))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.first:  # pool before the 1x1 conv (cheaper, as in SNGAN's optimized block)
            s = self.sc(F.avg_pool2d(x, 2) if self.down else x)
        else:
            s = self.sc(x)
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


def _widths(base: int, stages: int) -> list[int]:
    """Channels from the 4x4 level (widest) to full resolution: base * 2^(stages - i), <= 8x."""
    return [base * min(8, 2 ** (stages - i)) for i in range(stages + 1)]


# ----- networks ------------------------------------------------------------------------------
class Generator(nn.Module):
    """z (B, z_dim) [+ label] -> images (B, C, S, S) in [-1, 1] (tanh)."""

    def __init__(
        self,
        arch: str,
        z_dim: int,
        width: int,
        size: int,
        channels: int,
        num_classes: int = 0,
        cond: str = "projection",
    ) -> None:
        super().__init__()
        n = stages_for(size)
        ch = _widths(width, n)
        self.arch, self.z_dim, self.num_classes, self.cond = arch, z_dim, num_classes, cond
        concat = num_classes if cond == "concat" else 0
        cbn = num_classes if cond == "projection" else 0
        self.fc = nn.Linear(z_dim + concat, ch[0] * 16)
        self.ch0 = ch[0]
        if arch == "dcgan":
            self.norm0 = Norm2d(ch[0], cbn)
            self.ups = nn.ModuleList(
                nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1) for i in range(n)
            )
            self.norms = nn.ModuleList(Norm2d(ch[i + 1], cbn) for i in range(n))
        elif arch == "resnet":
            self.blocks = nn.ModuleList(GBlock(ch[i], ch[i + 1], cbn) for i in range(n))
            self.norm_out = Norm2d(ch[-1], cbn)
        else:
            raise unknown_name("gan architecture", arch, ["dcgan", "resnet"])
        self.out = nn.Conv2d(ch[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            raise ImagesynthError("this generator is class-conditional: give class labels")
        if self.num_classes and self.cond == "concat":
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1)
        h = self.fc(z).view(z.shape[0], self.ch0, 4, 4)  # (B, ch0, 4, 4)
        if self.arch == "dcgan":
            h = F.relu(self.norm0(h, y))
            for up, norm in zip(self.ups, self.norms, strict=True):
                h = F.relu(norm(up(h), y))
        else:
            for block in self.blocks:
                h = block(h, y)
            h = F.relu(self.norm_out(h, y))
        return torch.tanh(self.out(h))


class Discriminator(nn.Module):
    """images (B, C, S, S) [+ label] -> logits (B,); phi(x) pooled features for projection.

    Also holds the adaptive-augmentation state as buffers (p, sum of sign(D(real)), count).
    """

    def __init__(
        self,
        arch: str,
        width: int,
        size: int,
        channels: int,
        num_classes: int = 0,
        cond: str = "projection",
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        n = stages_for(size)
        ch = _widths(width, n)[::-1]  # full resolution (narrow) -> 4x4 (wide)
        self.arch, self.num_classes, self.cond = arch, num_classes, cond
        cin = channels + (num_classes if cond == "concat" else 0)
        if arch == "dcgan":
            layers: list[nn.Module] = [nn.Conv2d(cin, ch[0], 3, padding=1)]
            layers += [nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1) for i in range(n)]
            self.convs = nn.ModuleList(layers)
        elif arch == "resnet":
            blocks = [DBlock(cin, ch[0], down=False, first=True)]
            blocks += [DBlock(ch[i], ch[i + 1], down=True, first=False) for i in range(n)]
            self.blocks = nn.ModuleList(blocks)
        else:
            raise unknown_name("gan architecture", arch, ["dcgan", "resnet"])
        self.fc = nn.Linear(ch[-1], 1)
        if num_classes and cond == "projection":
            self.embed = nn.Embedding(num_classes, ch[-1])
            nn.init.normal_(self.embed.weight, std=0.02)
        if spectral_norm:  # in place: weight becomes a parametrization of weight_orig
            for mod in list(self.modules()):
                if isinstance(mod, nn.Conv2d | nn.Linear | nn.Embedding):
                    nn.utils.parametrizations.spectral_norm(mod)
        self.register_buffer("ada_p", torch.zeros(()))
        self.register_buffer("ada_sum", torch.zeros(()))
        self.register_buffer("ada_count", torch.zeros(()))

    def features(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """phi(x): (B, C_last) sum-pooled final features."""
        if self.num_classes and self.cond == "concat":
            b, _, h, w = x.shape
            maps = F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, maps.expand(b, self.num_classes, h, w)], 1)
        if self.arch == "dcgan":
            h = x
            for conv in self.convs:
                h = F.leaky_relu(conv(h), 0.2)
        else:
            h = x
            for block in self.blocks:
                h = block(h)
            h = F.relu(h)
        return h.sum((2, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            raise ImagesynthError("this discriminator is class-conditional: give class labels")
        phi = self.features(x, y)  # (B, C)
        out = self.fc(phi).squeeze(1)  # (B,)
        if self.num_classes and self.cond == "projection":
            out = out + (self.embed(y) * phi).sum(1)  # <embed(y), phi(x)>
        return out


def build_generator(opts: GanOptions, data: DataInfo) -> Generator:
    p = PRESETS[opts.preset]
    return Generator(
        p["arch"], p["z_dim"], p["g_width"], data.size, data.channels, data.num_classes, opts.cond
    )


def build_discriminator(opts: GanOptions, data: DataInfo) -> Discriminator:
    p = PRESETS[opts.preset]
    return Discriminator(
        p["arch"], p["d_width"], data.size, data.channels, data.num_classes, opts.cond,
        opts.spectral_norm,
    )  # fmt: skip


@torch.no_grad()
def standing_stats(
    gen_net: Generator, num_classes: int, batches: int = 4, batch: int = 128, seed: int = 4321
) -> Generator:
    """A copy of `gen_net` whose batch-norm statistics are re-estimated on random z.

    The EMA generator averages weights but not the batch statistics that go with them; BigGAN
    re-estimates them ("standing statistics") before sampling.
    """
    g = copy.deepcopy(_unwrap(gen_net))
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return g.eval()
    dev = next(g.parameters()).device
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    g.train()
    gen = torch.Generator().manual_seed(seed)
    for i in range(batches):
        z = torch.randn(batch, g.z_dim, generator=gen).to(dev)
        y = (torch.arange(batch) + i * batch) % num_classes if num_classes else None
        g(z, None if y is None else y.to(dev))
    for m in bns:
        m.momentum = 0.1
    return g.eval()


def latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """(len(seeds), z_dim) standard normal, row i from seed i (independent of batch size)."""
    from ..seeding import randn_per_sample

    return randn_per_sample((len(seeds), z_dim), seeds)


@torch.no_grad()
def generate(
    g: Generator,
    z: torch.Tensor,
    labels: torch.Tensor | None,
    truncation: float = 1.0,
) -> torch.Tensor:
    """Images (N, C, S, S) in [-1, 1] from latents z (N, z_dim), in chunks; g in eval mode."""
    dev = next(g.parameters()).device
    out = []
    for s in range(0, z.shape[0], SAMPLE_BATCH):
        zz = z[s : s + SAMPLE_BATCH].to(dev) * truncation
        y = None if labels is None else labels[s : s + SAMPLE_BATCH].to(dev)
        out.append(g(zz, y).float().cpu())
    return torch.cat(out)


def _unwrap(net: nn.Module) -> Any:
    return getattr(net, "module", net)


# ----- family --------------------------------------------------------------------------------
class GanFamily(Family):
    """Two phases per step: D (with augmentation, GP / lazy R1, ADA update), then G."""

    name = "gan"
    ema_nets = ("G",)

    def __init__(self, opts: GanOptions, data: DataInfo) -> None:
        super().__init__()
        self.opts, self.data = opts.validate(), data
        stages_for(data.size)
        self.preset = dict(PRESETS[opts.preset])
        self.policy = parse_policy(opts.aug_policy)
        self.nets["G"] = build_generator(opts, data)
        self.nets["D"] = build_discriminator(opts, data)
        self._d_grad_sq: dict[int, torch.Tensor] = {}
        for p in self.nets["D"].parameters():
            p.register_post_accumulate_grad_hook(self._record_grad)
        self.real_diversity: float | None = None
        self._div_z = latents(
            [DIVERSITY_SEED + i for i in range(max(opts.diversity_n, 2))], self.preset["z_dim"]
        )

    def _record_grad(self, p: torch.Tensor) -> None:
        if p.grad is not None:
            self._d_grad_sq[id(p)] = p.grad.detach().float().pow(2).sum()

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "preset": self.preset,
            "data": dataclasses.asdict(self.data),
        }

    def prepare(self, data: Any, device: torch.device) -> None:
        if self.data.num_classes and data.labels is not None and bool((data.labels < 0).any()):
            raise ImagesynthError(
                "some training images have no class label; use --cond none for this data"
            )
        if self.opts.diversity_n:
            n = min(len(data), 64)
            x = data.images[:n].float().div(127.5).sub(1)
            self.real_diversity = mean_pairwise_distance(x)

    def phases(self) -> list[Phase]:
        betas = self.opts.resolved_betas()
        return [
            Phase("D", ["D"], self.d_loss, lr_scale=self.opts.d_lr_scale, betas=betas),
            Phase(
                "G",
                ["G"],
                self.g_loss,
                every=self.opts.resolved_g_every(),
                lr_scale=self.opts.g_lr_scale,
                betas=betas,
            ),
        ]

    # ----- training phases -----------------------------------------------------------------
    def _labels(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return batch.get("labels") if self.data.num_classes else None

    def _aug(self, x: torch.Tensor, disc: nn.Module, gen: torch.Generator) -> torch.Tensor:
        if self.opts.augment == "none" or not self.policy:
            return x
        p = 1.0 if self.opts.augment == "diffaugment" else float(_unwrap(disc).ada_p)
        return augment(x, self.policy, p, gen)

    def d_loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        opts = self.opts
        x, y = batch["images"], self._labels(batch)
        b, dev = x.shape[0], x.device
        G, D = nets["G"], nets["D"]
        z = torch.randn(b, self.preset["z_dim"], generator=gen).to(dev)
        with torch.no_grad():
            fake = G(z, y)
        step = int(batch.get("step", 0))
        do_r1 = opts.r1_gamma > 0 and step % opts.r1_every == 0
        xr = self._aug(x, D, gen)
        if do_r1:
            xr = xr.detach().requires_grad_(True)
        xf = self._aug(fake, D, gen)
        yy = None if y is None else torch.cat([y, y])
        logits = D(torch.cat([xr, xf]), yy)  # one pass over reals and fakes
        real, fake_l = logits[:b], logits[b:]
        loss = d_loss_fn(opts.loss, real, fake_l)
        logs = {
            "loss": float(loss.detach()),
            "real_logit": float(real.detach().mean()),
            "fake_logit": float(fake_l.detach().mean()),
            "acc_real": float((real.detach() > 0).float().mean()),
            "acc_fake": float((fake_l.detach() < 0).float().mean()),
        }
        if opts.loss == "wgan-gp":
            gp = gradient_penalty(D, xr, xf, y, gen)
            loss = loss + opts.gp_weight * gp
            logs["gp"] = float(gp.detach())
        if do_r1:
            r1 = r1_penalty(real, xr, opts.r1_gamma) * opts.r1_every
            loss = loss + r1
            logs["r1"] = float(r1.detach())  # lazy (x k): its mean over a window = gamma/2 E|g|^2
        logs.update(self._ada_update(D, real.detach(), b))
        return loss, logs

    @torch.no_grad()
    def _ada_update(self, disc: nn.Module, real: torch.Tensor, b: int) -> dict[str, float]:
        """Accumulate sign(D(real)); every ada_interval steps move p toward r_t = target."""
        d = _unwrap(disc)
        d.ada_sum += torch.sign(real).sum().to(d.ada_sum.dtype)
        d.ada_count += b
        logs = {"rt": float(torch.sign(real).mean())}
        if self.opts.augment == "ada" and d.ada_count >= b * self.opts.ada_interval:
            rt = d.ada_sum / d.ada_count
            step = float(d.ada_count) / (self.opts.ada_kimg * 1000)
            d.ada_p.copy_((d.ada_p + torch.sign(rt - self.opts.ada_target) * step).clamp(0, 1))
            d.ada_sum.zero_()
            d.ada_count.zero_()
        elif self.opts.augment != "ada" and d.ada_count >= b * self.opts.ada_interval:
            d.ada_sum.zero_()
            d.ada_count.zero_()
        logs["ada_p"] = float(d.ada_p)
        return logs

    def g_loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch["images"], self._labels(batch)
        b, dev = x.shape[0], x.device
        G, D = nets["G"], nets["D"]
        z = torch.randn(b, self.preset["z_dim"], generator=gen).to(dev)
        for p in D.parameters():  # the G step must not leave gradients in D
            p.requires_grad_(False)
        try:
            logits = D(self._aug(G(z, y), D, gen), y)
        finally:
            for p in D.parameters():
                p.requires_grad_(True)
        loss = g_loss_fn(self.opts.loss, logits)
        logs = {"loss": float(loss.detach())}
        if self._d_grad_sq:
            logs["d_grad_norm"] = float(torch.stack(list(self._d_grad_sq.values())).sum().sqrt())
            self._d_grad_sq.clear()
        if self.opts.diversity_n:
            logs.update(self._diversity(G, dev))
        return loss, logs

    @torch.no_grad()
    def _diversity(self, G: nn.Module, dev: torch.device) -> dict[str, float]:
        g = _unwrap(G)
        was_training = g.training
        g.eval()
        k = self.data.num_classes
        n = self.opts.diversity_n
        y = (torch.arange(n) % k).to(dev) if k else None
        try:
            x = g(self._div_z[:n].to(dev), y)
        finally:
            g.train(was_training)
        div = mean_pairwise_distance(x)
        out = {"diversity": div}
        if self.real_diversity:
            out["diversity_ratio"] = div / self.real_diversity
        return out

    # ----- sampling and saving --------------------------------------------------------------
    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        k = self.data.num_classes
        g = standing_stats(nets["G"], k)
        z = latents([seed + i for i in range(n)], self.preset["z_dim"])
        labels = torch.arange(n) % k if k else None
        return generate(g, z, labels, self.opts.truncation)

    def sample_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"sampler": "gan", "truncation": self.opts.truncation}
        if self.data.num_classes:
            params["class_labels"] = "i % num_classes"
        return params

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        from ..io.model_dir import Component, save_model

        g = standing_stats(nets["G"], self.data.num_classes)
        for name, t in g.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ImagesynthError(f"generator weight {name} is not finite; not saving")
        g_cfg = {
            "class": "Generator",
            "arch": self.preset["arch"],
            "z_dim": self.preset["z_dim"],
            "width": self.preset["g_width"],
            "size": self.data.size,
            "channels": self.data.channels,
            "num_classes": self.data.num_classes,
            "cond": self.opts.cond,
        }
        return save_model(
            path,
            {"generator": Component(g_cfg, g.state_dict())},
            family="gan",
            config=self.config(),
            dataset=record.get("dataset"),
            recipe=record.get("recipe"),
            metrics=record.get("metrics"),
        )


def generator_from_config(cfg: dict[str, Any]) -> Generator:
    """The Generator described by a saved `generator/config.json`."""
    return Generator(
        cfg["arch"], cfg["z_dim"], cfg["width"], cfg["size"], cfg["channels"],
        cfg.get("num_classes", 0), cfg.get("cond", "projection"),
    )  # fmt: skip
