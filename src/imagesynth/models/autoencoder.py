"""KL autoencoder (the latent space of latent diffusion): diffusers' AutoencoderKL.

Loss (Kingma & Welling 2014; Rombach et al. 2022): reconstruction (L1 or L2 on pixels in
[-1, 1]) + kl_weight x KL[q(z|x) || N(0, I)] per latent element, plus an optional
patch-adversarial term (a PatchGAN discriminator with the hinge loss, switched on after
`adv_start` steps) that sharpens edges. At save time the latent scaling factor is measured
on training images (1 / std of the posterior means), as Stable Diffusion's 0.18215 was, so
the diffusion model sees unit-variance latents.
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

# AutoencoderKL keyword arguments by name; the downsampling factor is 2^(levels - 1).
PRESETS: dict[str, dict[str, Any]] = {
    # ~0.7 M params, f=4: 32 px -> 8x8x4 latents; ~180 img/s training on 2 CPU cores
    "tiny": {"block_out_channels": (16, 32, 64), "layers_per_block": 1, "norm_num_groups": 8},
    # ~8 M params, f=4: textured folders at 32-64 px
    "small": {"block_out_channels": (64, 128, 128), "layers_per_block": 2, "norm_num_groups": 32},
    # ~8 M params, f=8: 64-256 px images (Stable Diffusion's factor)
    "small-f8": {
        "block_out_channels": (64, 128, 128, 128),
        "layers_per_block": 2,
        "norm_num_groups": 32,
    },
}
RECONSTRUCTION = ("l1", "l2")


@dataclass
class AutoencoderOptions:
    """Family options (saved in the model's config.json)."""

    preset: str = "tiny"
    latent_channels: int = 4
    reconstruction: str = "l1"  # l1 | l2
    kl_weight: float = 1e-4  # per latent element, against the per-pixel reconstruction loss
    adv_weight: float = 0.0  # 0 = no discriminator
    adv_start: int = 500  # steps of plain reconstruction before the adversarial term
    init: str = ""  # start from this autoencoder model dir (fine-tuning)
    freeze_encoder: bool = False  # train the decoder only: the latent space stays the same,
    # so a latent diffusion model trained on it keeps working (Stable Diffusion's ft-MSE VAE)

    def validate(self) -> AutoencoderOptions:
        if self.preset not in PRESETS:
            raise unknown_name("autoencoder preset", self.preset, list(PRESETS))
        if self.reconstruction not in RECONSTRUCTION:
            raise unknown_name("reconstruction loss", self.reconstruction, list(RECONSTRUCTION))
        if not 1 <= self.latent_channels <= 64:
            raise ImagesynthError(f"latent_channels must be in 1..64, got {self.latent_channels}")
        if self.kl_weight < 0 or self.adv_weight < 0 or self.adv_start < 0:
            raise ImagesynthError("kl_weight, adv_weight and adv_start must be >= 0")
        if self.freeze_encoder and not self.init:
            raise ImagesynthError("freeze_encoder needs init=MODEL_DIR (a trained autoencoder)")
        return self


def factor(preset: str) -> int:
    return 2 ** (len(PRESETS[preset]["block_out_channels"]) - 1)


def vae_config(opts: AutoencoderOptions, data: DataInfo) -> dict[str, Any]:
    f = factor(opts.preset)
    if data.size % f:
        raise ImagesynthError(
            f"size {data.size} is not divisible by {f}, the {opts.preset!r} autoencoder's "
            f"downsampling factor; use a multiple of {f}"
        )
    levels = len(PRESETS[opts.preset]["block_out_channels"])
    cfg = {
        **PRESETS[opts.preset],
        "in_channels": data.channels,
        "out_channels": data.channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "latent_channels": opts.latent_channels,
        "sample_size": data.size,
        "scaling_factor": 1.0,  # measured at save time
    }
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): a real/fake logit per overlapping patch."""

    def __init__(self, channels: int, width: int = 32, layers: int = 2) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, c * 2, 4, 2, 1), nn.GroupNorm(8, c * 2), nn.LeakyReLU(0.2)]
            c *= 2
        mods += [nn.Conv2d(c, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL[N(mean, exp(logvar)) || N(0, 1)] averaged over every latent element."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


class AutoencoderFamily(Family):
    """Trains an AutoencoderKL (and optionally a patch discriminator)."""

    name = "autoencoder"
    ema_nets = ("vae",)

    def __init__(self, opts: AutoencoderOptions, data: DataInfo) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        self.opts, self.data = opts.validate(), data
        if opts.init:
            base = load_autoencoder(opts.init)
            cfg = {k: v for k, v in dict(base.config).items() if not k.startswith("_")}
            if cfg["in_channels"] != data.channels:
                raise ImagesynthError(
                    f"--init autoencoder takes {cfg['in_channels']} channels, the data has "
                    f"{data.channels}"
                )
            self.vae_cfg = cfg
            vae = base.requires_grad_(True).train()
            if opts.freeze_encoder:
                for part in (vae.encoder, vae.quant_conv):
                    if part is not None:
                        part.requires_grad_(False)
            self.nets["vae"] = vae
        else:
            self.vae_cfg = vae_config(opts, data)
            self.nets["vae"] = AutoencoderKL(**self.vae_cfg)
        if opts.adv_weight > 0:
            self.nets["disc"] = PatchDiscriminator(data.channels)
        self.fixed: torch.Tensor | None = None  # uint8 images shown in the training grids
        self.step = 0

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "vae": self.vae_cfg,
            "data": dataclasses.asdict(self.data),
        }

    def prepare(self, data: Any, device: torch.device) -> None:
        n = min(len(data), 512)
        self.fixed = data.images[-n:].clone()  # the last images: a fixed monitoring set

    def phases(self) -> list[Phase]:
        phases = [Phase("ae", ["vae"], self.loss)]
        if self.opts.adv_weight > 0:
            phases.append(Phase("disc", ["disc"], self.disc_loss, betas=(0.5, 0.9)))
        return phases

    def _reconstruct(self, vae: nn.Module, x: torch.Tensor, gen: torch.Generator | None):
        posterior = _unwrap(vae).encode(x).latent_dist
        if gen is None:
            z = posterior.mean
        else:
            eps = torch.randn(posterior.mean.shape, generator=gen).to(x.device)
            z = posterior.mean + posterior.std * eps
        return _unwrap(vae).decode(z).sample, posterior

    def loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["images"]
        rec, posterior = self._reconstruct(nets["vae"], x, gen)
        if self.opts.reconstruction == "l1":
            rec_loss = (rec - x).abs().mean()
        else:
            rec_loss = F.mse_loss(rec, x)
        kl = kl_per_element(posterior.mean, posterior.logvar)
        loss = rec_loss + self.opts.kl_weight * kl
        logs = {"rec": float(rec_loss.detach()), "kl": float(kl.detach())}
        logs["psnr"] = float(psnr(rec.detach().clamp(-1, 1), x).mean())
        if "disc" in nets and self._adv_on(batch):
            disc = nets["disc"]
            for p in disc.parameters():  # the generator step must not leave grads in D
                p.requires_grad_(False)
            g_adv = -disc(rec).mean()
            for p in disc.parameters():
                p.requires_grad_(True)
            loss = loss + self.opts.adv_weight * g_adv
            logs["g_adv"] = float(g_adv.detach())
        return loss, logs

    def _adv_on(self, batch: dict[str, Any]) -> bool:
        return int(batch.get("step", self.opts.adv_start)) >= self.opts.adv_start

    def disc_loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["images"]
        with torch.no_grad():
            rec, _ = self._reconstruct(nets["vae"], x, gen)
        real, fake = nets["disc"](x), nets["disc"](rec)
        loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()  # hinge loss
        if not self._adv_on(batch):
            loss = loss * 0.0  # keep the graph (all ranks step together) but learn nothing yet
        return loss, {"d_loss": float(loss.detach())}

    @torch.no_grad()
    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        """Originals (first half of the grid) above their reconstructions (second half)."""
        if self.fixed is None:
            raise ImagesynthError("the autoencoder has no images to reconstruct yet")
        k = max(1, min(n // 2, len(self.fixed)))
        vae = nets["vae"]
        dev = next(vae.parameters()).device
        x = self.fixed[:k].to(dev, torch.float32).div(127.5).sub(1)
        rec, _ = self._reconstruct(vae, x, None)
        return torch.cat([x, rec.clamp(-1, 1)]).cpu()

    def sample_params(self) -> dict[str, Any]:
        return {"grid": "top half: training images; bottom half: reconstructions"}

    @torch.no_grad()
    def measure(self, vae: nn.Module) -> dict[str, float]:
        """Latent statistics (for the scaling factor) and reconstruction quality."""
        assert self.fixed is not None
        dev = next(vae.parameters()).device
        means, psnrs = [], []
        for chunk in self.fixed.split(128):
            x = chunk.to(dev, torch.float32).div(127.5).sub(1)
            rec, post = self._reconstruct(vae, x, None)
            means.append(post.mean.float().cpu())
            psnrs.append(psnr(rec.clamp(-1, 1), x).cpu())
        z = torch.cat(means)
        std = float(z.std())
        return {
            "latent_mean": float(z.mean()),
            "latent_std": std,
            "scaling_factor": 1.0 / max(std, 1e-6),
            "train_recon_psnr_db": float(torch.cat(psnrs).mean()),
        }

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        vae = nets["vae"]
        stats = self.measure(vae) if self.fixed is not None else {"scaling_factor": 1.0}
        return save_autoencoder(path, vae, stats, self.config(), record)


def _unwrap(net: nn.Module) -> Any:
    """The module inside a DDP wrapper (encode/decode are not forward)."""
    return getattr(net, "module", net)


def save_autoencoder(
    path: Path,
    vae: nn.Module,
    stats: dict[str, float],
    config: dict[str, Any],
    record: dict[str, Any],
) -> Path:
    """A model directory with `vae/` in diffusers' AutoencoderKL layout + imagesynth.json."""
    import diffusers

    from ..io.model_dir import Component, save_model

    vae = _unwrap(vae)
    vae_cfg = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": diffusers.__version__,
        **dict(vae.config),
        "scaling_factor": round(float(stats["scaling_factor"]), 6),
    }
    vae_cfg = {k: v for k, v in vae_cfg.items() if not k.startswith("_use_default")}
    config = {**config, "vae": vae_cfg}
    metrics = {**(record.get("metrics") or {}), **stats}
    if not all(math.isfinite(v) for v in stats.values()):
        raise ImagesynthError(f"autoencoder statistics are not finite: {stats}")
    return save_model(
        path,
        {"vae": Component(vae_cfg, vae.state_dict(), "diffusion_pytorch_model.safetensors")},
        family="autoencoder",
        config=config,
        dataset=record.get("dataset"),
        recipe=record.get("recipe"),
        metrics=metrics,
    )


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """An AutoencoderKL from our model directory, or any diffusers folder with a `vae/`."""
    from diffusers import AutoencoderKL

    from ..io.model_dir import load_weights

    root = Path(path)
    sub = root / "vae" if (root / "vae").is_dir() else root
    cfg_path = sub / "config.json"
    if not cfg_path.is_file():
        raise ImagesynthError(f"{root}: no autoencoder found (expected vae/config.json)")
    import json

    cfg = json.loads(cfg_path.read_text())
    vae = AutoencoderKL.from_config(cfg)
    weights = [p for p in sub.iterdir() if p.name.startswith("diffusion_pytorch_model")]
    if not weights:
        raise ImagesynthError(f"{sub}: no diffusion_pytorch_model.safetensors")
    state = load_weights(sorted(weights, key=lambda p: p.suffix != ".safetensors")[0])
    vae.load_state_dict({k: v.float() for k, v in state.items()})
    return vae.to(device).eval().requires_grad_(False)
