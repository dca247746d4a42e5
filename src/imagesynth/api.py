"""The top-level Python API: `imagesynth.train(...)` and `imagesynth.load(MODEL_DIR)`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ImagesynthError

# model family (imagesynth.json "family") -> "module:Class" with a from_pretrained classmethod
PIPELINES: dict[str, str] = {
    "diffusion": ".pipelines.diffusion:DiffusionPipeline",
    "latent-diffusion": ".pipelines.text2image:TextToImage",
    "upscaler": ".pipelines.upscale:SuperResolutionPipeline",
    "restorer": ".pipelines.upscale:SuperResolutionPipeline",
    "pixelcnn": ".pipelines.autoregressive:PixelCNNPipeline",
    "vqvae": ".pipelines.autoregressive:VQVAEPipeline",
    "transformer": ".pipelines.autoregressive:TransformerPipeline",
    "gan": ".pipelines.latent_generators:LatentGeneratorPipeline",
    "vae": ".pipelines.latent_generators:LatentGeneratorPipeline",
}


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A model directory, or a run directory whose `model/` is one."""
    p = Path(path).expanduser()
    if not (p / "imagesynth.json").is_file() and (p / "model" / "imagesynth.json").is_file():
        return p / "model"
    return p


def load(path: str | os.PathLike, device: str | None = None, allow_pickle: bool = False) -> Any:
    """The pipeline for a model directory (or run directory), chosen by its family."""
    from .io.model_dir import load_model

    path = resolve_model_dir(path)
    index = path / "model_index.json"
    if not (path / "imagesynth.json").is_file() and index.is_file():  # a diffusers folder
        import json

        cls_name = json.loads(index.read_text()).get("_class_name")
        if cls_name in ("DDPMPipeline", "DDIMPipeline"):
            from .pipelines.diffusion import DiffusionPipeline

            return DiffusionPipeline.from_diffusers(path, device=device, allow_pickle=allow_pickle)
        if cls_name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"):
            from .pipelines.text2image import TextToImage

            return TextToImage.from_diffusers(path, device=device, allow_pickle=allow_pickle)
        raise ImagesynthError(
            f"{path}: diffusers pipeline {cls_name!r} is not supported; supported: "
            "DDPMPipeline, DDIMPipeline, StableDiffusionPipeline"
        )
    family = load_model(path, allow_pickle=allow_pickle).family
    if family not in PIPELINES:
        raise ImagesynthError(
            f"{path}: no pipeline for model family {family!r}; known: {sorted(PIPELINES)}"
        )
    import importlib

    module, cls_name = PIPELINES[family].split(":")
    cls = getattr(importlib.import_module(module, __package__), cls_name)
    return cls.from_pretrained(path, device=device, allow_pickle=allow_pickle)


def train(**options: Any) -> Any:
    """Train a model and return a TrainResult (run_dir, model_dir, step, stats).

    Example: `imagesynth.train(family="diffusion", data="digits", size=16, cond="class",
    family_options={"preset": "tiny"}, minutes=10)`. `resume="latest"` continues a run.
    """
    from .training.trainer import train as _train

    return _train(**options)
