"""`imagesynth generate` (text to image) and `imagesynth edit` (img2img, inpaint, outpaint, sketch).

Without --model both use the model that ships inside the package (`imagesynth.bundled`).
Images go to --out-dir (default outputs/) as NNNNN-SEED.png with their parameters in the PNG.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ImagesynthError

Opt = typer.Option
edit_app = typer.Typer(
    help="Edit images with a text-to-image model: img2img, inpaint, outpaint, sketch.",
    no_args_is_help=True,
)

ModelOpt = Annotated[
    Path | None, Opt(help="Latent-diffusion model dir or SD folder (default: the bundled one).")
]
NegOpt = Annotated[str, Opt("--negative", help="Negative prompt (what to steer away from).")]
NOpt = Annotated[int, Opt(help="Number of images.")]
SeedOpt = Annotated[int, Opt(help="Seed of the first image (image i uses seed + i); -1: random.")]
StepsOpt = Annotated[int, Opt(help="Denoising steps.")]
CfgOpt = Annotated[float, Opt(help="Classifier-free guidance scale (1 = off).")]
SamplerOpt = Annotated[str, Opt(help="ddpm | ddim | dpmpp-2m | euler | euler-a | heun | unipc")]
OutOpt = Annotated[Path, Opt(help="Folder for the images.")]
StripOpt = Annotated[Path | None, Opt(help="Also write a denoising-progression strip PNG here.")]
DeviceOpt = Annotated[str | None, Opt(help="cpu | cuda | mps (default: best available).")]


def load_text_model(model: Path | None, device: str | None) -> Any:
    from ..api import load, resolve_model_dir
    from ..bundled import bundled_model_path

    path = bundled_model_path() if model is None else resolve_model_dir(model)
    pipe = load(path, device=device)
    if not hasattr(pipe, "img2img"):
        raise ImagesynthError(
            f"{path} is not a text-to-image model (use `imagesynth sample` for class or "
            "unconditional models)"
        )
    return pipe


def _seed(seed: int) -> int:
    if seed == -1:
        return random.randrange(2**31)
    if seed < 0:
        raise ImagesynthError(f"seed must be >= 0 (or -1 for random), got {seed}")
    return seed


def _next_index(out_dir: Path) -> int:
    nums = [int(p.name[:5]) for p in out_dir.glob("*.png") if p.name[:5].isdigit()]
    return max(nums, default=-1) + 1


def write_outputs(result: Any, out_dir: Path, strip: Path | None, steps: int) -> list[Path]:
    from ..io.pngmeta import save_png
    from ..pipelines.diffusion import steps_strip

    out_dir.mkdir(parents=True, exist_ok=True)
    start = _next_index(out_dir)
    paths = []
    for i, (im, p) in enumerate(zip(result.images, result.params, strict=True)):
        path = out_dir / f"{start + i:05d}-{p['seed']}.png"
        save_png(im, path, p)
        paths.append(path)
    for p in paths:
        typer.echo(f"wrote {p}")
    if strip is not None:
        save_png(steps_strip(result.steps_x0), strip, {**result.params[0], "strip": True})
        typer.echo(f"wrote {strip}")
    return paths


def strip_steps(steps: int) -> list[int]:
    from .train import _save_steps_list

    return _save_steps_list(steps)


def generate(
    prompt: Annotated[str, typer.Argument(help='What to draw ("" = unconditional).')] = "",
    negative: NegOpt = "",
    n: NOpt = 4,
    seed: SeedOpt = -1,
    steps: StepsOpt = 20,
    cfg: CfgOpt = 2.0,
    sampler: SamplerOpt = "dpmpp-2m",
    size: Annotated[int | None, Opt(help="Image side in px (default: the model's).")] = None,
    model: ModelOpt = None,
    out_dir: OutOpt = Path("outputs"),
    save_steps: StripOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Text to image with the bundled shapes model (or --model). Writes PNGs to outputs/."""
    pipe = load_text_model(model, device)
    result = pipe(
        prompt,
        **_sampling(negative, n, seed, steps, cfg, sampler),
        size=size,
        save_steps=strip_steps(steps) if save_steps else None,
        progress=True,
    )
    write_outputs(result, out_dir, save_steps, steps)


def _sampling(
    negative: str, n: int, seed: int, steps: int, cfg: float, sampler: str
) -> dict[str, Any]:
    """The sampling keywords every edit recipe takes (a random seed when -1)."""
    return {
        "negative_prompt": negative,
        "n": n,
        "seed": _seed(seed),
        "steps": steps,
        "guidance_scale": cfg,
        "sampler": sampler,
    }


