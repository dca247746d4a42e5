"""Convolutional VAE (Kingma & Welling 2014), beta-VAE (Higgins et al. 2017), conditional VAE.

The seeds' objective: maximise L = E_q(z|x)[log p(x|z)] - KL[q(z|x) || p(z)], with
q(z|x) = N(mu(x), diag sigma(x)^2) (reparameterised) and p(z) = N(0, I). We minimise
-log p(x|z) + beta KL per image, divided by the number of pixel values (a per-value scale
that does not move the optimum). beta = 1 is the ELBO; beta != 1 is the beta-VAE.

-log p(x|z) per image, pixels in [-1, 1]:
- `l2`: Gaussian with fixed std `sigma`: sum (x - x_hat)^2 / (2 sigma^2) (+ const), i.e.
  the seeds' pixel L2 scaled by 1 / (2 sigma^2); smaller sigma = sharper, less regular.
- `l1`: Laplace with scale `sigma`: sum |x - x_hat| / sigma.
- `bce`: Bernoulli on (x + 1) / 2: the decoder outputs logits.
Optional perceptual term (`perceptual_weight` > 0): the seeds' sum_l |phi_l(x) - phi_l(y)|^2
with phi the conv blocks of the evaluation suite's domain extractor (`domain:NAME`, unit-
normalised, as `metrics.lpips.DomainPerceptual`), weighted per image against the NLL.

Conditional VAE (Sohn et al. 2015): one-hot labels as constant maps to the encoder and
concatenated to z for the decoder; with `label_every_block` (the default) every decoder
stage also gets a learned per-class scale and shift of its features (FiLM, Perez et al.
2018), so the decoder can draw the class from y at every resolution instead of from z (with
the label at the input only, the class leaks into z and samples follow y weakly).
Training grids show samples (top half) and pairs of held images / reconstructions (bottom
half); evaluation uses samples only.
"""

from __future__ import annotations

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

# Presets are data: base width (doubling per 2x down to 4x4, at most 8x) and latent size.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 16, "latent_dim": 16},  # 0.19 M at 16 px, 0.69 M at 32 px (1 channel)
    "small": {"width": 32, "latent_dim": 32},  # 0.76 M at 16 px, 2.7 M at 32 px
    "base": {"width": 64, "latent_dim": 128},  # 3.8 M at 16 px, 12.5 M at 32 px: for GPUs
}
RECONSTRUCTION = ("l2", "l1", "bce")
SAMPLE_BATCH = 256


@dataclass
class VaeOptions:
    """Family options (saved in the model's config.json)."""

    preset: str = "tiny"
    latent_dim: int | None = None  # None: the preset's
    beta: float = 1.0  # KL weight: 1 = the ELBO, other values = beta-VAE
    reconstruction: str = "l2"  # l2 | l1 | bce
    sigma: float = 0.2  # std (l2) or scale (l1) of p(x|z) in [-1, 1] pixel units
    perceptual_weight: float = 0.0  # 0 = off
    perceptual_extractor: str = ""  # domain:NAME; "" = domain:<dataset>
    truncation: float = 1.0  # z scale of the training grids' samples
    label_every_block: bool = True  # class-conditional: FiLM of every decoder stage by y

    def validate(self) -> VaeOptions:
        if self.preset not in PRESETS:
            raise unknown_name("vae preset", self.preset, list(PRESETS))
        if self.reconstruction not in RECONSTRUCTION:
            raise unknown_name("vae reconstruction loss", self.reconstruction, list(RECONSTRUCTION))
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float):
            raise ImagesynthError(f"beta must be a number >= 0, got {self.beta!r}")
        if self.beta < 0 or not math.isfinite(self.beta):
            raise ImagesynthError(f"beta must be >= 0 (KL weight of the beta-VAE), got {self.beta}")
        if not self.sigma > 0:
            raise ImagesynthError(f"sigma must be > 0, got {self.sigma}")
        if self.latent_dim is not None and not (
            isinstance(self.latent_dim, int) and 1 <= self.latent_dim <= 4096
        ):
            raise ImagesynthError(f"latent_dim must be in 1..4096, got {self.latent_dim!r}")
        if self.perceptual_weight < 0:
            raise ImagesynthError(f"perceptual_weight must be >= 0, got {self.perceptual_weight}")
        if self.perceptual_extractor and not self.perceptual_extractor.startswith("domain:"):
            raise ImagesynthError(
                f"perceptual_extractor must be domain:NAME, got {self.perceptual_extractor!r}"
            )
        from .gan import check_truncation

        check_truncation(self.truncation)
        if not isinstance(self.label_every_block, bool):
            raise ImagesynthError(
                f"label_every_block must be true or false, got {self.label_every_block!r}"
            )
        return self

    @property
    def z_dim(self) -> int:
        return self.latent_dim or PRESETS[self.preset]["latent_dim"]


