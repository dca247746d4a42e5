"""`imagesynth train gan|vae` and `imagesynth interpolate` (latent generators)."""

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

# trainer defaults that suit each family (applied to new runs when the option is not given)
GAN_DEFAULTS = {
    "lr": 2e-4,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "clip_grad": 0.0,
    "batch": 64,
}
VAE_DEFAULTS = {"batch": 64, "warmup_steps": 50}
LATENT_FAMILIES = ("gan", "vae", "transformer")  # transformer: in its VQ-VAE's latent


def check_gan_lr(cfg: Any) -> None:
    """Each phase's learning rate (lr x its scale) must stay in (0, 1)."""
    fo = cfg.family_options
    for name in ("g_lr_scale", "d_lr_scale"):
        scale = fo.get(name, 1.0)
        if isinstance(scale, int | float) and scale > 0 and not cfg.lr * scale < 1:
            raise ImagesynthError(
                f"lr x {name} = {cfg.lr} x {scale} = {cfg.lr * scale:g}; each phase's learning "
                "rate must be < 1"
            )


@train_app.command("gan")
def train_gan(
    data: Annotated[str | None, Opt(help="shapes | digits | photos | folder:PATH")] = None,
    size: Annotated[int | None, Opt(help="Image size: 8, 16, 32, 64, ... (4 x 2^k).")] = None,
    preset: Annotated[
        str | None,
        Opt(help="dcgan-tiny (default) | dcgan-small | dcgan-base | resnet-tiny | ... -base."),
    ] = None,
    cond: Annotated[str | None, Opt(help="none | class (class-conditional G and D).")] = None,
    cond_mode: Annotated[
        str | None, Opt(help="projection (default: projection D + conditional BN) | concat.")
    ] = None,
    loss: Annotated[str | None, Opt(help="hinge (default) | nonsat | minimax | wgan-gp.")] = None,
    augment: Annotated[
        str | None, Opt(help="none (default) | diffaugment | ada (adaptive probability).")
    ] = None,
    aug_policy: Annotated[
        str | None, Opt(help="Comma list of color, translation, cutout (default: all).")
    ] = None,
    r1_gamma: Annotated[float | None, Opt(help="R1 penalty weight (0 = off).")] = None,
    r1_every: Annotated[int | None, Opt(help="Lazy R1: every k D steps (default 4).")] = None,
    d_lr_scale: Annotated[float | None, Opt(help="D learning rate / --lr (TTUR).")] = None,
    g_lr_scale: Annotated[float | None, Opt(help="G learning rate / --lr.")] = None,
    g_every: Annotated[
        int | None, Opt(help="D steps per G step (default 1; 5 for wgan-gp).")
    ] = None,
    spectral_norm: Annotated[
        bool | None, Opt("--spectral-norm/--no-spectral-norm", help="Spectral norm in D.")
    ] = None,
    truncation: Annotated[float | None, Opt(help="Truncation psi of training grids.")] = None,
    steps: Annotated[int | None, Opt(help="Training steps (one D + one G step each).")] = None,
    minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    batch: Annotated[int | None, Opt(help="Batch per process (default 64).")] = None,
    grad_accum: Annotated[int | None, Opt(help="Gradient accumulation steps.")] = None,
    lr: Annotated[float | None, Opt(help="Learning rate (default 2e-4).")] = None,
    lr_schedule: Annotated[str | None, Opt(help="constant (default) | cosine.")] = None,
    warmup: Annotated[int | None, Opt(help="LR warmup steps (default 0).")] = None,
    clip_grad: Annotated[float | None, Opt(help="Max gradient norm (default 0 = off).")] = None,
    ema_decay: Annotated[float | None, Opt(help="EMA decay of G (default 0.999).")] = None,
    mixed_precision: Annotated[str | None, Opt(help="no | fp16 | bf16 (GPU only).")] = None,
    seed: Annotated[int | None, Opt(help="Seed of weights, data order and noise.")] = None,
    log_every: Annotated[int | None, Opt(help="Steps between stats.jsonl lines.")] = None,
    sample_every: Annotated[int | None, Opt(help="Steps between sample grids.")] = None,
    ckpt_every: Annotated[int | None, Opt(help="Steps between checkpoints.")] = None,
    keep: Annotated[int | None, Opt(help="Checkpoints kept (default 3).")] = None,
    runs_dir: Annotated[str | None, Opt(help="Where run directories go (default runs/).")] = None,
    tag: Annotated[str | None, Opt(help="Suffix of the run directory name.")] = None,
    resume: Annotated[str | None, Opt(help="latest | RUN_NUMBER | RUN_DIR to continue.")] = None,
    tensorboard: Annotated[
        bool | None, Opt("--tensorboard", help="Also log to TensorBoard.")
    ] = None,
    flip: Annotated[bool | None, Opt("--flip/--no-flip", help="Random horizontal flips.")] = None,
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
    """Train a GAN (DCGAN or ResNet SNGAN; unconditional or class-conditional)."""
    top = {
        "data": data, "size": size, "cond": cond, "steps": steps, "minutes": minutes,
        "batch": batch, "grad_accum": grad_accum, "lr": lr, "lr_schedule": lr_schedule,
        "warmup_steps": warmup, "clip_grad": clip_grad, "ema_decay": ema_decay,
        "mixed_precision": mixed_precision, "seed": seed, "log_every": log_every,
        "sample_every": sample_every, "ckpt_every": ckpt_every, "keep": keep,
        "runs_dir": runs_dir, "tag": tag, "tensorboard": tensorboard, "flip": flip,
    }  # fmt: skip
    given = {
        "preset": preset, "loss": loss, "cond": cond_mode, "augment": augment,
        "aug_policy": aug_policy, "r1_gamma": r1_gamma, "r1_every": r1_every,
        "d_lr_scale": d_lr_scale, "g_lr_scale": g_lr_scale, "g_every": g_every,
        "spectral_norm": spectral_norm, "truncation": truncation,
    }  # fmt: skip
    if not resume and given["preset"] is None:  # name the run dcgan-tiny, not the trainer's "tiny"
        given["preset"] = "dcgan-tiny"
    evals = eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best)
    cfg = family_config(
        "gan", top, given, fopt=fopt, opt=opt, evals=evals, resume=resume, defaults=GAN_DEFAULTS
    )
    check_gan_lr(cfg)
    _run_training(cfg, resume, dry_run, "G", sample_hint=True)


