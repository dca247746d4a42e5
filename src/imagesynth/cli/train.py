"""`imagesynth train <family>`: options in, TrainConfig out, the trainer does the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ImagesynthError

train_app = typer.Typer(
    help="Train a model family on a dataset (a run directory per run).", no_args_is_help=True
)

Opt = typer.Option


def _data_options(opts: list[str] | None) -> dict[str, Any]:
    from .main import _options

    return _options(opts)


def build_config(overrides: dict[str, Any], resume: str | None) -> Any:
    """Defaults <- (the resumed run's saved config) <- options given on the command line."""
    from ..io.rundir import find_run
    from ..training.config import TrainConfig

    base: dict[str, Any] = {}
    if resume:
        cfg_dir = overrides.get("runs_dir") or TrainConfig.runs_dir
        run = find_run(cfg_dir, resume)
        base = json.loads((run / "config.json").read_text())
    merged = {**base}
    for k, v in overrides.items():
        if k in ("data_options", "family_options") and k in merged:
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    try:
        return TrainConfig(**merged)
    except TypeError as exc:
        raise ImagesynthError(f"bad training option: {exc}") from None


# evaluation during training: the same six options on every `train <family>` command
EvalEveryOpt = Annotated[
    int | None, Opt(help="Evaluate every N steps (metrics.jsonl, plots/, best/); 0 = off.")
]
EvalNOpt = Annotated[int | None, Opt(help="Samples per evaluation (default 2000).")]
EvalMetricsOpt = Annotated[
    str | None, Opt(help="Set metrics: fid,kid (default), is, precision, recall, acc.")
]
EvalRefOpt = Annotated[str | None, Opt(help="Reference data (default: the training data).")]
EvalExtractorOpt = Annotated[
    str | None, Opt(help="domain:NAME | inception:PATH | random (default: domain extractor).")
]
EvalBestOpt = Annotated[
    str | None, Opt(help="Metric that picks the kept best/ model (default: the first).")
]


def eval_overrides(
    eval_every: int | None,
    eval_n: int | None,
    eval_metrics: str | None,
    eval_ref: str | None,
    eval_extractor: str | None,
    eval_best: str | None,
) -> dict[str, Any]:
    """TrainConfig keys for the evaluation options that were given."""
    given = {
        "eval_every": eval_every,
        "eval_n": eval_n,
        "eval_metrics": eval_metrics,
        "eval_ref": eval_ref,
        "eval_extractor": eval_extractor,
        "eval_best": eval_best,
    }
    return {k: v for k, v in given.items() if v is not None}


@train_app.command("diffusion")
def train_diffusion(
    data: Annotated[
        str | None, Opt(help="shapes | digits | photos | textures | folder:PATH")
    ] = None,
    size: Annotated[
        int | None, Opt(help="Image size in px (divisible by the UNet's factor).")
    ] = None,
    preset: Annotated[
        str | None, Opt(help="tiny (~1.1 M) | small (~6.5 M) | base (~37 M).")
    ] = None,
    cond: Annotated[str | None, Opt(help="none | class (class-conditional, CFG-ready).")] = None,
    steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    batch: Annotated[int | None, Opt(help="Batch per process (default 32).")] = None,
    grad_accum: Annotated[int | None, Opt(help="Gradient accumulation steps.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate (default 1e-3).")] = None,
    lr_schedule: Annotated[str | None, Opt(help="cosine | constant, after warmup.")] = None,
    warmup: Annotated[int | None, Opt(help="LR warmup steps (default 100).")] = None,
    clip_grad: Annotated[float | None, Opt(help="Max gradient norm (0 = off).")] = None,
    ema_decay: Annotated[float | None, Opt(help="EMA decay (default 0.999).")] = None,
    objective: Annotated[str | None, Opt(help="eps | v | x0.")] = None,
    schedule: Annotated[str | None, Opt(help="linear | cosine | scaled-linear.")] = None,
    min_snr: Annotated[
        float | None, Opt(help="Min-SNR-gamma weighting (default 5; 0 = off).")
    ] = None,
    offset_noise: Annotated[float | None, Opt(help="Offset noise strength (default 0).")] = None,
    class_dropout: Annotated[float | None, Opt(help="Label dropout for CFG (default 0.1).")] = None,
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
    channels_last: Annotated[bool | None, Opt("--channels-last/--no-channels-last")] = None,
    eval_every: EvalEveryOpt = None,
    eval_n: EvalNOpt = None,
    eval_metrics: EvalMetricsOpt = None,
    eval_ref: EvalRefOpt = None,
    eval_extractor: EvalExtractorOpt = None,
    eval_best: EvalBestOpt = None,
    opt: Annotated[list[str] | None, Opt("--opt", help="Dataset option KEY=VALUE.")] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the resolved config and exit.")] = False,
) -> None:
    """Train a pixel diffusion model (diffusers UNet2DModel) on any dataset."""
    top = {
        "data": data,
        "size": size,
        "cond": cond,
        "steps": steps,
        "minutes": minutes,
        "batch": batch,
        "grad_accum": grad_accum,
        "lr": lr,
        "lr_schedule": lr_schedule,
        "warmup_steps": warmup,
        "clip_grad": clip_grad,
        "ema_decay": ema_decay,
        "mixed_precision": mixed_precision,
        "seed": seed,
        "log_every": log_every,
        "sample_every": sample_every,
        "ckpt_every": ckpt_every,
        "keep": keep,
        "runs_dir": runs_dir,
        "tag": tag,
        "tensorboard": tensorboard,
        "flip": flip,
        "channels_last": channels_last,
    }
    overrides: dict[str, Any] = {k: v for k, v in top.items() if v is not None}
    overrides["family"] = "diffusion"
    overrides.update(
        eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best)
    )
    fam = {
        "preset": preset,
        "objective": objective,
        "schedule": schedule,
        "offset_noise": offset_noise,
        "class_dropout": class_dropout,
    }
    fam = {k: v for k, v in fam.items() if v is not None}
    if min_snr is not None:
        fam["min_snr_gamma"] = None if min_snr == 0 else min_snr
    if fam:
        overrides["family_options"] = fam
    if opt:
        overrides["data_options"] = _data_options(opt)
    cfg = build_config(overrides, resume).validate()
    _run_training(cfg, resume, dry_run, "unet", sample_hint=True)


