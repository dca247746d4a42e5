"""`imagesynth estimate`: predicted time and memory before running (see estimator/)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import ImagesynthError

Opt = typer.Option


def estimate(
    model: Annotated[
        str | None,
        Opt(
            help="tiny | small | base | sd15 | sdxl | sdxl-refiner | gan[:PRESET] | "
            "vae[:PRESET] | pixelcnn | vqvae | upscaler[:PRESET] | restorer | MODEL_DIR "
            "(any family's)."
        ),
    ] = None,
    task: Annotated[str, Opt(help="generate | train.")] = "generate",
    size: Annotated[int | None, Opt(help="Image size in px (default: the model's).")] = None,
    steps: Annotated[int, Opt(help="Denoising steps (generate).")] = 30,
    batch: Annotated[int, Opt(help="Images per batch.")] = 1,
    dtype: Annotated[
        str | None, Opt(help="fp16 | bf16 | fp32 (default fp16 on GPUs, fp32 on CPU).")
    ] = None,
    device: Annotated[
        str,
        Opt(help="rtx4090 | rtx3090 | a100-40g | a100-80g | h100 | l4 | t4 | a10g | v100 | cpu."),
    ] = "cpu",
    cfg: Annotated[
        bool, Opt("--cfg", help="Classifier-free guidance (2 x batch per UNet call).")
    ] = False,
    attention: Annotated[str, Opt(help="sdpa | slicing.")] = "sdpa",
    resolution: Annotated[
        int | None, Opt(help="Quick mode: image size (with --complexity).")
    ] = None,
    complexity: Annotated[
        int | None,
        Opt(help="Quick mode: 1..5 (1 tiny, 2 small, 3 SD 1.5, 4 SDXL, 5 SDXL+refiner)."),
    ] = None,
    gpu_speed: Annotated[
        float | None, Opt(help="Quick mode: GPU speed relative to an RTX 4090 (1.0).")
    ] = None,
    calibrate: Annotated[
        bool, Opt("--calibrate", help="Measure this machine and store its device profile.")
    ] = False,
    quick_calibration: Annotated[
        bool, Opt("--quick-calibration", help="With --calibrate: smaller, ~1 s measurement.")
    ] = False,
    measure: Annotated[
        bool, Opt("--measure", help="Also run the workload briefly here; print both.")
    ] = False,
    as_json: Annotated[bool, Opt("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Predict time per image, images per hour and peak memory, and whether it fits."""
    from ..estimator import devices
    from ..estimator import predict as est

    if calibrate:
        prof = devices.calibrate(quick=quick_calibration)
        if as_json:
            typer.echo(json.dumps(prof.to_dict(), indent=2))
        else:
            m = prof.measured
            typer.echo(
                f"matmul {m['matmul_gflops']:.1f} GFLOP/s, conv {m['conv_gflops']:.1f} GFLOP/s, "
                f"bandwidth {m['bandwidth_gbs']:.1f} GB/s, op {prof.launch_us:.1f} us, "
                f"module call {prof.module_us:.1f} us\nwrote {devices.profile_path()}"
            )
        if model is None and complexity is None:
            return
    quick = complexity is not None or gpu_speed is not None
    if quick:
        if model is not None:
            raise ImagesynthError("give either --model (exact mode) or --complexity (quick mode)")
        report = est.quick_estimate(
            resolution=resolution or size or 512,
            steps=steps,
            complexity=3 if complexity is None else complexity,
            gpu_speed=1.0 if gpu_speed is None else gpu_speed,
            batch=batch,
        )
    else:
        report = est.estimate(
            model or "tiny",
            task=task,
            size=size or resolution,
            steps=steps,
            batch=batch,
            dtype=dtype,
            device=device,
            cfg=cfg,
            attention=attention,
        )
    if measure:
        if quick:
            raise ImagesynthError("--measure needs --model (a preset or model directory)")
        if report.device != "cpu":
            raise ImagesynthError(
                f"--measure runs on this machine's CPU; use --device cpu, not {report.device!r}"
            )
        report.measured = est.measure(
            model or "tiny", task=task, size=report.size, steps=steps, batch=batch, cfg=cfg
        )
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.table())


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)
