"""Super-resolution and restoration: a residual CNN trained on synthetic degradations.

One network family serves three tasks. `upscale` maps a low-resolution image to `scale`x its
size (an EDSR-style body, Lim et al. 2017, with a sub-pixel convolution output, Shi et al.
2016, ESPCN) and predicts the residual over bicubic upsampling, so an untrained network is
exactly bicubic. `deblur` and `denoise` are the same network at scale 1 predicting the
residual over its input (the seeds' "CNN deconvolution", Xu et al. 2014).

Training pairs are made on the fly from any image dataset: the high-resolution batch is
degraded inside the loss with the step's generator (Gaussian blur, downscale, Gaussian noise,
JPEG via Pillow), so any folder of images is training data. Loss: L1, optionally plus a
perceptual term on the offline random-feature network (classical/features.py) and a patch
adversarial term (hinge), as in SRGAN / ESRGAN's fine-tune; `init_from` starts from a saved
model of the same network (fine-tuning on other data or losses).

The deblur task's blur model is explicit: a Gaussian point-spread function with sigma drawn
uniformly from `blur_sigma` (px, reflect padding), then with probability `noise_prob`
Gaussian noise with std drawn uniformly from `noise_sigma` (on the [0, 1] scale). The model
is blind: it never sees sigma.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImagesynthError, unknown_name
from ..training.family import DataInfo, Family, Phase

TASKS = ("upscale", "deblur", "denoise")
# width x residual blocks; parameters for 3 channels at x2
PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"width": 32, "blocks": 4},  # ~0.09 M params, 0.2 MB fp16
    "small": {"width": 64, "blocks": 8},  # ~0.67 M params
    "base": {"width": 96, "blocks": 16},  # ~2.9 M params
}


@dataclass
class SuperResOptions:
    """Family options (saved in the model's config.json)."""

    task: str = "upscale"  # upscale | deblur | denoise
    scale: int = 2  # 2 | 4 for upscale; 1 for deblur / denoise
    preset: str = "tiny"
    # degradations applied to each training image (probability, range)
    blur_prob: float = 0.0  # Gaussian blur before downscaling (always on for deblur)
    blur_sigma: tuple[float, float] = (0.3, 2.0)  # px of the high-resolution image
    noise_prob: float = 0.0  # additive Gaussian noise (always on for denoise)
    noise_sigma: tuple[float, float] = (0.0, 0.04)  # on the [0, 1] scale
    jpeg_prob: float = 0.0  # JPEG round trip through Pillow
    jpeg_quality: tuple[int, int] = (40, 95)
    perceptual_weight: float = 0.0  # random-feature perceptual loss (0 = off)
    adv_weight: float = 0.0  # patch-adversarial fine-tune (0 = off)
    adv_start: int = 0  # steps of plain L1 before the adversarial term
    extra_data: str = ""  # also train on these datasets, comma-separated (e.g. "textures")
    init_from: str = ""  # fine-tune: start from this upscaler / restorer model dir's weights
    extra_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> SuperResOptions:
        if self.task not in TASKS:
            raise unknown_name("super-resolution task", self.task, list(TASKS))
        if self.preset not in PRESETS:
            raise unknown_name("super-resolution preset", self.preset, list(PRESETS))
        if self.task == "upscale" and self.scale not in (2, 3, 4):
            raise ImagesynthError(f"upscale scale must be 2, 3 or 4, got {self.scale!r}")
        if self.task != "upscale" and self.scale != 1:
            raise ImagesynthError(f"task {self.task!r} works at scale 1, got scale={self.scale}")
        for name in ("blur_prob", "noise_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ImagesynthError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("blur_sigma", "noise_sigma", "jpeg_quality"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ImagesynthError(f"{name} must be a range (lo, hi) with 0 <= lo <= hi")
        if self.perceptual_weight < 0 or self.adv_weight < 0 or self.adv_start < 0:
            raise ImagesynthError("perceptual_weight, adv_weight and adv_start must be >= 0")
        self.blur_sigma = tuple(self.blur_sigma)
        self.noise_sigma = tuple(self.noise_sigma)
        self.jpeg_quality = tuple(self.jpeg_quality)
        return self


# ----- degradations ----------------------------------------------------------------------
def gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 2r+1) normalised Gaussian kernels, one per sigma."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own sigma (reflect padding, separable)."""
    b, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float32).expand(b).clone()
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, (min(h, w) - 1))
    k = gaussian_kernel1d(sigma, radius).to(x)  # (B, K)
    k = k.repeat_interleave(c, 0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def downscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Antialiased bicubic downscale by an integer factor (the standard SR benchmark LR)."""
    if scale == 1:
        return x
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(h // scale, w // scale), mode="bicubic", antialias=True)


def upscale_bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    if scale == 1:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def jpeg_roundtrip(x: torch.Tensor, quality: list[int]) -> torch.Tensor:
    """Encode and decode each image of (B, C, H, W) in [-1, 1] as JPEG at its quality."""
    from PIL import Image

    out = []
    for img, q in zip(x, quality, strict=True):
        arr = ((img.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
        arr = arr.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        with Image.open(buf) as im:
            back = torch.from_numpy(__import__("numpy").asarray(im).copy())
        if back.ndim == 2:
            back = back[..., None]
        out.append(back.permute(2, 0, 1).float().div(127.5).sub(1))
    return torch.stack(out).to(x)


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def degrade(x: torch.Tensor, opts: SuperResOptions, gen: torch.Generator) -> torch.Tensor:
    """The degraded input for high-resolution (B, C, H, W) `x` in [-1, 1]: blur, downscale,
    noise, JPEG, each drawn per image from `gen` (the trainer's per-step generator)."""
    b = x.shape[0]
    y = x
    blur_p = 1.0 if opts.task == "deblur" else opts.blur_prob
    noise_p = 1.0 if opts.task == "denoise" else opts.noise_prob
    if blur_p > 0:
        on = torch.rand(b, generator=gen) < blur_p
        sigma = _uniform(gen, b, *opts.blur_sigma)
        if on.any():
            blurred = gaussian_blur(y, torch.where(on, sigma, torch.full_like(sigma, 1e-3)))
            y = torch.where(on.to(y.device)[:, None, None, None], blurred, y)
    y = downscale(y, opts.scale)
    if noise_p > 0:
        on = (torch.rand(b, generator=gen) < noise_p).float()
        sigma = _uniform(gen, b, *opts.noise_sigma) * on * 2.0  # [0, 1] scale -> [-1, 1]
        noise = torch.randn(y.shape, generator=gen).to(y)
        y = y + sigma.to(y)[:, None, None, None] * noise
    if opts.jpeg_prob > 0:
        on = torch.rand(b, generator=gen) < opts.jpeg_prob
        q = torch.randint(opts.jpeg_quality[0], opts.jpeg_quality[1] + 1, (b,), generator=gen)
        if on.any():
            idx = on.nonzero().flatten()
            y = y.clone()
            y[idx.to(y.device)] = jpeg_roundtrip(y[idx.to(y.device)], q[idx].tolist())
    return y.clamp(-1, 1)


# ----- network ---------------------------------------------------------------------------
class ResBlock(nn.Module):
    """conv-ReLU-conv with an identity skip, no normalisation (EDSR)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResidualSR(nn.Module):
    """Input (B, C, h, w) in [-1, 1] -> (B, C, h*scale, w*scale): bicubic + learned residual."""

    def __init__(self, channels: int = 3, width: int = 32, blocks: int = 4, scale: int = 2):
        super().__init__()
        self.channels, self.width, self.blocks, self.scale = channels, width, blocks, scale
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
        self.body_out = nn.Conv2d(width, width, 3, padding=1)
        self.tail = nn.Conv2d(width, channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        nn.init.zeros_(self.tail.weight)  # untrained network = bicubic (or identity)
        nn.init.zeros_(self.tail.bias)

    @property
    def field_radius(self) -> int:
        """Input pixels each side that influence one output pixel (3x3 convs + bicubic)."""
        return 2 * self.blocks + 3 + 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        f = f + self.body_out(self.body(f))
        return upscale_bicubic(x, self.scale) + self.shuffle(self.tail(f))


def build_network(config: dict[str, Any]) -> ResidualSR:
    """The network from a saved config.json's `network` entry."""
    try:
        return ResidualSR(**config)
    except TypeError as exc:
        raise ImagesynthError(f"bad super-resolution network config {config}: {exc}") from None


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


# ----- the family --------------------------------------------------------------------------
class SuperResFamily(Family):
    """Trains a ResidualSR on degradations made on the fly (see module docstring)."""

    name = "upscaler"
    ema_nets = ("net",)
    default_task = "upscale"

    def __init__(self, opts: SuperResOptions, data: DataInfo) -> None:
        super().__init__()
        self.opts, self.data = opts.validate(), data
        if data.size % max(opts.scale, 1) or data.size // max(opts.scale, 1) < 8:
            raise ImagesynthError(
                f"training size {data.size} must be a multiple of scale {opts.scale} with "
                f"low-resolution side >= 8 px"
            )
        preset = PRESETS[opts.preset]
        self.net_cfg = {"channels": data.channels, **preset, "scale": opts.scale}
        self.nets["net"] = ResidualSR(**self.net_cfg)
        if opts.init_from:
            self._init_from(opts.init_from)
        if opts.adv_weight > 0:
            from .autoencoder import PatchDiscriminator

            self.nets["disc"] = PatchDiscriminator(data.channels)
        self._features: nn.Module | None = None
        self.fixed: torch.Tensor | None = None
        self.extra_desc: list[dict[str, Any]] = []

    def _init_from(self, path: str) -> None:
        """Start from a saved model's weights; its network must match this one's."""
        net, cfg, _ = load_superres(path)
        if cfg["network"] != self.net_cfg or cfg["task"] != self.opts.task:
            raise ImagesynthError(
                f"init_from {path}: its network {cfg['network']} (task {cfg['task']!r}) does not "
                f"match this run's {self.net_cfg} (task {self.opts.task!r})"
            )
        self.nets["net"].load_state_dict(net.state_dict())

    def config(self) -> dict[str, Any]:
        return {
            "task": self.opts.task,
            "scale": self.opts.scale,
            "network": self.net_cfg,
            "options": dataclasses.asdict(self.opts),
            "data": dataclasses.asdict(self.data),
        }

    def prepare(self, data: Any, device: torch.device) -> None:
        """Append the `extra_data` datasets to the training tensors; keep a monitoring set."""
        if self.opts.extra_data:
            from ..data import get_dataset
            from ..training.data import load_tensor_data

            parts = [data.images]
            for spec in [s.strip() for s in self.opts.extra_data.split(",") if s.strip()]:
                options = {"size": self.data.size, **self.opts.extra_options}
                ds = get_dataset(spec, **options)
                if ds.channels != self.data.channels:
                    raise ImagesynthError(
                        f"extra_data {spec!r} has {ds.channels} channels, the data has "
                        f"{self.data.channels}"
                    )
                parts.append(load_tensor_data(ds, progress=False).images)
                self.extra_desc.append(ds.describe())
            data.images = torch.cat(parts)
            if data.labels is not None:
                data.labels = None
        n = min(len(data), 64)
        gen = torch.Generator().manual_seed(0)
        self.fixed = data.images[torch.randperm(len(data), generator=gen)[:n]].clone()

    def phases(self) -> list[Phase]:
        phases = [Phase("sr", ["net"], self.loss)]
        if self.opts.adv_weight > 0:
            phases.append(Phase("disc", ["disc"], self.disc_loss, betas=(0.5, 0.9)))
        return phases

    def _feature_net(self, device: torch.device) -> nn.Module:
        if self._features is None:
            from ..classical.features import RandomFeatures

            self._features = RandomFeatures(self.data.channels).to(device)
        return self._features

    def _adv_on(self, batch: dict[str, Any]) -> bool:
        return int(batch.get("step", self.opts.adv_start)) >= self.opts.adv_start

    def loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        hr = batch["images"]
        lr = degrade(hr, self.opts, gen)
        sr = nets["net"](lr)
        l1 = (sr - hr).abs().mean()
        loss = l1
        logs = {"l1": float(l1.detach())}
        with torch.no_grad():
            base = upscale_bicubic(lr, self.opts.scale).clamp(-1, 1)
            logs["psnr"] = float(psnr(sr.clamp(-1, 1), hr).mean())
            logs["psnr_gain"] = logs["psnr"] - float(psnr(base, hr).mean())
        if self.opts.perceptual_weight > 0:
            feats = self._feature_net(hr.device)
            layers = feats.names[:3]  # the three finest pyramid levels
            fa = feats(sr, layers)
            with torch.no_grad():
                fb = feats(hr, layers)
            perc = sum(F.mse_loss(fa[k], fb[k]) for k in layers) / len(layers)
            loss = loss + self.opts.perceptual_weight * perc
            logs["perceptual"] = float(perc.detach())
        if "disc" in nets and self._adv_on(batch):
            disc = nets["disc"]
            for p in disc.parameters():
                p.requires_grad_(False)
            g_adv = -disc(sr).mean()
            for p in disc.parameters():
                p.requires_grad_(True)
            loss = loss + self.opts.adv_weight * g_adv
            logs["g_adv"] = float(g_adv.detach())
        return loss, logs

    def disc_loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        hr = batch["images"]
        with torch.no_grad():
            sr = nets["net"](degrade(hr, self.opts, gen))
        loss = F.relu(1 - nets["disc"](hr)).mean() + F.relu(1 + nets["disc"](sr)).mean()
        if not self._adv_on(batch):
            loss = loss * 0.0
        return loss, {"d_loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        """Rows of (baseline, network output, target) for fixed training images."""
        if self.fixed is None:
            raise ImagesynthError("the super-resolution family has no images yet")
        k = max(1, min(n // 3, len(self.fixed)))
        net = nets["net"]
        dev = next(net.parameters()).device
        hr = self.fixed[:k].to(dev, torch.float32).div(127.5).sub(1)
        lr = degrade(hr, self.opts, torch.Generator().manual_seed(seed))
        sr = net(lr).clamp(-1, 1)
        base = upscale_bicubic(lr, self.opts.scale).clamp(-1, 1)
        out = torch.cat([base, sr, hr])
        if out.shape[0] < n:  # the trainer's eval asks for exactly n images
            reps = math.ceil(n / out.shape[0])
            out = out.repeat(reps, 1, 1, 1)
        return out[:n].cpu()

    def sample_params(self) -> dict[str, Any]:
        return {"grid": "rows: degraded input (bicubic), network output, target"}

    @torch.no_grad()
    def measure(self, net: nn.Module) -> dict[str, float]:
        """PSNR of network and baseline on the monitoring images (training data)."""
        assert self.fixed is not None
        dev = next(net.parameters()).device
        hr = self.fixed.to(dev, torch.float32).div(127.5).sub(1)
        lr = degrade(hr, self.opts, torch.Generator().manual_seed(0))
        sr = net(lr).clamp(-1, 1)
        base = upscale_bicubic(lr, self.opts.scale).clamp(-1, 1)
        p_net, p_base = float(psnr(sr, hr).mean()), float(psnr(base, hr).mean())
        return {
            "train_psnr_db": p_net,
            "train_baseline_psnr_db": p_base,
            "train_psnr_gain_db": p_net - p_base,
        }

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        from ..io.model_dir import Component, save_model

        net = getattr(nets["net"], "module", nets["net"])
        stats = self.measure(net) if self.fixed is not None else {}
        dataset = record.get("dataset")
        if self.extra_desc:
            dataset = {"main": dataset, "extra": self.extra_desc}
        return save_model(
            path,
            Component(self.config(), net.state_dict()),
            family=self.name,
            dataset=dataset,
            recipe=record.get("recipe"),
            metrics={**(record.get("metrics") or {}), **stats},
        )


class RestorerFamily(SuperResFamily):
    """The same network at scale 1 for deblurring or denoising."""

    name = "restorer"


@dataclass
class RestorerOptions(SuperResOptions):
    task: str = "deblur"
    scale: int = 1
    noise_prob: float = 0.5  # deblur: mild noise on half the images, as in real blur
    noise_sigma: tuple[float, float] = (0.0, 0.01)


def task_defaults(task: str) -> dict[str, Any]:
    """Degradation defaults per restoration task."""
    if task == "denoise":
        return {"noise_sigma": (0.01, 0.1), "noise_prob": 1.0}
    return {}


def load_superres(
    path: str | Path, device: str | torch.device = "cpu", allow_pickle: bool = False
) -> tuple[ResidualSR, dict[str, Any], dict[str, Any]]:
    """(network, config, imagesynth.json record) from an upscaler / restorer model dir."""
    from ..io.model_dir import load_model

    files = load_model(path, allow_pickle=allow_pickle)
    if files.family not in ("upscaler", "restorer"):
        raise ImagesynthError(f"{path} holds a {files.family!r} model, not an upscaler or restorer")
    cfg = files.config
    net = build_network(cfg["network"])
    state = files.state_dict()
    missing = sorted(set(net.state_dict()) - set(state))
    if missing:
        raise ImagesynthError(f"{path}: weights are missing keys {missing[:6]}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.to(device).eval().requires_grad_(False), cfg, files.info