def _run_training(
    cfg: Any, resume: str | None, dry_run: bool, net: str, sample_hint: bool = False
) -> None:
    """Shared tail of the train commands: --dry-run report, or train and print where.

    `net` names the network whose size --dry-run reports; `sample_hint` prints the
    `imagesynth sample` command for the trained model.
    """
    if dry_run:
        from ..training.trainer import build_family, load_data

        typer.echo(json.dumps(cfg.to_dict(), indent=2))
        data_t, info, _ = load_data(cfg, progress=False)
        family = build_family(cfg, info)
        params = sum(p.numel() for p in family.nets[net].parameters())
        classes = f", {info.num_classes} classes" if info.num_classes else ""
        typer.echo(
            f"dataset: {len(data_t)} images of {info.size} px{classes}; "
            f"{net}: {params / 1e6:.2f} M parameters"
        )
        return
    from ..training.trainer import Trainer

    result = Trainer(cfg, resume=resume).train()
    if result.model_dir is not None:
        last = result.stats[-1] if result.stats else {}
        typer.echo(
            f"{result.stopped} at step {result.step}"
            + (f", loss {last['loss']:.4f}" if "loss" in last else "")
            + f"\nrun:   {result.run_dir}\nmodel: {result.model_dir}"
        )
        if (result.run_dir / "best.json").is_file():
            best = json.loads((result.run_dir / "best.json").read_text())
            typer.echo(
                f"best:  {result.run_dir / 'best'} (step {best['step']}, "
                f"{best['metric']} {best['values'][best['metric']]:.4g})"
            )
        if sample_hint:
            typer.echo(f"sample: imagesynth sample {result.model_dir} --out grid.png")


def _family_options(fopts: list[str] | None, given: dict[str, Any]) -> dict[str, Any]:
    from .main import _options

    out = {k: v for k, v in given.items() if v is not None}
    out.update(_options(fopts))
    return out


def family_config(
    family: str,
    top: dict[str, Any],
    given: dict[str, Any],
    *,
    fopt: list[str] | None,
    opt: list[str] | None,
    evals: dict[str, Any],
    resume: str | None,
    defaults: dict[str, Any] | None = None,
    cond: str | None = None,
) -> Any:
    """The validated TrainConfig of a `train <family>` command: the trainer options given
    (`top`), `defaults` for a new run, family options (`given` + --fopt), data options (--opt)
    and the evaluation options."""
    overrides: dict[str, Any] = {k: v for k, v in top.items() if v is not None}
    if not resume:
        for k, v in (defaults or {}).items():
            overrides.setdefault(k, v)
    overrides["family"] = family
    if cond is not None:
        overrides["cond"] = cond
    overrides.update(evals)
    fam = _family_options(fopt, given)
    if fam:
        overrides["family_options"] = fam
    if opt:
        overrides["data_options"] = _data_options(opt)
    return build_config(overrides, resume).validate()


