"""`imagesynth train pixelcnn | vqvae | transformer`: autoregressive families on the trainer."""

from __future__ import annotations

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

DataOpt = Annotated[str | None, Opt(help="shapes | digits | photos | textures | folder:PATH")]
SizeOpt = Annotated[int | None, Opt(help="Image size in px.")]
CondOpt = Annotated[str | None, Opt(help="none | class (class-conditional).")]
StepsOpt = Annotated[int | None, Opt(help="Optimizer steps.")]
MinutesOpt = Annotated[float | None, Opt(help="Wall-clock budget in minutes.")]
BatchOpt = Annotated[int | None, Opt(help="Batch per process (default 32).")]
LrOpt = Annotated[float | None, Opt(help="Peak learning rate (default 1e-3).")]
WarmupOpt = Annotated[int | None, Opt(help="LR warmup steps (default 100).")]
EmaOpt = Annotated[float | None, Opt(help="EMA decay (default 0.999).")]
SeedOpt = Annotated[int | None, Opt(help="Seed of weights, data order and sampling.")]
LogEveryOpt = Annotated[int | None, Opt(help="Steps between stats.jsonl lines.")]
SampleEveryOpt = Annotated[int | None, Opt(help="Steps between sample grids.")]
CkptEveryOpt = Annotated[int | None, Opt(help="Steps between checkpoints.")]
MixedOpt = Annotated[str | None, Opt(help="no | fp16 | bf16 (GPU only).")]
RunsDirOpt = Annotated[str | None, Opt(help="Where run directories go (default runs/).")]
TagOpt = Annotated[str | None, Opt(help="Suffix of the run directory name.")]
ResumeOpt = Annotated[str | None, Opt(help="latest | RUN_NUMBER | RUN_DIR to continue.")]
DataOptsOpt = Annotated[list[str] | None, Opt("--opt", help="Dataset option KEY=VALUE.")]
DryRunOpt = Annotated[bool, Opt("--dry-run", help="Print the resolved config and exit.")]


def _train(
    family: str,
    net: str,
    top: dict[str, Any],
    fam_given: dict[str, Any],
    fopt: list[str] | None,
    opt: list[str] | None,
    evals: dict[str, Any],
    resume: str | None,
    dry_run: bool,
) -> None:
    cfg = family_config(family, top, fam_given, fopt=fopt, opt=opt, evals=evals, resume=resume)
    _run_training(cfg, resume, dry_run, net)