@train_app.command("vae")
def train_vae(
    data: Annotated[str | None, Opt(help="shapes | digits | photos | folder:PATH")] = None,
    size: Annotated[int | None, Opt(help="Image size: 8, 16, 32, 64, ... (4 x 2^k).")] = None,
    preset: Annotated[str | None, Opt(help="tiny (default) | small | base.")] = None,
    cond: Annotated[str | None, Opt(help="none | class (conditional VAE).")] = None,
    beta: Annotated[
        float | None, Opt(help="KL weight (1 = ELBO; beta-VAE otherwise; >= 0).")
    ] = None,
    latent_dim: Annotated[int | None, Opt(help="Latent size (default: the preset's).")] = None,
    reconstruction: Annotated[str | None, Opt(help="l2 (default) | l1 | bce.")] = None,
    sigma: Annotated[float | None, Opt(help="Std of p(x|z) for l2/l1 (default 0.2).")] = None,
    perceptual_weight: Annotated[
        float | None, Opt(help="Weight of the domain-feature perceptual term (0 = off).")
    ] = None,
    perceptual_extractor: Annotated[
        str | None, Opt(help="domain:NAME for the perceptual term (default domain:<data>).")
    ] = None,
    steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    batch: Annotated[int | None, Opt(help="Batch per process (default 64).")] = None,
    grad_accum: Annotated[int | None, Opt(help="Gradient accumulation steps.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (default 1e-3).")] = None,
    lr_schedule: Annotated[str | None, Opt(help="cosine | constant, after warmup.")] = None,
    warmup: Annotated[int | None, Opt(help="LR warmup steps (default 50).")] = None,
    clip_grad: Annotated[float | None, Opt(help="Max gradient norm (0 = off).")] = None,
    ema_decay: Annotated[float | None, Opt(help="EMA decay (default 0.999).")] = None,
    mixed_precision: Annotated[str | None, Opt(help="no | fp16 | bf16 (GPU only).")] = None,
    seed: Annotated[int | None, Opt(help="Seed.")] = None,
    log_every: Annotated[int | None, Opt(help="Steps between stats.jsonl lines.")] = None,
    sample_every: Annotated[int | None, Opt(help="Steps between sample grids.")] = None,
    ckpt_every: Annotated[int | None, Opt(help="Steps between checkpoints.")] = None,
    keep: Annotated[int | None, Opt(help="Checkpoints kept (default 3).")] = None,
    runs_dir: Annotated[str | None, Opt(help="Where run directories go.")] = None,
    tag: Annotated[str | None, Opt(help="Suffix of the run directory name.")] = None,
    resume: Annotated[str | None, Opt(help="latest | RUN_NUMBER | RUN_DIR.")] = None,
    tensorboard: Annotated[
        bool | None, Opt("--tensorboard", help="Also log to TensorBoard.")
    ] = None,
    flip: Annotated[bool | None, Opt("--flip/--no-flip", help="Random horizontal flips.")] = None,
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
    """Train a convolutional VAE / beta-VAE / conditional VAE (ELBO: reconstruction + KL)."""
    top = {
        "data": data, "size": size, "cond": cond, "steps": steps, "minutes": minutes,
        "batch": batch, "grad_accum": grad_accum, "lr": lr, "lr_schedule": lr_schedule,
        "warmup_steps": warmup, "clip_grad": clip_grad, "ema_decay": ema_decay,
        "mixed_precision": mixed_precision, "seed": seed, "log_every": log_every,
        "sample_every": sample_every, "ckpt_every": ckpt_every, "keep": keep,
        "runs_dir": runs_dir, "tag": tag, "tensorboard": tensorboard, "flip": flip,
    }  # fmt: skip
    given = {
        "preset": preset, "beta": beta, "latent_dim": latent_dim,
        "reconstruction": reconstruction, "sigma": sigma,
        "perceptual_weight": perceptual_weight, "perceptual_extractor": perceptual_extractor,
    }  # fmt: skip
    evals = eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best)
    cfg = family_config(
        "vae", top, given, fopt=fopt, opt=opt, evals=evals, resume=resume, defaults=VAE_DEFAULTS
    )
    _run_training(cfg, resume, dry_run, "vae", sample_hint=True)