FOptOpt = Annotated[
    list[str] | None, Opt("--fopt", help="Family option KEY=VALUE (see --dry-run output).")
]


@train_app.command("autoencoder")
def train_autoencoder(
    data: Annotated[str | None, Opt(help="shapes | digits | photos | folder:PATH")] = None,
    size: Annotated[int | None, Opt(help="Image size in px (multiple of the factor).")] = None,
    preset: Annotated[str | None, Opt(help="tiny (f=4) | small (f=4) | small-f8.")] = None,
    kl_weight: Annotated[float | None, Opt(help="KL weight per latent element.")] = None,
    adv_weight: Annotated[
        float | None, Opt(help="Patch-adversarial weight (0 = off, try 0.05).")
    ] = None,
    steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    batch: Annotated[int | None, Opt(help="Batch per process.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    warmup: Annotated[int | None, Opt(help="LR warmup steps.")] = None,
    seed: Annotated[int | None, Opt(help="Seed.")] = None,
    sample_every: Annotated[int | None, Opt(help="Steps between reconstruction grids.")] = None,
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
    """Train a KL autoencoder (diffusers AutoencoderKL): the latent space for latent diffusion."""
    top = {
        "data": data,
        "size": size,
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
    cfg = family_config(
        "autoencoder",
        top,
        {"preset": preset, "kl_weight": kl_weight, "adv_weight": adv_weight},
        fopt=fopt,
        opt=opt,
        evals=eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best),
        resume=resume,
        cond="none",
    )
    _run_training(cfg, resume, dry_run, "vae")


@train_app.command("latent-diffusion")
def train_latent_diffusion(
    autoencoder: Annotated[
        str | None, Opt(help="Trained autoencoder model dir (imagesynth train autoencoder).")
    ] = None,
    data: Annotated[
        str | None, Opt(help="shapes | folder:PATH (captions from .txt / metadata.jsonl)")
    ] = None,
    text: Annotated[
        bool, Opt("--text/--no-text", help="Condition on captions (the only mode so far).")
    ] = True,
    text_encoder: Annotated[
        str | None, Opt(help="minilm (default, offline) | a transformers text-encoder folder.")
    ] = None,
    size: Annotated[int | None, Opt(help="Image size in px.")] = None,
    preset: Annotated[str | None, Opt(help="tiny (~4.6 M) | small (~17 M).")] = None,
    objective: Annotated[str | None, Opt(help="eps | v | x0 (default v).")] = None,
    schedule: Annotated[str | None, Opt(help="linear | cosine | scaled-linear.")] = None,
    text_dropout: Annotated[float | None, Opt(help="Empty-prompt rate for CFG.")] = None,
    steps: Annotated[int | None, Opt(help="Optimizer steps.")] = None,
    minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    batch: Annotated[int | None, Opt(help="Batch per process.")] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate.")] = None,
    warmup: Annotated[int | None, Opt(help="LR warmup steps.")] = None,
    ema_decay: Annotated[float | None, Opt(help="EMA decay.")] = None,
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
    """Train a text-to-image latent diffusion model on captioned images."""
    if not text:
        raise ImagesynthError("latent diffusion trains on captions here; keep --text")
    top = {
        "data": data,
        "size": size,
        "steps": steps,
        "minutes": minutes,
        "batch": batch,
        "lr": lr,
        "warmup_steps": warmup,
        "ema_decay": ema_decay,
        "seed": seed,
        "sample_every": sample_every,
        "ckpt_every": ckpt_every,
        "mixed_precision": mixed_precision,
        "runs_dir": runs_dir,
        "tag": tag,
    }
    given = {
        "autoencoder": autoencoder,
        "text_encoder": text_encoder,
        "preset": preset,
        "objective": objective,
        "schedule": schedule,
        "text_dropout": text_dropout,
    }
    cfg = family_config(
        "latent-diffusion",
        top,
        given,
        fopt=fopt,
        opt=opt,
        evals=eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best),
        resume=resume,
        cond="text",
    )
    _run_training(cfg, resume, dry_run, "unet")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("sample")(sample)


def _save_steps_list(steps: int) -> list[int]:
    """Columns of the denoising strip: 1 step ... all steps (up to 6 columns)."""
    picks = {1, steps}
    for frac in (0.1, 0.25, 0.5, 0.75):
        picks.add(max(1, round(steps * frac)))
    return sorted(picks)


def sample(
    model: Annotated[Path, typer.Argument(help="Model directory (or a run directory).")],
    out: Annotated[Path, Opt(help="Grid PNG to write.")] = Path("grid.png"),
    n: Annotated[int, Opt(help="Number of images.")] = 16,
    seed: Annotated[int, Opt(help="Seed of the first image (image i uses seed + i).")] = 0,
    sampler: Annotated[
        str | None,
        Opt(help="Diffusion: ddpm | ddim | dpmpp-2m (default) | euler | euler-a | heun | unipc"),
    ] = None,
    steps: Annotated[int | None, Opt(help="Denoising steps (diffusion; default 20).")] = None,
    class_: Annotated[str | None, Opt("--class", help="Class index or name (all images).")] = None,
    cfg: Annotated[float | None, Opt(help="Classifier-free guidance scale.")] = None,
    temperature: Annotated[
        float | None, Opt(help="Sampling temperature (autoregressive families).")
    ] = None,
    top_k: Annotated[
        int | None, Opt(help="Keep the k most likely values (autoregressive families).")
    ] = None,
    truncation: Annotated[
        float | None, Opt(help="Truncation psi in [0, 1] toward the mean latent (gan, vae).")
    ] = None,
    out_dir: Annotated[Path | None, Opt(help="Also write each image here.")] = None,
    save_steps: Annotated[Path | None, Opt(help="Write a denoising-progression strip PNG.")] = None,
    device: Annotated[str | None, Opt(help="cpu | cuda | mps (default: best available).")] = None,
) -> None:
    """Sample images from a trained model into a grid PNG (parameters in its metadata)."""
    import math

    from ..api import load
    from ..io.images import make_grid
    from ..io.pngmeta import save_png
    from ..pipelines.diffusion import steps_strip

    if n < 1:
        raise ImagesynthError(f"n must be >= 1, got {n}")
    if steps is not None and steps < 1:
        raise ImagesynthError(f"steps must be >= 1, got {steps}")
    pipe = load(model, device=device)
    if hasattr(pipe, "img2img"):
        raise ImagesynthError(
            f"{model} is a text-to-image model: use `imagesynth generate PROMPT --model {model}`"
        )
    family = getattr(pipe, "family", None)
    if not isinstance(family, str):
        from ..api import resolve_model_dir
        from ..io.model_dir import load_model

        try:
            family = load_model(resolve_model_dir(model)).family
        except ImagesynthError:  # a diffusers folder has no imagesynth.json
            family = "diffusion"
    if not getattr(pipe, "uses_sampler", True):  # one network pass per image (gan, vae)
        given = [f"--{k}" for k, v in (("sampler", sampler), ("steps", steps)) if v is not None]
        if save_steps is not None:
            given.append("--save-steps")
        if given:
            raise ImagesynthError(
                f"{family} models sample in one pass; {', '.join(given)} do not apply"
            )
    # only the options the user gave reach the pipeline (each family refuses what it lacks)
    extra = {
        k: v
        for k, v in (("temperature", temperature), ("top_k", top_k), ("truncation", truncation))
        if v is not None
    }
    if extra:
        import inspect

        accepted = inspect.signature(pipe.__call__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        for k in extra:
            if not takes_any and k not in accepted:
                flag = "--" + k.replace("_", "-")
                raise ImagesynthError(f"{family} models do not take {flag}")
    sampler = sampler or "dpmpp-2m"
    steps = steps or 20
    labels = None
    if class_ is not None:
        names = list(pipe.class_names)
        if class_ in names:
            labels = [names.index(class_)]
        elif class_.lstrip("-").isdigit():
            labels = [int(class_)]
        else:
            raise ImagesynthError(f"unknown class {class_!r}; expected an index or one of {names}")
    keep = _save_steps_list(steps) if save_steps else None
    result = pipe(
        n=n,
        seed=seed,
        sampler=sampler,
        steps=steps,
        class_labels=labels,
        guidance_scale=cfg,
        save_steps=keep,
        progress=True,
        **extra,
    )
    grid = make_grid(result.images, nrow=math.ceil(math.sqrt(n)))
    grid_params = {**result.params[0], "n": n, "grid": f"seeds {seed}..{seed + n - 1}"}
    save_png(grid, out, grid_params)
    typer.echo(f"wrote {out}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, (im, p) in enumerate(zip(result.images, result.params, strict=True)):
            save_png(im, out_dir / f"{seed + i:06d}.png", p)
        typer.echo(f"wrote {n} images to {out_dir}")
    if save_steps is not None:
        strip = steps_strip(result.steps_x0)
        save_png(strip, save_steps, {**grid_params, "save_steps": keep})
        typer.echo(f"wrote {save_steps} (predicted x0 after steps {keep})")