# ----- helpers -------------------------------------------------------------------------------
def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mu, exp(logvar)) || N(0, I)] per sample (B,), summed over latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def nll(out: torch.Tensor, x: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    """-log p(x | z) per image (B,), up to a constant; `out` is the decoder output."""
    if kind == "l2":
        return (out - x).pow(2).flatten(1).sum(1) / (2 * sigma**2)
    if kind == "l1":
        return (out - x).abs().flatten(1).sum(1) / sigma
    if kind == "bce":
        target = (x + 1) / 2
        return F.binary_cross_entropy_with_logits(out, target, reduction="none").flatten(1).sum(1)
    raise unknown_name("vae reconstruction loss", kind, list(RECONSTRUCTION))


def to_image(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Decoder output -> image in [-1, 1] (sigmoid for bce logits, clamp otherwise)."""
    if kind == "bce":
        return torch.sigmoid(out) * 2 - 1
    return out.clamp(-1, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


# ----- network -------------------------------------------------------------------------------
class ConvVAE(nn.Module):
    """Encoder x [+ label maps] -> (mu, logvar); decoder z [+ one-hot] -> image logits/values."""

    def __init__(
        self,
        size: int,
        channels: int,
        width: int,
        z_dim: int,
        num_classes: int = 0,
        label_every_block: bool = False,
    ) -> None:
        super().__init__()
        from .gan import stages_for

        n = stages_for(size)
        ch = [width * min(8, 2**i) for i in range(n + 1)]  # full res (narrow) -> 4x4 (wide)
        self.size, self.channels, self.z_dim, self.num_classes = size, channels, z_dim, num_classes
        enc: list[nn.Module] = [nn.Conv2d(channels + num_classes, ch[0], 3, padding=1), nn.SiLU()]
        for i in range(n):
            enc += [nn.Conv2d(ch[i], ch[i + 1], 4, 2, 1), nn.SiLU()]
            enc += [nn.Conv2d(ch[i + 1], ch[i + 1], 3, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc)
        self.to_stats = nn.Linear(ch[-1] * 16, 2 * z_dim)
        self.ch_top = ch[-1]
        self.from_z = nn.Linear(z_dim + num_classes, ch[-1] * 16)
        dec: list[nn.Module] = []
        for i in range(n, 0, -1):
            dec += [nn.SiLU(), nn.ConvTranspose2d(ch[i], ch[i - 1], 4, 2, 1)]
            dec += [nn.SiLU(), nn.Conv2d(ch[i - 1], ch[i - 1], 3, padding=1)]
        dec += [nn.SiLU(), nn.Conv2d(ch[0], channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)  # stage i: modules 4i..4i+3, then the output conv
        self.stages = n
        self.film: nn.ModuleList | None = None
        if num_classes and label_every_block:  # per-class (scale, shift) of each stage's input
            self.film = nn.ModuleList(nn.Embedding(num_classes, 2 * ch[i]) for i in range(n, 0, -1))
            for emb in self.film:
                nn.init.zeros_(emb.weight)  # starts as the plain decoder

    def _check_labels(self, y: torch.Tensor | None) -> None:
        if self.num_classes and y is None:
            raise ImagesynthError("this VAE is class-conditional: give class labels")

    def encode(
        self, x: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) -> mu, logvar (B, z_dim)."""
        self._check_labels(y)
        if self.num_classes:
            b, _, h, w = x.shape
            maps = F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None]
            x = torch.cat([x, maps.expand(b, self.num_classes, h, w)], 1)
        stats = self.to_stats(self.encoder(x).flatten(1))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-30, 20)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, z_dim) -> decoder output (B, C, S, S) (values, or logits for bce)."""
        self._check_labels(y)
        if self.num_classes:
            z = torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], 1)
        h = self.from_z(z).view(z.shape[0], self.ch_top, 4, 4)  # (B, C_top, 4, 4)
        if self.film is None:
            return self.decoder(h)
        assert y is not None
        for i, emb in enumerate(self.film):
            scale, shift = emb(y)[:, :, None, None].chunk(2, dim=1)  # (B, C_i, 1, 1) each
            h = h * (1 + scale) + shift
            for m in self.decoder[4 * i : 4 * i + 4]:
                h = m(h)
        for m in self.decoder[4 * self.stages :]:
            h = m(h)
        return h

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        z = mu + (0.5 * logvar).exp() * eps  # reparameterisation
        return self.decode(z, y), mu, logvar


def build_vae(opts: VaeOptions, data: DataInfo) -> ConvVAE:
    return ConvVAE(
        data.size, data.channels, PRESETS[opts.preset]["width"], opts.z_dim, data.num_classes,
        opts.label_every_block,
    )  # fmt: skip


def vae_from_config(cfg: dict[str, Any]) -> ConvVAE:
    """The network of a saved config (models saved before FiLM lack the key: plain decoder)."""
    return ConvVAE(
        cfg["size"], cfg["channels"], cfg["width"], cfg["z_dim"], cfg.get("num_classes", 0),
        cfg.get("label_every_block", False),
    )  # fmt: skip


@torch.no_grad()
def decode_images(
    vae: ConvVAE, z: torch.Tensor, labels: torch.Tensor | None, kind: str
) -> torch.Tensor:
    """Images in [-1, 1] for latents z (N, z_dim), in chunks."""
    dev = next(vae.parameters()).device
    out = []
    for s in range(0, z.shape[0], SAMPLE_BATCH):
        y = None if labels is None else labels[s : s + SAMPLE_BATCH].to(dev)
        out.append(to_image(vae.decode(z[s : s + SAMPLE_BATCH].to(dev), y), kind).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruct(
    vae: ConvVAE, x: torch.Tensor, labels: torch.Tensor | None, kind: str
) -> torch.Tensor:
    """Reconstructions (decoded posterior means) of images x in [-1, 1]."""
    dev = next(vae.parameters()).device
    out = []
    for s in range(0, x.shape[0], SAMPLE_BATCH):
        y = None if labels is None else labels[s : s + SAMPLE_BATCH].to(dev)
        mu, _ = vae.encode(x[s : s + SAMPLE_BATCH].to(dev), y)
        out.append(to_image(vae.decode(mu, y), kind).float().cpu())
    return torch.cat(out)


def _unwrap(net: nn.Module) -> Any:
    return getattr(net, "module", net)


# ----- family --------------------------------------------------------------------------------
class VaeFamily(Family):
    """One phase: minimise -ELBO (with beta and the optional perceptual term)."""

    name = "vae"
    ema_nets = ("vae",)

    def __init__(self, opts: VaeOptions, data: DataInfo) -> None:
        super().__init__()
        self.opts, self.data = opts.validate(), data
        self.nets["vae"] = build_vae(opts, data)
        self.fixed: torch.Tensor | None = None  # uint8 images shown in the training grids
        self.fixed_labels: torch.Tensor | None = None
        self.perceptual: nn.Module | None = None

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "preset": PRESETS[self.opts.preset],
            "data": dataclasses.asdict(self.data),
        }

    def prepare(self, data: Any, device: torch.device) -> None:
        if self.data.num_classes and data.labels is not None and bool((data.labels < 0).any()):
            raise ImagesynthError(
                "some training images have no class label; use --cond none for this data"
            )
        n = min(len(data), 512)
        self.fixed = data.images[-n:].clone()
        self.fixed_labels = data.labels[-n:].clone() if self.data.num_classes else None
        if self.opts.perceptual_weight > 0:
            from ..metrics.extractors import load_extractor
            from ..metrics.lpips import DomainPerceptual

            spec = self.opts.perceptual_extractor or f"domain:{self.data.name}"
            ext = load_extractor(spec, progress=False)
            ext.net.eval().requires_grad_(False).to(device)
            self.perceptual = DomainPerceptual(ext)

    def phases(self) -> list[Phase]:
        return [Phase("elbo", ["vae"], self.loss)]

    def loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["images"]  # (B, C, S, S) in [-1, 1]
        y = batch.get("labels") if self.data.num_classes else None
        opts = self.opts
        eps = torch.randn(x.shape[0], opts.z_dim, generator=gen).to(x.device)
        out, mu, logvar = nets["vae"](x, y, eps)
        rec = nll(out, x, opts.reconstruction, opts.sigma)  # (B,)
        kl = kl_normal(mu, logvar)  # (B,)
        per_image = rec + opts.beta * kl
        values = x[0].numel()
        logs = {
            "rec": float(rec.detach().mean()),
            "kl": float(kl.detach().mean()),
            "neg_elbo": float((rec + kl).detach().mean()),  # nats per image (+ const for l2/l1)
        }
        if self.perceptual is not None:
            img = to_image(out, opts.reconstruction) if opts.reconstruction == "bce" else out
            perc = self.perceptual(img, x)  # (B,)
            per_image = per_image + opts.perceptual_weight * perc * values
            logs["perceptual"] = float(perc.detach().mean())
        logs["psnr"] = float(psnr(to_image(out.detach(), opts.reconstruction), x).mean())
        return per_image.mean() / values, logs

    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        """Samples from the prior. Training grids (seed < EVAL_SEED) show n/2 samples, then
        pairs of held images and reconstructions; evaluation calls get samples only."""
        from ..training.trainer import EVAL_SEED
        from .gan import latents

        vae = _unwrap(nets["vae"]).eval()
        k = self.data.num_classes
        kind = self.opts.reconstruction
        n_rec = 0 if seed >= EVAL_SEED or self.fixed is None or n < 4 else (n // 2) // 2
        n_smp = n - 2 * n_rec
        z = latents([seed + i for i in range(n_smp)], self.opts.z_dim) * self.opts.truncation
        labels = torch.arange(n_smp) % k if k else None
        out = [decode_images(vae, z, labels, kind)]
        if n_rec:
            assert self.fixed is not None
            x = self.fixed[:n_rec].float().div(127.5).sub(1)
            y = self.fixed_labels[:n_rec] if k and self.fixed_labels is not None else None
            rec = reconstruct(vae, x, y, kind)
            out.append(torch.stack([x, rec], 1).flatten(0, 1))  # original, reconstruction, ...
        return torch.cat(out)

    def sample_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "grid": "first half: samples; then pairs of (held image, reconstruction)",
            "truncation": self.opts.truncation,
        }
        if self.data.num_classes:
            params["class_labels"] = "i % num_classes"
        return params

    @torch.no_grad()
    def measure(self, vae: ConvVAE) -> dict[str, float]:
        """Reconstruction PSNR on the fixed (last training) images."""
        if self.fixed is None:
            return {}
        x = self.fixed.float().div(127.5).sub(1)
        rec = reconstruct(vae, x, self.fixed_labels, self.opts.reconstruction)
        return {"train_recon_psnr_db": float(psnr(rec, x).mean())}

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        from ..io.model_dir import Component, save_model

        vae = _unwrap(nets["vae"])
        for name, t in vae.state_dict().items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ImagesynthError(f"VAE weight {name} is not finite; not saving")
        v_cfg = {
            "class": "ConvVAE",
            "size": self.data.size,
            "channels": self.data.channels,
            "width": PRESETS[self.opts.preset]["width"],
            "z_dim": self.opts.z_dim,
            "num_classes": self.data.num_classes,
            "label_every_block": vae.film is not None,
            "reconstruction": self.opts.reconstruction,
        }
        metrics = {**(record.get("metrics") or {}), **self.measure(vae.eval())}
        return save_model(
            path,
            {"vae": Component(v_cfg, vae.state_dict())},
            family="vae",
            config=self.config(),
            dataset=record.get("dataset"),
            recipe=record.get("recipe"),
            metrics=metrics,
        )