def _class_index(pipe: Any, class_: str | None) -> int | None:
    if class_ is None:
        return None
    names = list(getattr(pipe, "class_names", []) or [])
    if class_ in names:
        return names.index(class_)
    if class_.lstrip("-").isdigit():
        return int(class_)
    raise ImagesynthError(f"unknown class {class_!r}; expected an index or one of {names}")


def interpolate(
    model: Annotated[
        Path, typer.Argument(help="GAN, VAE or VQ transformer model directory (or run directory).")
    ],
    from_seed: Annotated[int, Opt(help="Seed of the first latent.")] = 1,
    to_seed: Annotated[int, Opt(help="Seed of the last latent.")] = 2,
    frames: Annotated[int, Opt(help="Images in the strip (>= 2).")] = 16,
    out: Annotated[Path, Opt(help="Strip PNG to write.")] = Path("strip.png"),
    class_: Annotated[str | None, Opt("--class", help="Class index or name (all frames).")] = None,
    truncation: Annotated[float | None, Opt(help="Truncation psi in [0, 1].")] = None,
    device: Annotated[str | None, Opt(help="cpu | cuda | mps (default: best available).")] = None,
) -> None:
    """Write a strip of images along the path between two seeds' latents.

    GAN / VAE: slerp between the two z. VQ transformer: the two seeds' samples, blended
    linearly in the VQ-VAE's latent (its code vectors) and decoded. PixelCNN has no latent.
    """
    from ..api import load
    from ..io.images import make_grid
    from ..io.pngmeta import save_png
    from ..pipelines.latent_generators import strip_columns

    pipe = load(model, device=device)
    if getattr(pipe, "family", None) == "transformer":
        result = _interpolate_tokens(pipe, from_seed, to_seed, frames, class_, truncation)
    elif not hasattr(pipe, "interpolate"):
        family = getattr(pipe, "family", type(pipe).__name__)
        raise ImagesynthError(
            f"{model} is a {family} model; interpolate supports latent families: "
            f"{', '.join(LATENT_FAMILIES)}"
        )
    else:
        result = pipe.interpolate(
            from_seed,
            to_seed,
            frames,
            class_label=_class_index(pipe, class_),
            truncation=truncation,
        )
    path = "lerp in the VQ-VAE latent" if pipe.family == "transformer" else "slerp"
    strip = make_grid(result.images, nrow=strip_columns(frames))
    params = {**result.params[0], "frames": frames, "grid": f"{path} seed {from_seed} -> {to_seed}"}
    save_png(strip, out, params)
    typer.echo(f"wrote {out} ({frames} frames, seed {from_seed} -> {to_seed})")


def _interpolate_tokens(
    pipe: Any, from_seed: int, to_seed: int, frames: int, class_: str | None, truncation: Any
) -> Any:
    """The VQ transformer's strip (see `models.token_transformer.interpolate`)."""
    from ..io.images import tensor_to_pil
    from ..models.token_transformer import interpolate as interpolate_tokens
    from ..pipelines.diffusion import PipelineOutput
    from ..seeding import check_seed

    if truncation is not None:
        raise ImagesynthError("--truncation applies to GAN / VAE latents, not to a VQ transformer")
    check_seed(from_seed)
    check_seed(to_seed)
    label = _class_index(pipe, class_)
    x = interpolate_tokens(
        pipe.net, pipe.vqvae, from_seed=from_seed, to_seed=to_seed, frames=frames, label=label
    )
    params = pipe._params(frames, from_seed, None if label is None else [label] * frames, 1.0, None)
    for i, p in enumerate(params):
        p.update(
            {"seed": from_seed, "interpolate_to_seed": to_seed, "t": round(i / (frames - 1), 4)}
        )
    return PipelineOutput(images=tensor_to_pil(x), params=params)


def register(app: typer.Typer) -> None:
    """The `train gan|vae` commands register on import (train_app); add `interpolate`."""
    app.command("interpolate")(interpolate)
