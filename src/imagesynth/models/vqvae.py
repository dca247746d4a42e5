"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning").

x -> encoder -> z_e (B, D, h, w) -> nearest codebook vector e_k -> z_q -> decoder -> x_rec.

- Straight-through estimator: the decoder gets z_e + sg(z_q - z_e), so the reconstruction
  gradient reaches the encoder as if quantization were the identity.
- Loss: ||x - x_rec||^2 + beta ||z_e - sg(z_q)||^2 (the commitment term). The codebook is
  not learned by gradient but by exponential moving averages (the paper's appendix A.1):
  N_k <- gamma N_k + (1 - gamma) n_k, m_k <- gamma m_k + (1 - gamma) sum of the z_e assigned
  to k, e_k = m_k / N_k (N Laplace-smoothed). Codes whose N_k falls below `restart_below`
  times the average count are restarted on random encoder outputs of the batch (as in
  Jukebox), so none stay dead; all codes start dead, which initialises them from data.
- Under torch.distributed (DDP) the batch's n_k and sums are all-reduced before the EMA
  step, so every rank applies the same update computed from the global batch, and restarted
  codes are broadcast from rank 0: the codebooks stay identical and use every rank's data.
- Codebook usage and perplexity exp(H(code frequencies)) of each batch go to stats.jsonl.

We write our own small network instead of diffusers' VQModel: its VectorQuantizer learns
the codebook by gradient (no EMA updates, no restarts) and returns the loss already mixed,
which would hide the terms this family logs and tests. The codebook lives in buffers, so the
trainer's checkpoints and `--resume` carry it exactly.
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

from ..errors import ImagesynthError
from ..training.family import DataInfo, Family, Phase


# ----- helpers -------------------------------------------------------------------------------
def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks in place (a no-op outside torch.distributed)."""
    if _distributed():
        for t in tensors:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)


def broadcast_from_rank0(*tensors: torch.Tensor) -> None:
    """Overwrite each tensor with rank 0's (a no-op outside torch.distributed)."""
    if _distributed():
        for t in tensors:
            torch.distributed.broadcast(t, src=0)


# ----- blocks --------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.GroupNorm(8, width),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(8, width),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class VectorQuantizerEMA(nn.Module):
    """Nearest-neighbour quantizer with an EMA-updated codebook (buffers, no gradients)."""

    def __init__(self, size: int, dim: int, decay: float, restart_below: float) -> None:
        super().__init__()
        self.size, self.dim, self.decay, self.restart_below = size, dim, decay, restart_below
        self.eps = 1e-5
        # N_k = 0 everywhere: the first training step restarts every unused code on the
        # batch's encoder outputs, a data-dependent initialisation
        self.register_buffer("embed", torch.randn(size, dim))  # (K, D)
        self.register_buffer("cluster_size", torch.zeros(size))  # N_k
        self.register_buffer("embed_sum", torch.zeros(size, dim))  # m_k

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code index of each row of z (N, D)."""
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embed.t() + self.embed.pow(2).sum(1)
        return d.argmin(1)

    def forward(
        self, z_e: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """(z_q straight-through (B, D, h, w), codes (B, h, w), commitment MSE, stats).

        In training mode the codebook is then updated by EMA (and dead codes restarted).
        """
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D)
        idx = self.codes(flat.detach().float())
        z_q = F.embedding(idx, self.embed).view(b, h, w, d).permute(0, 3, 1, 2).to(z_e.dtype)
        commit = F.mse_loss(z_e, z_q.detach())
        z_st = z_e + (z_q - z_e).detach()
        counts = torch.bincount(idx, minlength=self.size).float()
        p = counts / counts.sum()
        stats = {
            "perplexity": float(torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())),
            "usage": float((counts > 0).float().mean()),
        }
        if self.training:
            stats["restarts"] = float(
                self.ema_update(flat.detach().float(), idx, counts, generator)
            )
        return z_st, idx.view(b, h, w), commit, stats

    @torch.no_grad()
    def ema_update(
        self,
        flat: torch.Tensor,
        idx: torch.Tensor,
        counts: torch.Tensor,
        generator: torch.Generator | None,
    ) -> int:
        """EMA step of N_k, m_k and e_k; returns how many dead codes were restarted.

        `counts` and the per-code sums are this process's; under DDP they are summed over
        the ranks first (`all_reduce_sum`), which leaves `counts` unchanged for the caller.
        """
        g = self.decay
        counts = counts.clone()
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)
        all_reduce_sum(counts, sums)
        self.cluster_size.mul_(g).add_(counts, alpha=1 - g)
        self.embed_sum.mul_(g).add_(sums, alpha=1 - g)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.size * self.eps) * n
        self.embed.copy_(self.embed_sum / smoothed.unsqueeze(1))
        mean = n / self.size  # the average code's count
        dead = self.cluster_size < self.restart_below * mean
        k = int(dead.sum())
        if k:
            pick = torch.randint(0, flat.shape[0], (k,), generator=generator).to(flat.device)
            self.embed[dead] = flat[pick]
            self.cluster_size[dead] = mean
            self.embed_sum[dead] = flat[pick] * mean
            # every rank counts the same dead codes (identical buffers); rank 0's picks win
            broadcast_from_rank0(self.embed, self.cluster_size, self.embed_sum)
        return k


@dataclass
class VQVAEConfig:
    """Network shape (saved as the model's vqvae/config.json)."""

    channels: int = 1
    size: int = 16
    width: int = 64
    factor: int = 4  # downsampling: tokens are (size / factor)^2
    codebook_size: int = 256
    code_dim: int = 32
    decay: float = 0.99
    restart_below: float = 0.03

    @property
    def grid(self) -> int:
        return self.size // self.factor


class VQVAE(nn.Module):
    """Conv encoder -> EMA vector quantizer -> conv decoder."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, downs = cfg.width, int(math.log2(cfg.factor))
        enc: list[nn.Module] = [nn.Conv2d(cfg.channels, w, 3, padding=1)]
        for _ in range(downs):
            enc += [ResBlock(w), nn.Conv2d(w, w, 4, stride=2, padding=1)]
        enc += [ResBlock(w), nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, cfg.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = VectorQuantizerEMA(
            cfg.codebook_size, cfg.code_dim, cfg.decay, cfg.restart_below
        )
        dec: list[nn.Module] = [nn.Conv2d(cfg.code_dim, w, 3, padding=1), ResBlock(w)]
        for _ in range(downs):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w, w, 3, padding=1)]
            dec += [ResBlock(w)]
        dec += [nn.GroupNorm(8, w), nn.SiLU(), nn.Conv2d(w, cfg.channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """(reconstruction, codes (B, h, w), commitment MSE, quantizer stats)."""
        z_q, idx, commit, stats = self.quantizer(self.encoder(x), generator)
        return self.decoder(z_q), idx, commit, stats

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> code indices (B, h, w)."""
        z = self.encoder(x)
        b, d, h, w = z.shape
        return self.quantizer.codes(z.permute(0, 2, 3, 1).reshape(-1, d).float()).view(b, h, w)

    def decode_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) -> images (B, C, H, W) (unclamped)."""
        z = F.embedding(idx, self.quantizer.embed).permute(0, 3, 1, 2)
        return self.decoder(z)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


# ----- the family ----------------------------------------------------------------------------
@dataclass
class VQVAEOptions:
    """Family options (saved in the model's config.json)."""

    width: int = 64
    factor: int = 4  # 2, 4 or 8: 16 px -> 4x4 tokens at 4
    codebook_size: int = 256
    code_dim: int = 32
    beta: float = 0.25  # commitment weight
    decay: float = 0.99  # codebook EMA decay (gamma)
    restart_below: float = 0.03  # restart codes below this fraction of the mean count

    def validate(self, size: int) -> VQVAEOptions:
        if self.factor not in (1, 2, 4, 8, 16):
            raise ImagesynthError(f"factor must be 1, 2, 4, 8 or 16, got {self.factor!r}")
        if size % self.factor:
            raise ImagesynthError(
                f"size {size} is not divisible by the VQ-VAE factor {self.factor}"
            )
        if self.width < 8 or self.width % 8:
            raise ImagesynthError(f"width must be a multiple of 8, got {self.width}")
        if not 2 <= self.codebook_size <= 65536:
            raise ImagesynthError(f"codebook_size must be in 2..65536, got {self.codebook_size}")
        if not 1 <= self.code_dim <= 1024:
            raise ImagesynthError(f"code_dim must be in 1..1024, got {self.code_dim}")
        if self.beta < 0:
            raise ImagesynthError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.decay < 1:
            raise ImagesynthError(f"decay must be in (0, 1), got {self.decay}")
        if self.restart_below < 0:
            raise ImagesynthError(f"restart_below must be >= 0, got {self.restart_below}")
        return self


class VQVAEFamily(Family):
    """Trains a VQ-VAE; its training grids show originals above reconstructions."""

    name = "vqvae"
    ema_nets = ()  # the codebook is already an EMA; sampling uses the trained weights

    def __init__(self, opts: VQVAEOptions, data: DataInfo) -> None:
        super().__init__()
        self.opts, self.data = opts.validate(data.size), data
        self.net_cfg = VQVAEConfig(
            channels=data.channels,
            size=data.size,
            width=opts.width,
            factor=opts.factor,
            codebook_size=opts.codebook_size,
            code_dim=opts.code_dim,
            decay=opts.decay,
            restart_below=opts.restart_below,
        )
        self.nets["vqvae"] = VQVAE(self.net_cfg)
        self.fixed: torch.Tensor | None = None  # uint8 monitoring images

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "vqvae": dataclasses.asdict(self.net_cfg),
            "data": dataclasses.asdict(self.data),
        }

    def prepare(self, data: Any, device: torch.device) -> None:
        self.fixed = data.images[-min(len(data), 512) :].clone()

    def phases(self) -> list[Phase]:
        return [Phase("vq", ["vqvae"], self.loss)]

    def loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["images"]
        rec, _, commit, stats = nets["vqvae"](x, gen)
        rec_loss = F.mse_loss(rec, x)
        loss = rec_loss + self.opts.beta * commit
        logs = {"rec": float(rec_loss.detach()), "commit": float(commit.detach()), **stats}
        logs["psnr"] = float(psnr(rec.detach().clamp(-1, 1), x).mean())
        return loss, logs

    @torch.no_grad()
    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        """Originals (first half of the grid) and their reconstructions (second half)."""
        if self.fixed is None:
            raise ImagesynthError("the VQ-VAE has no images to reconstruct yet")
        net = getattr(nets["vqvae"], "module", nets["vqvae"])
        k = max(1, min(n // 2, len(self.fixed)))
        dev = next(net.parameters()).device
        x = self.fixed[:k].to(dev, torch.float32).div(127.5).sub(1)
        rec = net.decode_codes(net.encode_codes(x)).clamp(-1, 1)
        return torch.cat([x, rec]).cpu()

    def sample_params(self) -> dict[str, Any]:
        return {"grid": "top half: training images; bottom half: reconstructions"}

    @torch.no_grad()
    def measure(self, net: VQVAE) -> dict[str, float]:
        """Reconstruction PSNR and code statistics on the monitoring images."""
        assert self.fixed is not None
        dev = next(net.parameters()).device
        psnrs, codes = [], []
        for chunk in self.fixed.split(128):
            x = chunk.to(dev, torch.float32).div(127.5).sub(1)
            idx = net.encode_codes(x)
            psnrs.append(psnr(net.decode_codes(idx).clamp(-1, 1), x).cpu())
            codes.append(idx.flatten().cpu())
        counts = torch.bincount(torch.cat(codes), minlength=net.cfg.codebook_size).float()
        p = counts / counts.sum()
        return {
            "train_recon_psnr_db": float(torch.cat(psnrs).mean()),
            "code_perplexity": float(torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())),
            "codes_used": int((counts > 0).sum()),
        }

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        from ..io.model_dir import Component, save_model

        net = getattr(nets["vqvae"], "module", nets["vqvae"])
        stats = self.measure(net) if self.fixed is not None else {}
        return save_model(
            path,
            {"vqvae": Component(dataclasses.asdict(self.net_cfg), net.state_dict())},
            family="vqvae",
            config=self.config(),
            dataset=record.get("dataset"),
            recipe=record.get("recipe"),
            metrics={**(record.get("metrics") or {}), **stats},
        )


def load_vqvae(path: str | Path, allow_pickle: bool = False) -> tuple[VQVAE, Any]:
    """The VQ-VAE of a `vqvae` (or `transformer`) model directory, and the opened files."""
    from ..io.model_dir import load_model

    files = load_model(path, allow_pickle=allow_pickle)
    if "vqvae" not in files.components:
        raise ImagesynthError(
            f"{path} holds a {files.family!r} model without a VQ-VAE; train one with "
            "`imagesynth train vqvae`"
        )
    net = VQVAE(VQVAEConfig(**files.component_config("vqvae")))
    net.load_state_dict({k: v.float() for k, v in files.state_dict("vqvae").items()})
    return net.eval().requires_grad_(False), files