@train_app.command("pixelcnn")
def train_pixelcnn(
    data: DataOpt = None,
    size: SizeOpt = None,
    cond: CondOpt = None,
    levels: Annotated[
        int | None, Opt(help="Levels per channel (default 16 gray, 6 RGB = 216 colours).")
    ] = None,
    quantize: Annotated[
        bool | None,
        Opt("--quantize/--no-quantize", help="Quantize data to --levels (default) or refuse it."),
    ] = None,
    width: Annotated[int | None, Opt(help="Channels per stack (default 64).")] = None,
    layers: Annotated[int | None, Opt(help="Gated layers (default 8).")] = None,
    steps: StepsOpt = None,
    minutes: MinutesOpt = None,
    batch: BatchOpt = None,
    lr: LrOpt = None,
    warmup: WarmupOpt = None,
    ema_decay: EmaOpt = None,
    seed: SeedOpt = None,
    log_every: LogEveryOpt = None,
    sample_every: SampleEveryOpt = None,
    ckpt_every: CkptEveryOpt = None,
    mixed_precision: MixedOpt = None,
    runs_dir: RunsDirOpt = None,
    tag: TagOpt = None,
    resume: ResumeOpt = None,
    eval_every: EvalEveryOpt = None,
    eval_n: EvalNOpt = None,
    eval_metrics: EvalMetricsOpt = None,
    eval_ref: EvalRefOpt = None,
    eval_extractor: EvalExtractorOpt = None,
    eval_best: EvalBestOpt = None,
    opt: DataOptsOpt = None,
    fopt: FOptOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train a gated PixelCNN (one pixel at a time; class-conditional with --cond class)."""
    top = {
        "data": data, "size": size, "cond": cond, "steps": steps, "minutes": minutes,
        "batch": batch, "lr": lr, "warmup_steps": warmup, "ema_decay": ema_decay, "seed": seed,
        "log_every": log_every, "sample_every": sample_every, "ckpt_every": ckpt_every,
        "mixed_precision": mixed_precision, "runs_dir": runs_dir, "tag": tag,
    }  # fmt: skip
    given = {"levels": levels, "quantize": quantize, "width": width, "layers": layers}
    evals = eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best)
    _train("pixelcnn", "pixelcnn", top, given, fopt, opt, evals, resume, dry_run)


@train_app.command("vqvae")
def train_vqvae(
    data: DataOpt = None,
    size: SizeOpt = None,
    factor: Annotated[int | None, Opt(help="Downsampling 2 | 4 | 8 (tokens (size/f)^2).")] = None,
    codebook_size: Annotated[int | None, Opt(help="Codebook entries (default 256).")] = None,
    code_dim: Annotated[int | None, Opt(help="Code vector size (default 32).")] = None,
    beta: Annotated[float | None, Opt(help="Commitment weight (default 0.25).")] = None,
    steps: StepsOpt = None,
    minutes: MinutesOpt = None,
    batch: BatchOpt = None,
    lr: LrOpt = None,
    warmup: WarmupOpt = None,
    seed: SeedOpt = None,
    log_every: LogEveryOpt = None,
    sample_every: SampleEveryOpt = None,
    ckpt_every: CkptEveryOpt = None,
    mixed_precision: MixedOpt = None,
    runs_dir: RunsDirOpt = None,
    tag: TagOpt = None,
    resume: ResumeOpt = None,
    opt: DataOptsOpt = None,
    fopt: FOptOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train a VQ-VAE (EMA codebook): the token space for `train transformer`."""
    top = {
        "data": data, "size": size, "steps": steps, "minutes": minutes, "batch": batch,
        "lr": lr, "warmup_steps": warmup, "seed": seed, "log_every": log_every,
        "sample_every": sample_every, "ckpt_every": ckpt_every,
        "mixed_precision": mixed_precision, "runs_dir": runs_dir, "tag": tag, "cond": "none",
    }  # fmt: skip
    given = {"factor": factor, "codebook_size": codebook_size, "code_dim": code_dim, "beta": beta}
    _train("vqvae", "vqvae", top, given, fopt, opt, {}, resume, dry_run)


@train_app.command("transformer")
def train_transformer(
    vqvae: Annotated[
        str | None, Opt(help="Trained VQ-VAE model dir (imagesynth train vqvae).")
    ] = None,
    data: DataOpt = None,
    size: SizeOpt = None,
    cond: CondOpt = None,
    dim: Annotated[int | None, Opt(help="Model width (default 128).")] = None,
    layers: Annotated[int | None, Opt(help="Transformer blocks (default 4).")] = None,
    heads: Annotated[int | None, Opt(help="Attention heads (default 4).")] = None,
    dropout: Annotated[float | None, Opt(help="Dropout (default 0.1).")] = None,
    steps: StepsOpt = None,
    minutes: MinutesOpt = None,
    batch: BatchOpt = None,
    lr: LrOpt = None,
    warmup: WarmupOpt = None,
    ema_decay: EmaOpt = None,
    seed: SeedOpt = None,
    log_every: LogEveryOpt = None,
    sample_every: SampleEveryOpt = None,
    ckpt_every: CkptEveryOpt = None,
    mixed_precision: MixedOpt = None,
    runs_dir: RunsDirOpt = None,
    tag: TagOpt = None,
    resume: ResumeOpt = None,
    eval_every: EvalEveryOpt = None,
    eval_n: EvalNOpt = None,
    eval_metrics: EvalMetricsOpt = None,
    eval_ref: EvalRefOpt = None,
    eval_extractor: EvalExtractorOpt = None,
    eval_best: EvalBestOpt = None,
    opt: DataOptsOpt = None,
    fopt: FOptOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Train a GPT-style prior over a VQ-VAE's tokens (class start token with --cond class)."""
    if vqvae is None and not resume and not any(f.startswith("vqvae=") for f in fopt or []):
        raise ImagesynthError(
            "the transformer prior needs --vqvae MODEL_DIR (train one with `imagesynth train "
            "vqvae`)"
        )
    top = {
        "data": data, "size": size, "cond": cond, "steps": steps, "minutes": minutes,
        "batch": batch, "lr": lr, "warmup_steps": warmup, "ema_decay": ema_decay, "seed": seed,
        "log_every": log_every, "sample_every": sample_every, "ckpt_every": ckpt_every,
        "mixed_precision": mixed_precision, "runs_dir": runs_dir, "tag": tag,
    }  # fmt: skip
    given = {"vqvae": vqvae, "dim": dim, "layers": layers, "heads": heads, "dropout": dropout}
    evals = eval_overrides(eval_every, eval_n, eval_metrics, eval_ref, eval_extractor, eval_best)
    _train("transformer", "transformer", top, given, fopt, opt, evals, resume, dry_run)


def register(app: typer.Typer) -> None:
    """The commands attach to `train_app` on import; nothing else to add."""
