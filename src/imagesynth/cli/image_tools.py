"""`imagesynth style | texture | texture fill | upscale | restore` and `train upscaler|restorer`.

Thin wrappers: the algorithms live in `classical/` (style transfer, texture synthesis,
deconvolution) and `pipelines/upscale.py` (learned super-resolution and restoration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ImagesynthError
from .train import (
    EvalBestOpt,
    EvalEveryOpt,
    EvalExtractorOpt,
    EvalMetricsOpt,
    EvalNOpt,
    EvalRefOpt,
    FOptOpt,
    _run_training,
    eval_overrides,
    family_config,
    train_app,
)

Opt = typer.Option
Arg = typer.Argument


# ----- training -----------------------------------------------------------------------------
def _train_sr(
    family: str,
    top: dict[str, Any],
    fam_given: dict[str, Any],
    evals: dict[str, Any],
    opt: list[str] | None,
    fopt: list[str] | None,
    resume: str | None,
    dry_run: bool,
) -> None:
    cfg = family_config(
        family,
        top,
        fam_given,
        fopt=fopt,
        opt=opt,
        evals=evals,
        resume=resume,
        defaults={"sample_n": 12},
        cond="none",
    )
    _run_training(cfg, resume, dry_run, "net")


@train_app.command("upscaler")
def train_upscaler(
    data: Annotated[str | None, Opt(help="photos | textures | folder:PATH (HR images)")] = None,
    size: Annotated[int | None, Opt(help="High-resolution crop size in px (default 64).")] = None,
    scale: Annotated[int | None, Opt(help="Upscaling factor: 2 or 4 (default 2).")] = None,
    preset: Annotated[str | None, Opt(help="tiny (~0.09 M) | small (~0.67 M) | base.")] = None,
    blur_prob: Annotated[float | None, Opt(help="Share of images blurred first.")] = None,
    noise_prob: Annotated[float | None, Opt(help="Share of inputs with added noise.")] = None,
    jpeg_prob: Annotated[float | None, Opt(help="Share of inputs JPEG-compressed.")] = None,
    perceptual_weight: Annotated[
        float | None, Opt(help="Random-feature perceptual loss weight (0 = off).")
    ] = None,
    adv_weight: Annotated[
        float | None, Opt(help="Patch-adversarial fine-tune weight (0 = off, try 0.01).")
    ] = None,
    extra_data: Annotated[
        str | None, Opt(help="Also train on these datasets, e.g. textures.")
    ] = None,
    steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    batch: Annotated[int | None, Opt(help="Batch per process (default 32).")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (default 1e-3).")] = None,
    warmup: Annotated[int | None, Opt(help="LR warmup steps.")] = None,
    seed: Annotated[int | None, Opt(help="Seed.")] = None,
    sample_every: Annotated[int | None, Opt(help="Steps between sample grids.")] = None,
    ckpt_every: Annotated[int | None, Opt(help="Steps between checkpoints.")] = None,
    mixed_precision: Annotated[str | None, Opt(help="no | fp16 | bf16 (GPU only).")] = None,
    runs_dir: Annotated[str | None, Opt(help="Where run directories go.")] = None,
    tag: Annotated[str | None, Opt(help="Suffix of the run directory name.")] = None,
    resume: Annotated[str | None, Opt(help="latest | RUN_NUMBER | RUN_DIR.")] = None,
    eval_every: EvalEveryOpt = None,
    eval_n: EvalNOpt = None,
    eval_metrics: EvalMetricsOpt = None,
    eval_ref: EvalRefOpt = None,
    eval_extractor: EvalExtractorOpt = None,
    eval_best: EvalBestOpt = None,
    opt: Annotated[list[str] | None, Opt("--opt", help="Dataset option KEY=VALUE.")] = None,
    fopt: FOptOpt = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the resolved config and exit.")] = False,
) -> None:
    """Train a super-resolution network (residual CNN over bicubic) on any images."""
    top = {
        "data": data,
        "size": size if size is not None else (None if resume else 64),
        "steps": steps,
        "minutes": minutes,
        "batch": batch,
        "lr": lr,
        "warmup_steps": warmup,
        "seed": seed,
        "sample_every": sample_every,
        "ckpt_every": ckpt_every,
        "mixed_precision": mixed_precision,
        "runs_dir": runs_dir,
        "tag": tag,
    }
    given = {
        "task": "upscale",
        "scale": scale,
        "preset": preset,
        "blur_prob": blur_prob,
        "noise_prob": noise_prob,
        "jpeg_prob": jpeg_prob,
        "perceptual_weight": perceptual_weight,
        "adv_weight": adv_weight,
        "extra_data": extra_data,
    }
    evals = eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best)
    _train_sr("upscaler", top, given, evals, opt, fopt, resume, dry_run)


@train_app.command("restorer")
def train_restorer(
    task: Annotated[str, Opt(help="deblur | denoise.")] = "deblur",
    data: Annotated[str | None, Opt(help="photos | textures | folder:PATH (clean images)")] = None,
    size: Annotated[int | None, Opt(help="Crop size in px (default 64).")] = None,
    preset: Annotated[str | None, Opt(help="tiny | small | base.")] = None,
    blur_sigma: Annotated[
        str | None, Opt(help="Blur sigma range LO,HI in px (deblur; default 0.3,2).")
    ] = None,
    noise_sigma: Annotated[
        str | None, Opt(help="Noise sigma range LO,HI on [0,1] (denoise default 0.01,0.1).")
    ] = None,
    extra_data: Annotated[
        str | None, Opt(help="Also train on these datasets, e.g. textures.")
    ] = None,
    steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    batch: Annotated[int | None, Opt(help="Batch per process (default 32).")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (default 1e-3).")] = None,
    seed: Annotated[int | None, Opt(help="Seed.")] = None,
    sample_every: Annotated[int | None, Opt(help="Steps between sample grids.")] = None,
    ckpt_every: Annotated[int | None, Opt(help="Steps between checkpoints.")] = None,
    runs_dir: Annotated[str | None, Opt(help="Where run directories go.")] = None,
    tag: Annotated[str | None, Opt(help="Suffix of the run directory name.")] = None,
    resume: Annotated[str | None, Opt(help="latest | RUN_NUMBER | RUN_DIR.")] = None,
    eval_every: EvalEveryOpt = None,
    eval_n: EvalNOpt = None,
    eval_metrics: EvalMetricsOpt = None,
    eval_ref: EvalRefOpt = None,
    eval_extractor: EvalExtractorOpt = None,
    eval_best: EvalBestOpt = None,
    opt: Annotated[list[str] | None, Opt("--opt", help="Dataset option KEY=VALUE.")] = None,
    fopt: FOptOpt = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the resolved config and exit.")] = False,
) -> None:
    """Train a restoration network (deblur or denoise) on synthetic degradations."""
    from ..models.superres import task_defaults

    if task not in ("deblur", "denoise"):
        raise ImagesynthError(f"--task must be deblur or denoise, got {task!r}")
    top = {
        "data": data,
        "size": size if size is not None else (None if resume else 64),
        "steps": steps,
        "minutes": minutes,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "sample_every": sample_every,
        "ckpt_every": ckpt_every,
        "runs_dir": runs_dir,
        "tag": tag or task,
    }
    given: dict[str, Any] = {"task": task, "preset": preset, "extra_data": extra_data}
    if not resume:
        given.update(task_defaults(task))
    if blur_sigma is not None:
        given["blur_sigma"] = _range(blur_sigma, "--blur-sigma")
    if noise_sigma is not None:
        given["noise_sigma"] = _range(noise_sigma, "--noise-sigma")
    evals = eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best)
    _train_sr("restorer", top, given, evals, opt, fopt, resume, dry_run)


def _range(text: str, name: str) -> list[float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ImagesynthError(f"{name} takes LO,HI (two numbers), got {text!r}") from None
    if not 0 <= lo <= hi:
        raise ImagesynthError(f"{name} needs 0 <= LO <= HI, got {text!r}")
    return [lo, hi]


def _open(path: Path, what: str, min_side: int = 8):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise ImagesynthError(f"{what} {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            image = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ImagesynthError(f"{what} {str(path)!r} is not a readable image ({exc})") from None
    if min(image.size) < min_side:
        raise ImagesynthError(
            f"{what} {str(path)!r} is {image.size[0]}x{image.size[1]} px; need at least "
            f"{min_side}x{min_side} px"
        )
    return image


def _to_np(image):
    import numpy as np

    return np.asarray(image, dtype=np.float32) / 255.0


def _from_np(arr):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))


def style(
    content: Annotated[Path, Arg(help="Content image.")],
    styles: Annotated[list[Path], Arg(help="One or more style images.")],
    out: Annotated[Path, Opt(help="PNG to write.")] = Path("styled.png"),
    weights: Annotated[str | None, Opt(help="Style image weights, e.g. 0.7,0.3.")] = None,
    size: Annotated[int, Opt(help="Longer side of the result in px.")] = 512,
    content_weight: Annotated[float, Opt(help="alpha (content).")] = 1.0,
    style_weight: Annotated[float, Opt(help="beta (style).")] = 20.0,
    tv_weight: Annotated[float, Opt(help="Total-variation weight.")] = 1e-3,
    optimizer: Annotated[str, Opt(help="adam | lbfgs.")] = "adam",
    steps: Annotated[int, Opt(help="Iterations per scale.")] = 150,
    scales: Annotated[int, Opt(help="Coarse-to-fine levels (0 = auto).")] = 0,
    preserve_color: Annotated[
        str | None, Opt(help="Keep the content's colours: luminance | histogram.")
    ] = None,
    features: Annotated[
        str | None,
        Opt(
            help="VGG-19 weights file (torchvision layout); default: random (a random-weight "
            "VGG-like net), random:SEED, random-multiscale."
        ),
    ] = None,
    save_every: Annotated[int, Opt(help="Write intermediate results every N steps.")] = 0,
    seed: Annotated[int, Opt(help="Seed.")] = 0,
) -> None:
    """Neural style transfer (Gatys et al.): content x style(s) -> out.png."""
    from ..classical.features import get_feature_net
    from ..classical.style import StyleOptions, style_transfer
    from ..io.pngmeta import save_png

    c = _open(content, "content image", 16)
    ss = [_open(p, "style image", 16) for p in styles]
    w: list[float] = []
    if weights:
        try:
            w = [float(v) for v in weights.split(",")]
        except ValueError:
            raise ImagesynthError(
                f"--weights takes numbers like 0.7,0.3, got {weights!r}"
            ) from None
    opts = StyleOptions(
        size=size,
        content_weight=content_weight,
        style_weight=style_weight,
        tv_weight=tv_weight,
        optimizer=optimizer,
        steps=steps,
        scales=scales,
        preserve_color=preserve_color,
        seed=seed,
        style_image_weights=w,
    )
    net = get_feature_net(features)

    def cb(k: int, i: int, im) -> None:
        save_png(im, out.with_name(f"{out.stem}-scale{k}-step{i:04d}.png"), {"step": i})

    image, record = style_transfer(
        c, ss, net, opts, progress=True, callback=cb, save_every=save_every
    )
    params = {
        "prompt": f"style transfer of {content.name}",
        "content": str(content),
        "styles": [str(p) for p in styles],
        **record,
    }
    save_png(image, out, params)
    typer.echo(f"wrote {out}")


def texture(
    args: Annotated[list[str], Arg(help="SAMPLE, or: fill IMAGE MASK.")],
    size: Annotated[int, Opt(help="Output side in px.")] = 256,
    method: Annotated[str, Opt(help="quilting | efros-leung | neural.")] = "quilting",
    out: Annotated[Path, Opt(help="PNG to write.")] = Path("texture.png"),
    tile: Annotated[bool, Opt("--tile", help="Make the output seamlessly tileable.")] = False,
    block: Annotated[int | None, Opt(help="Quilting block size in px.")] = None,
    steps: Annotated[int, Opt(help="Neural: optimisation steps.")] = 300,
    features: Annotated[
        str | None, Opt(help="Neural: VGG-19 weights file; default: random VGG-like net.")
    ] = None,
    seed: Annotated[int, Opt(help="Seed.")] = 0,
) -> None:
    """Texture synthesis (texture SAMPLE --method quilting) or hole filling (texture fill
    IMAGE MASK: white mask pixels are filled from the rest of the image)."""
    if args[0] == "fill":
        if len(args) != 3:
            raise ImagesynthError("usage: imagesynth texture fill IMAGE MASK [--out PNG]")
        texture_fill(Path(args[1]), Path(args[2]), out, block or 15, seed)
        return
    if len(args) != 1:
        raise ImagesynthError(f"texture takes one SAMPLE image, got {args}")
    sample = Path(args[0])
    from ..classical import texture as tx
    from ..io.pngmeta import save_png

    if method not in tx.METHODS:
        from ..errors import unknown_name

        raise unknown_name("texture method", method, list(tx.METHODS))
    if not 8 <= size <= 4096:
        raise ImagesynthError(f"--size must be in 8..4096, got {size}")
    img = _to_np(_open(sample, "texture sample", 16))
    if method == "quilting":
        arr = tx.quilt(img, size, block=block, seed=seed, tile=tile)
    elif method == "efros-leung":
        arr = tx.efros_leung(img, size, seed=seed, tile=tile, progress=True)
    else:
        from ..classical.features import get_feature_net

        arr = tx.neural_texture(
            img, size, get_feature_net(features), steps=steps, seed=seed, tile=tile, progress=True
        )
    params = {
        "prompt": f"texture from {sample.name}",
        "method": method,
        "size": size,
        "tile": tile,
        "seed": seed,
    }
    save_png(_from_np(arr), out, params)
    typer.echo(f"wrote {out}")


def texture_fill(image: Path, mask: Path, out: Path, block: int = 15, seed: int = 0) -> None:
    """Fill the masked hole of IMAGE with texture from the rest of it."""
    from ..classical.texture import fill
    from ..io.pngmeta import save_png

    im = _open(image, "image", 16)
    m = _open(mask, "mask", 1)
    if m.size != im.size:
        raise ImagesynthError(
            f"mask {str(mask)!r} is {m.size[0]}x{m.size[1]} px but the image is "
            f"{im.size[0]}x{im.size[1]} px; they must match"
        )
    hole = _to_np(m.convert("L")) > 0.5
    arr = fill(_to_np(im), hole, block=block, seed=seed)
    save_png(
        _from_np(arr),
        out,
        {"prompt": f"texture fill of {image.name}", "block": block, "seed": seed},
    )
    typer.echo(f"wrote {out}")


def _bundled(name: str) -> Path:
    """A bundled upscaler / restorer model folder (see imagesynth.bundled.BUNDLED)."""
    from ..bundled import bundled_model_path

    return bundled_model_path(name)


def _bundled_upscaler(scale: int = 2) -> Path:
    return _bundled(f"upscaler-x{scale}")


def upscale(
    image: Annotated[Path, Arg(help="Image to upscale.")],
    scale: Annotated[int, Opt(help="2 or 4.")] = 2,
    out: Annotated[Path, Opt(help="PNG to write.")] = Path("upscaled.png"),
    method: Annotated[str, Opt(help="model | bicubic | lanczos.")] = "model",
    model: Annotated[
        Path | None, Opt(help="Upscaler model dir (default: bundled upscaler-x2 / -x4).")
    ] = None,
    tile: Annotated[int | None, Opt(help="Tile side in px (default: from free memory).")] = None,
    overlap: Annotated[int, Opt(help="Tile overlap in px.")] = 16,
    device: Annotated[str | None, Opt(help="cpu | cuda.")] = None,
) -> None:
    """Upscale an image x2 / x4 with a learned model or a classical filter."""
    from ..io.pngmeta import save_png
    from ..pipelines.upscale import SuperResolutionPipeline, classical_upscale

    if scale not in (2, 4):
        raise ImagesynthError(f"--scale must be 2 or 4, got {scale}")
    im = _open(image, "image", 8)
    if method != "model":
        result = classical_upscale(im, scale, method)
        params = {"method": method, "scale": scale}
    else:
        pipe = SuperResolutionPipeline.from_pretrained(model or _bundled_upscaler(scale), device)
        if pipe.task != "upscale":
            raise ImagesynthError(
                f"{model} is a {pipe.task} model, not an upscaler; use `imagesynth restore "
                f"--task {pipe.task} --model {model}`"
            )
        res = pipe(im, scale=scale, tile=tile, overlap=overlap, progress=True)
        result, params = res.images[0], {"method": "model", **res.params[0]}
    save_png(result, out, {"prompt": f"upscale of {image.name}", **params})
    typer.echo(f"wrote {out} ({result.size[0]}x{result.size[1]})")


RESTORE_TASKS = ("deblur", "denoise")
RESTORE_METHODS = {
    "deblur": ("model", "wiener", "richardson-lucy"),
    "denoise": ("model", "tv"),
}


def restore(
    image: Annotated[Path, Arg(help="Blurred or noisy image.")],
    task: Annotated[str, Opt(help="deblur | denoise.")] = "deblur",
    out: Annotated[Path, Opt(help="PNG to write.")] = Path("restored.png"),
    method: Annotated[
        str, Opt(help="model | wiener | richardson-lucy (deblur) | tv (denoise).")
    ] = "model",
    model: Annotated[
        Path | None, Opt(help="Restorer model dir (default: the bundled restorer-TASK).")
    ] = None,
    sigma: Annotated[float, Opt(help="Wiener / RL: Gaussian blur sigma in px.")] = 1.5,
    iterations: Annotated[int, Opt(help="Richardson-Lucy iterations.")] = 20,
    balance: Annotated[float, Opt(help="Wiener balance (noise-to-signal).")] = 0.01,
    weight: Annotated[float, Opt(help="TV denoising weight.")] = 0.1,
    tile: Annotated[int | None, Opt(help="Tile side in px (default: from free memory).")] = None,
    device: Annotated[str | None, Opt(help="cpu | cuda.")] = None,
) -> None:
    """Deblur or denoise with a learned restorer (bundled by default), or classically:
    Wiener / Richardson-Lucy deconvolution with a Gaussian PSF, or TV denoising."""
    from ..io.pngmeta import save_png

    if task not in RESTORE_TASKS:
        from ..errors import unknown_name

        raise unknown_name("restore task (--task)", task, list(RESTORE_TASKS))
    if method not in RESTORE_METHODS[task]:
        from ..errors import unknown_name

        raise unknown_name(f"--method for --task {task}", method, list(RESTORE_METHODS[task]))
    im = _open(image, "image", 8)
    if method != "model":
        from ..classical import deconv

        if method == "tv":
            result = _from_np(deconv.denoise_tv(_to_np(im), weight))
            params = {"method": method, "weight": weight}
        else:
            if iterations < 1 or balance <= 0:
                raise ImagesynthError(
                    f"--iterations must be >= 1 and --balance > 0, got {iterations}, {balance}"
                )
            psf = deconv.gaussian_psf(sigma)
            if method == "wiener":
                arr, params = deconv.wiener(_to_np(im), psf, balance), {"balance": balance}
            else:
                arr = deconv.richardson_lucy(_to_np(im), psf, iterations)
                params = {"iterations": iterations}
            result = _from_np(arr)
            params = {"method": method, "sigma": sigma, **params}
    else:
        from ..pipelines.upscale import SuperResolutionPipeline

        if model is None:
            from .. import bundled

            if f"restorer-{task}" not in bundled.BUNDLED:
                raise ImagesynthError(
                    f"no bundled {task} model: pass --model DIR (imagesynth train restorer "
                    f"--task {task}) or --method {' | '.join(RESTORE_METHODS[task][1:])}"
                )
        path = model or _bundled(f"restorer-{task}")
        pipe = SuperResolutionPipeline.from_pretrained(path, device)
        if pipe.task != task:
            what = f"a x{pipe.scale} upscaler" if pipe.task == "upscale" else f"a {pipe.task} model"
            raise ImagesynthError(f"{path} is {what}, not a {task} model (--task {task})")
        res = pipe(im, tile=tile, progress=True)
        result, params = res.images[0], {"method": "model", **res.params[0]}
    save_png(result, out, {"prompt": f"{task} of {image.name}", **params})
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add the image-tool commands (the train commands register on import)."""
    app.command("style")(style)
    app.command("texture")(texture)
    app.command("upscale")(upscale)
    app.command("restore")(restore)
