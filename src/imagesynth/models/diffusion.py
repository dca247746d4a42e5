"""Pixel-space diffusion: diffusers' UNet2DModel trained with eps / v / x0 objectives.

Noising follows DDPM (Ho et al. 2020): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.
Targets: eps, v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022), or x_0.
Min-SNR-gamma weighting (Hang et al. 2023), offset noise, and label dropout for
classifier-free guidance (Ho & Salimans 2022): the last class index is "no class".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ImagesynthError, unknown_name
from ..training.family import DataInfo, Family, Phase

# Presets are data: UNet2DModel keyword arguments by name. Parameter counts at 3 channels.
PRESETS: dict[str, dict[str, Any]] = {
    # ~1.1 M params: trains usefully in minutes on 2 CPU cores at 16-32 px
    "tiny": {
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 32,
    },
    # ~6.5 M params: an hour-scale CPU model, minutes on a GPU
    "small": {
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 16,
        "attention_head_dim": 32,
    },
    # ~37 M params: the DDPM CIFAR-10 scale, for GPUs (32-64 px)
    "base": {
        "block_out_channels": (128, 256, 256, 256),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 32,
        "attention_head_dim": 64,
    },
}
OBJECTIVES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SCHEDULES = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
    "scaled-linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
}


@dataclass
class DiffusionOptions:
    """Family options (saved in the model's config.json)."""

    preset: str = "tiny"
    objective: str = "eps"  # eps | v | x0
    schedule: str = "linear"  # linear | cosine | scaled-linear
    timesteps: int = 1000
    min_snr_gamma: float | None = 5.0  # None: plain MSE
    offset_noise: float = 0.0  # std of a per-channel constant added to the noise
    class_dropout: float = 0.1  # probability of training a label as "no class" (for CFG)
    sample_sampler: str = "dpmpp-2m"  # sampler for the training grids
    sample_steps: int = 20
    sample_cfg: float = 2.0  # guidance scale for class-conditional training grids

    def validate(self) -> DiffusionOptions:
        if self.preset not in PRESETS:
            raise unknown_name("preset", self.preset, list(PRESETS))
        if self.objective not in OBJECTIVES:
            raise unknown_name("objective", self.objective, list(OBJECTIVES))
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, list(SCHEDULES))
        if not 2 <= self.timesteps <= 100_000:
            raise ImagesynthError(f"timesteps must be in 2..100000, got {self.timesteps}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ImagesynthError(f"min_snr_gamma must be > 0 (or None), got {self.min_snr_gamma}")
        if not 0 <= self.offset_noise <= 1:
            raise ImagesynthError(f"offset_noise must be in 0..1, got {self.offset_noise}")
        if not 0 <= self.class_dropout < 1:
            raise ImagesynthError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        return self


def downsample_factor(preset: str) -> int:
    return 2 ** (len(PRESETS[preset]["block_out_channels"]) - 1)


def unet_config(opts: DiffusionOptions, data: DataInfo) -> dict[str, Any]:
    """UNet2DModel keyword arguments for a preset and a dataset."""
    factor = downsample_factor(opts.preset)
    if data.size % factor:
        raise ImagesynthError(
            f"size {data.size} is not divisible by {factor}, the {opts.preset!r} UNet's "
            f"downsampling factor; use a multiple of {factor}"
        )
    cfg = {
        **PRESETS[opts.preset],
        "sample_size": data.size,
        "in_channels": data.channels,
        "out_channels": data.channels,
    }
    if data.num_classes:
        cfg["num_class_embeds"] = data.num_classes + 1  # the last index means "no class"
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def scheduler_config(opts: DiffusionOptions) -> dict[str, Any]:
    """The training noise schedule as a diffusers DDPMScheduler config."""
    return {
        "num_train_timesteps": opts.timesteps,
        "prediction_type": OBJECTIVES[opts.objective],
        "clip_sample": False,
        **SCHEDULES[opts.schedule],
    }


def alphas_cumprod(sched_cfg: dict[str, Any]) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(sched_cfg).alphas_cumprod.float()


def denoising_loss(
    model_fn: Any,
    x0: torch.Tensor,
    alpha_bar: torch.Tensor,
    opts: Any,
    gen: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The diffusion training loss on clean samples x0 (pixels or latents).

    `model_fn(x_t, t)` returns the network output; `opts` carries objective, timesteps,
    offset_noise and min_snr_gamma. Every random draw comes from `gen` (CPU) for exact resume.
    """
    b, dev = x0.shape[0], x0.device
    t = torch.randint(0, opts.timesteps, (b,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    if opts.offset_noise:
        noise += opts.offset_noise * torch.randn((b, x0.shape[1], 1, 1), generator=gen)
    noise = noise.to(dev, memory_format=torch.preserve_format)
    ab = alpha_bar[t].view(b, 1, 1, 1).to(dev)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    out = model_fn(x_t, t.to(dev))
    if opts.objective == "eps":
        target = noise
    elif opts.objective == "v":
        target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    else:
        target = x0
    per_sample = F.mse_loss(out.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if opts.min_snr_gamma is not None:
        snr = (ab / (1 - ab)).view(b)
        clipped = snr.clamp(max=opts.min_snr_gamma)
        # weights that turn each objective's MSE into min(SNR, gamma)-weighted x0 error
        weight = {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[opts.objective]
        loss = (per_sample * weight).mean()
    else:
        loss = per_sample.mean()
    return loss, {"mse": float(per_sample.detach().mean())}


class DiffusionFamily(Family):
    """Denoising diffusion on pixels, unconditional or class-conditional."""

    name = "diffusion"
    ema_nets = ("unet",)

    def __init__(self, opts: DiffusionOptions, data: DataInfo) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.opts, self.data = opts.validate(), data
        self.unet_cfg = unet_config(opts, data)
        self.sched_cfg = scheduler_config(opts)
        self.nets["unet"] = UNet2DModel(**self.unet_cfg)
        self.alpha_bar = alphas_cumprod(self.sched_cfg)  # (T,)

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "unet": self.unet_cfg,
            "scheduler": self.sched_cfg,
            "data": dataclasses.asdict(self.data),
        }

    def phases(self) -> list[Phase]:
        return [Phase("denoise", ["unet"], self.loss)]

    def loss(
        self, nets: dict[str, torch.nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted MSE between the UNet output and the objective's target."""
        x0 = batch["images"]  # (B, C, H, W) in [-1, 1]
        b, dev = x0.shape[0], x0.device
        labels = batch.get("labels")
        if self.data.num_classes:
            drop = torch.rand(b, generator=gen) < self.opts.class_dropout
            labels = torch.where(drop.to(dev), self.data.num_classes, labels)
        else:
            labels = None

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return nets["unet"](x_t, t, class_labels=labels).sample

        return denoising_loss(model_fn, x0, self.alpha_bar, self.opts, gen)

    def sample(self, nets: dict[str, torch.nn.Module], n: int, seed: int) -> torch.Tensor:
        from ..pipelines.diffusion import generate

        labels = None
        scale = None
        if self.data.num_classes:
            labels = [i % self.data.num_classes for i in range(n)]
            scale = self.opts.sample_cfg
        return generate(
            nets["unet"],
            self.sched_cfg,
            n=n,
            seed=seed,
            sampler=self.opts.sample_sampler,
            steps=self.opts.sample_steps,
            class_labels=labels,
            guidance_scale=scale,
        )

    def sample_params(self) -> dict[str, Any]:
        params = {"sampler": self.opts.sample_sampler, "steps": self.opts.sample_steps}
        if self.data.num_classes:
            params["cfg_scale"] = self.opts.sample_cfg
            params["class_labels"] = "i % num_classes"
        return params

    def save(self, path: Path, nets: dict[str, torch.nn.Module], record: dict[str, Any]) -> Path:
        return save_diffusion_model(path, nets["unet"], self.sched_cfg, self.config(), record)


def save_diffusion_model(
    path: Path,
    unet: torch.nn.Module,
    sched_cfg: dict[str, Any],
    config: dict[str, Any],
    record: dict[str, Any],
) -> Path:
    """A model directory in diffusers' DDPMPipeline layout plus our imagesynth.json."""
    import diffusers

    from ..io.model_dir import Component, save_model

    version = diffusers.__version__
    unet_cfg = {"_class_name": "UNet2DModel", "_diffusers_version": version, **dict(unet.config)}
    unet_cfg = {k: v for k, v in unet_cfg.items() if not k.startswith("_use_default")}
    model_index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": version,
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    sched = {"_class_name": "DDPMScheduler", "_diffusers_version": version, **sched_cfg}
    return save_model(
        path,
        {"unet": Component(unet_cfg, unet.state_dict(), "diffusion_pytorch_model.safetensors")},
        family="diffusion",
        config=config,
        dataset=record.get("dataset"),
        recipe=record.get("recipe"),
        metrics=record.get("metrics"),
        extra_json={"model_index.json": model_index, "scheduler/scheduler_config.json": sched},
    )
