"""Sampling from pixel diffusion models: unconditional or class-conditional with CFG."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ImagesynthError
from ..io.images import make_grid, tensor_to_pil
from ..seeding import check_seed, cpu_generator, randn_per_sample

MAX_BATCH = 64  # images per UNet call; larger n is generated in chunks


def _check_labels(class_labels: Sequence[int] | None, n: int, num_classes: int) -> list[int] | None:
    if class_labels is None:
        return None
    if num_classes == 0:
        raise ImagesynthError("class labels given, but this model is unconditional")
    labels = [int(c) for c in class_labels]
    if len(labels) == 1 and n > 1:
        labels = labels * n
    if len(labels) != n:
        raise ImagesynthError(f"got {len(labels)} class labels for n={n} images")
    bad = [c for c in labels if not 0 <= c < num_classes]
    if bad:
        raise ImagesynthError(f"class index {bad[0]} out of range; expected 0..{num_classes - 1}")
    return labels


@torch.no_grad()
def generate(
    unet: torch.nn.Module,
    sched_cfg: dict[str, Any],
    *,
    n: int = 1,
    seed: int = 0,
    sampler: str = "dpmpp-2m",
    steps: int = 20,
    class_labels: Sequence[int] | None = None,
    guidance_scale: float | None = None,
    callback: Callable[[Any], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1]; image i starts from the noise of seed + i."""
    from ..sampling import cfg_model_fn, make_scheduler, sample

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ImagesynthError(f"n must be a positive integer, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ImagesynthError(f"steps must be a positive integer, got {steps!r}")
    check_seed(seed)
    cfg = unet.config
    num_classes = (cfg.num_class_embeds or 1) - 1 if cfg.num_class_embeds else 0
    labels = _check_labels(class_labels, n, num_classes)
    if guidance_scale is not None and num_classes == 0:
        raise ImagesynthError(
            "a guidance scale (--cfg) needs a class-conditional model; this one is unconditional"
        )
    if guidance_scale is not None and not 0.0 <= guidance_scale <= 50.0:
        raise ImagesynthError(f"guidance scale must be in 0..50, got {guidance_scale}")
    if num_classes and labels is None:  # no class asked: sample classes round-robin
        labels = [i % num_classes for i in range(n)]
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    size, ch = cfg.sample_size, cfg.in_channels
    outs = []
    for start in range(0, n, MAX_BATCH):
        b = min(MAX_BATCH, n - start)
        noise = randn_per_sample((b, ch, size, size), [seed + start + i for i in range(b)])
        noise = noise.to(device=device, dtype=dtype)
        gen = cpu_generator(seed + start)

        def cond_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
            return unet(x, t.to(device), class_labels=y).sample

        if labels is None:
            model_fn = lambda x, t: cond_fn(x, t, None)  # noqa: E731
        else:
            y = torch.tensor(labels[start : start + b], device=device)
            if guidance_scale is None or guidance_scale == 1.0:
                model_fn = lambda x, t, y=y: cond_fn(x, t, y)  # noqa: E731
            else:
                null = torch.full_like(y, num_classes)
                model_fn = cfg_model_fn(cond_fn, y, null, guidance_scale)
        scheduler = make_scheduler(sampler, sched_cfg)
        x = sample(
            model_fn,
            noise,
            scheduler,
            steps,
            generator=gen,
            callback=callback,
            progress=progress,
        )
        outs.append(x.float().clamp(-1, 1))
    return torch.cat(outs)


@dataclass
class PipelineOutput:
    images: list[Image.Image]
    params: list[dict[str, Any]]  # per image, for its PNG metadata
    steps_x0: list[tuple[int, torch.Tensor]] = field(default_factory=list)


class DiffusionPipeline:
    """`imagesynth.load(MODEL_DIR)` for pixel diffusion models; call it to get PIL images."""

    def __init__(
        self,
        unet: torch.nn.Module,
        sched_cfg: dict[str, Any],
        info: dict[str, Any],
        path: Path | None = None,
    ) -> None:
        self.unet, self.sched_cfg, self.info, self.path = unet.eval(), sched_cfg, info, path
        cfg = unet.config
        self.num_classes = cfg.num_class_embeds - 1 if cfg.num_class_embeds else 0
        self.class_names = (info.get("dataset") or {}).get("class_names") or [
            str(i) for i in range(self.num_classes)
        ]

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> DiffusionPipeline:
        from diffusers import UNet2DModel

        from ..io.model_dir import load_model

        files = load_model(path, allow_pickle=allow_pickle)
        if files.family != "diffusion":
            raise ImagesynthError(f"{path} holds a {files.family!r} model, not a diffusion model")
        ucfg = {k: v for k, v in files.component_config("unet").items() if not k.startswith("_")}
        unet = UNet2DModel.from_config(ucfg)
        missing = unet.load_state_dict(files.state_dict("unet"), strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            raise ImagesynthError(
                f"{path}: weights do not match the UNet config (missing "
                f"{missing.missing_keys[:3]}, unexpected {missing.unexpected_keys[:3]})"
            )
        unet = unet.float().to(device or _default_device())
        return cls(unet, files.config["scheduler"], files.info, Path(path))

    @classmethod
    def from_diffusers(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> DiffusionPipeline:
        """A diffusers DDPMPipeline / DDIMPipeline folder (unet/ + scheduler/) saved by anyone."""
        from diffusers import UNet2DModel

        from ..io.model_dir import _refuse_pickle

        path = Path(path)
        unet_dir = path / "unet"
        if not list(unet_dir.glob("*.safetensors")):
            pickles = list(unet_dir.glob("*.bin"))
            if pickles and not allow_pickle:
                raise _refuse_pickle(pickles[0])
            if not pickles:
                raise ImagesynthError(f"{unet_dir} has no weights (*.safetensors)")
        try:
            sched_cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ImagesynthError(f"{path} has no readable scheduler config: {exc}") from None
        sched_cfg = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=not allow_pickle)
        info = {"dataset": None, "source": "diffusers"}
        return cls(unet.float().to(device or _default_device()), sched_cfg, info, path)

    @property
    def model_hash(self) -> str | None:
        unet = (self.info.get("components") or {}).get("unet") or {}
        return str(unet.get("sha256", ""))[:10] or None

    def __call__(
        self,
        n: int = 1,
        seed: int = 0,
        sampler: str = "dpmpp-2m",
        steps: int = 20,
        class_labels: Sequence[int] | None = None,
        guidance_scale: float | None = None,
        callback: Callable[[Any], None] | None = None,
        save_steps: Sequence[int] | None = None,
        progress: bool = False,
    ) -> PipelineOutput:
        """Generate n images; `save_steps` keeps the predicted x0 after those (1-based) steps."""
        kept: list[tuple[int, torch.Tensor]] = []
        wanted = set(save_steps or [])

        def on_step(info: Any) -> None:
            if info.i + 1 in wanted:
                kept.append((info.i + 1, info.x0.detach().float().cpu().clamp(-1, 1)))
            if callback is not None:
                callback(info)

        x = generate(
            self.unet,
            self.sched_cfg,
            n=n,
            seed=seed,
            sampler=sampler,
            steps=steps,
            class_labels=class_labels,
            guidance_scale=guidance_scale,
            callback=on_step,
            progress=progress,
        )
        images = tensor_to_pil(x)
        labels = _check_labels(class_labels, n, self.num_classes)
        if self.num_classes and labels is None:
            labels = [i % self.num_classes for i in range(n)]
        from ..sampling import resolve_sampler

        size = self.unet.config.sample_size
        params = []
        for i in range(n):
            p: dict[str, Any] = {
                "prompt": "" if labels is None else f"class {self.class_names[labels[i]]}",
                "steps": steps,
                "sampler": resolve_sampler(sampler).label,
                "seed": seed + i,
                "size": f"{size}x{size}",
                "model_hash": self.model_hash,
                "model": self.path.name if self.path else None,
                "family": "diffusion",
            }
            if labels is not None:
                p["class_label"] = labels[i]
                p["cfg_scale"] = guidance_scale
            params.append(p)
        return PipelineOutput(images=images, params=params, steps_x0=_merge_chunks(kept))


def _merge_chunks(kept: list[tuple[int, torch.Tensor]]) -> list[tuple[int, torch.Tensor]]:
    """x0 snapshots of several chunks of the same step, concatenated along the batch."""
    by_step: dict[int, list[torch.Tensor]] = {}
    for step, x0 in kept:
        by_step.setdefault(step, []).append(x0)
    return [(s, torch.cat(v)) for s, v in sorted(by_step.items())]


def steps_strip(steps_x0: list[tuple[int, torch.Tensor]], max_rows: int = 8) -> Image.Image:
    """A grid: one row per image, one column per kept step, labelled with the step number."""
    from PIL import ImageDraw

    if not steps_x0:
        raise ImagesynthError("no denoising steps were kept")
    rows = min(max_rows, steps_x0[0][1].shape[0])
    side = steps_x0[0][1].shape[-1]
    zoom = max(1, -(-64 // side))  # small images are enlarged (nearest) to >= 64 px tiles
    tiles = []
    for r in range(rows):
        for _, x0 in steps_x0:
            tile = tensor_to_pil(x0[r])[0]
            tiles.append(tile.resize((side * zoom, side * zoom), Image.NEAREST))
    grid = make_grid(tiles, nrow=len(steps_x0)).convert("RGB")
    w = tiles[0].size[0]
    header = Image.new("RGB", (grid.width, 14), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    for c, (step, _) in enumerate(steps_x0):
        draw.text((2 + c * (w + 2), 1), f"step {step}", fill=(0, 0, 0))
    out = Image.new("RGB", (grid.width, grid.height + 14), (255, 255, 255))
    out.paste(header, (0, 0))
    out.paste(grid, (0, 14))
    return out


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