@edit_app.command("img2img")
def img2img(
    image: Annotated[Path, typer.Argument(help="Input image.")],
    prompt: Annotated[str, typer.Argument(help="What the result should show.")] = "",
    strength: Annotated[float, Opt(help="0 keeps the image, 1 ignores it.")] = 0.6,
    negative: NegOpt = "",
    n: NOpt = 1,
    seed: SeedOpt = -1,
    steps: StepsOpt = 20,
    cfg: CfgOpt = 2.0,
    sampler: SamplerOpt = "dpmpp-2m",
    model: ModelOpt = None,
    out_dir: OutOpt = Path("outputs"),
    save_steps: StripOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Redraw an image toward a prompt (SDEdit): noise it to --strength, then denoise."""
    pipe = load_text_model(model, device)
    result = pipe.img2img(
        image,
        prompt,
        strength,
        **_sampling(negative, n, seed, steps, cfg, sampler),
        save_steps=strip_steps(steps) if save_steps else None,
        progress=True,
    )
    write_outputs(result, out_dir, save_steps, steps)


@edit_app.command("sketch")
def sketch(
    image: Annotated[Path, typer.Argument(help="A rough drawing: colored blobs on a background.")],
    prompt: Annotated[str, typer.Argument(help="What the blobs should become.")] = "",
    strength: Annotated[float, Opt(help="How far to move from the drawing (0..1).")] = 0.8,
    negative: NegOpt = "",
    n: NOpt = 4,
    seed: SeedOpt = -1,
    steps: StepsOpt = 20,
    cfg: CfgOpt = 2.0,
    sampler: SamplerOpt = "dpmpp-2m",
    model: ModelOpt = None,
    out_dir: OutOpt = Path("outputs"),
    device: DeviceOpt = None,
) -> None:
    """Structure-guided generation: shapes appear where the drawing's blobs are."""
    pipe = load_text_model(model, device)
    result = pipe.sketch(
        image,
        prompt,
        strength,
        **_sampling(negative, n, seed, steps, cfg, sampler),
        progress=True,
    )
    write_outputs(result, out_dir, None, steps)


@edit_app.command("inpaint")
def inpaint(
    image: Annotated[Path, typer.Argument(help="Input image.")],
    mask: Annotated[Path, typer.Argument(help="Mask image: white = repaint, black = keep.")],
    prompt: Annotated[str, typer.Argument(help="What to paint in the masked region.")] = "",
    mask_blur: Annotated[float | None, Opt(help="Feather radius in px (default size/64).")] = None,
    negative: NegOpt = "",
    n: NOpt = 1,
    seed: SeedOpt = -1,
    steps: StepsOpt = 20,
    cfg: CfgOpt = 2.0,
    sampler: SamplerOpt = "dpmpp-2m",
    model: ModelOpt = None,
    out_dir: OutOpt = Path("outputs"),
    save_steps: StripOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Repaint the white part of MASK; the rest of the image is kept."""
    pipe = load_text_model(model, device)
    result = pipe.inpaint(
        image,
        mask,
        prompt,
        mask_blur=mask_blur,
        **_sampling(negative, n, seed, steps, cfg, sampler),
        save_steps=strip_steps(steps) if save_steps else None,
        progress=True,
    )
    write_outputs(result, out_dir, save_steps, steps)


@edit_app.command("outpaint")
def outpaint(
    image: Annotated[Path, typer.Argument(help="Input image.")],
    prompt: Annotated[str, typer.Argument(help="What the extended canvas should show.")] = "",
    left: Annotated[int, Opt(help="Pixels added on the left.")] = 0,
    right: Annotated[int, Opt(help="Pixels added on the right.")] = 0,
    top: Annotated[int, Opt(help="Pixels added at the top.")] = 0,
    bottom: Annotated[int, Opt(help="Pixels added at the bottom.")] = 0,
    negative: NegOpt = "",
    n: NOpt = 1,
    seed: SeedOpt = -1,
    steps: StepsOpt = 20,
    cfg: CfgOpt = 2.0,
    sampler: SamplerOpt = "dpmpp-2m",
    model: ModelOpt = None,
    out_dir: OutOpt = Path("outputs"),
    device: DeviceOpt = None,
) -> None:
    """Extend the canvas and paint the new border to match the image and the prompt."""
    pipe = load_text_model(model, device)
    result = pipe.outpaint(
        image,
        prompt,
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        **_sampling(negative, n, seed, steps, cfg, sampler),
        progress=True,
    )
    write_outputs(result, out_dir, None, steps)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.add_typer(edit_app, name="edit")
