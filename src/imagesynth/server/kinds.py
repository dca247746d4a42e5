"""The job kinds: one handler each, registered by name in `jobs.KINDS`.

Adding a kind (upscale, style, texture, ...) is one parameter model in schemas.py and one
`@register_kind` function here. `prepare` runs at submission (in the request thread, cheap
checks and image decoding) so bad input gets a 4xx before the job is queued.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..errors import ImagesynthError, unknown_name
from .jobs import JobCancelled, JobContext, JobTimeout, register_kind
from .schemas import (
    EstimateParams,
    EvalParams,
    GenerateParams,
    Img2ImgParams,
    InpaintParams,
    OutpaintParams,
    TrainParams,
    Txt2ImgParams,
)
from .security import HTTPFail, confine, decode_image

RUN_RE = re.compile(r"^\d{5}-[A-Za-z0-9._+-]{1,150}$")
ESTIMATE_PRESETS = ("tiny", "small", "base", "sd15", "sdxl", "sdxl-refiner")
IMAGE_FIELDS = ("image", "mask")


# ----- submission-time checks -------------------------------------------------------------
def prepare(app_state: Any, kind: str, params: BaseModel) -> dict[str, Any]:
    """Check limits and names, decode images; returns the decoded inputs (kept in memory)."""
    s = app_state.settings
    inputs: dict[str, Any] = {}
    if isinstance(params, GenerateParams):
        if params.n > s.max_images:
            raise ImagesynthError(
                f"n must be at most {s.max_images} on this server, got {params.n}"
            )
        if params.steps > s.max_steps:
            raise ImagesynthError(f"steps must be at most {s.max_steps}, got {params.steps}")
        for side in ("width", "height"):
            v = getattr(params, side, None)
            if v is not None and v > s.max_side:
                raise ImagesynthError(f"{side} must be at most {s.max_side} px, got {v}")
        from ..sampling import resolve_sampler

        resolve_sampler(params.sampler)
        app_state.models.path(params.model)
        for name in IMAGE_FIELDS:
            data = getattr(params, name, None)
            if data is not None:
                im = decode_image(data, name, s.max_pixels)
                if max(im.size) > s.max_side:
                    raise ImagesynthError(
                        f"{name} is {im.width}x{im.height}; at most {s.max_side} px a side"
                    )
                inputs[name] = im
    if isinstance(params, TrainParams):
        inputs["train"] = train_config(app_state, params)
    if isinstance(params, EvalParams):
        app_state.models.path(params.model)
    if isinstance(params, EstimateParams) and params.model not in ESTIMATE_PRESETS:
        app_state.models.path(params.model)
    return inputs


# ----- generation ------------------------------------------------------------------------------
def _preview_b64(pipe: Any, x0: Any, side: int = 128) -> str:
    from PIL import Image

    from ..io.images import tensor_to_pil

    x = pipe.decode(x0[:1]) if hasattr(pipe, "decode") else x0[:1].clamp(-1, 1)
    im = tensor_to_pil(x.float().cpu())[0]
    scale = max(1, side // max(im.size))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _generate(ctx: JobContext, p: GenerateParams, recipe: str) -> dict[str, Any]:
    pipe = ctx.pipeline(p.model)
    text = hasattr(pipe, "img2img")
    if recipe != "txt2img" and not text:
        raise ImagesynthError(f"{recipe} needs a text-to-image model; {p.model!r} is not one")
    seed = random.randrange(2**31) if p.seed == -1 else p.seed
    last = [0.0]

    def callback(info: Any) -> None:
        ctx.check()  # cancel stops here, within one step
        preview = None
        now = time.monotonic()
        if p.preview and (now - last[0] >= 0.15 or info.i + 1 == info.total):
            last[0] = now
            preview = _preview_b64(pipe, info.x0)
        ctx.progress(info.i + 1, info.total, preview)

    kw: dict[str, Any] = {
        "n": p.n,
        "seed": seed,
        "steps": p.steps,
        "sampler": p.sampler,
        "callback": callback,
    }
    inputs = ctx.job.extra.get("inputs", {})
    if not text:
        labels = [p.class_label] if p.class_label is not None else None
        if labels is None and p.prompt:
            raise ImagesynthError(f"model {p.model!r} is not a text model; leave the prompt empty")
        out = pipe(class_labels=labels, guidance_scale=p.cfg_scale if labels else None, **kw)
    else:
        kw.update(
            negative_prompt=p.negative_prompt or None, guidance_scale=p.cfg_scale, prompt=p.prompt
        )
        if recipe == "txt2img":
            assert isinstance(p, Txt2ImgParams)
            size = None if p.width is None and p.height is None else (p.width, p.height)
            out = pipe(size=size, **kw)
        elif recipe == "img2img":
            assert isinstance(p, Img2ImgParams)
            out = pipe.img2img(inputs["image"], strength=p.strength, **kw)
        elif recipe == "inpaint":
            assert isinstance(p, InpaintParams)
            out = pipe.inpaint(inputs["image"], inputs["mask"], mask_blur=p.mask_blur, **kw)
        else:
            assert isinstance(p, OutpaintParams)
            pads = {k: getattr(p, k) for k in ("left", "right", "top", "bottom")}
            out = pipe.outpaint(inputs["image"], **pads, **kw)
    ctx.check()
    images = [ctx.save_image(im, prm) for im, prm in zip(out.images, out.params, strict=True)]
    return {"images": images, "seed": seed}


@register_kind("txt2img", Txt2ImgParams, "Text to image.")
def txt2img(ctx: JobContext, p: Txt2ImgParams) -> dict[str, Any]:
    return _generate(ctx, p, "txt2img")


@register_kind("img2img", Img2ImgParams, "Redraw an image toward a prompt (SDEdit).")
def img2img(ctx: JobContext, p: Img2ImgParams) -> dict[str, Any]:
    return _generate(ctx, p, "img2img")


@register_kind("inpaint", InpaintParams, "Repaint the white part of a mask.")
def inpaint(ctx: JobContext, p: InpaintParams) -> dict[str, Any]:
    return _generate(ctx, p, "inpaint")


@register_kind("outpaint", OutpaintParams, "Extend the canvas and paint the border.")
def outpaint(ctx: JobContext, p: OutpaintParams) -> dict[str, Any]:
    return _generate(ctx, p, "outpaint")


# ----- training ----------------------------------------------------------------------------
def find_run(runs_dir: Path, name: str) -> Path:
    """A run directory of this server by name (never a path)."""
    if not RUN_RE.match(name or ""):
        raise HTTPFail(404, "not_found", f"no run {name!r}")
    path = runs_dir / name
    if not (path / "config.json").is_file():
        raise HTTPFail(404, "not_found", f"no run {name!r}")
    return path


def train_config(app_state: Any, p: TrainParams) -> tuple[Any, str | None]:
    """(TrainConfig, resume path) for a train job; every name checked, folders confined."""
    from ..data import DATASETS
    from ..training.config import TrainConfig
    from ..training.trainer import FAMILIES

    s = app_state.settings
    if p.steps > s.max_train_steps:
        raise ImagesynthError(f"steps must be at most {s.max_train_steps}, got {p.steps}")
    if p.resume:
        run = find_run(s.runs_dir, p.resume)
        saved = json.loads((run / "config.json").read_text())
        saved.update(steps=p.steps, runs_dir=str(s.runs_dir), progress=False)
        if p.minutes is not None:
            saved["minutes"] = p.minutes
        try:
            cfg = TrainConfig(**saved).validate()
        except TypeError as exc:
            raise ImagesynthError(f"run {p.resume}: unreadable config ({exc})") from None
        return cfg, str(run)
    if p.family not in FAMILIES:
        raise unknown_name("model family", p.family, list(FAMILIES))
    data = p.data
    if data.startswith("folder:"):
        data = f"folder:{confine(s.data_root, data[len('folder:') :])}"
    elif data not in DATASETS or DATASETS[data].takes_path:
        names = [k for k, v in DATASETS.items() if not v.takes_path] + ["folder:REL"]
        raise unknown_name("dataset", data, names)
    fam: dict[str, Any] = {"preset": p.preset}
    if p.autoencoder:
        fam["autoencoder"] = str(app_state.models.path(p.autoencoder))
    cond = p.cond or ("text" if p.family == "latent-diffusion" else "none")
    data_options = {"length": p.length} if p.length is not None else {}
    steps = p.steps
    opts: dict[str, Any] = {
        "family": p.family,
        "data": data,
        "size": p.size,
        "cond": cond,
        "data_options": data_options,
        "family_options": fam,
        "steps": steps,
        "minutes": p.minutes,
        "batch": p.batch,
        "seed": p.seed,
        "log_every": p.log_every or max(1, steps // 200),
        "sample_every": p.sample_every or max(1, steps // 8),
        "ckpt_every": p.ckpt_every or max(1, steps // 4),
        "runs_dir": str(s.runs_dir),
        "tag": f"{p.preset}-web",
        "progress": False,
    }
    if p.lr is not None:
        opts["lr"] = p.lr
    return TrainConfig(**opts).validate(), None


@register_kind("train", TrainParams, "Train a model; stop keeps a checkpoint, resume goes on.")
def train(ctx: JobContext, p: TrainParams) -> dict[str, Any]:
    """Runs the library's Trainer in the worker thread; stop = the trainer's interrupt path.

    The trainer saves a checkpoint, samples and the model when interrupted; this subclass turns
    the job's cancel flag (and the time cap) into that interrupt at the next step.
    """
    from ..training.trainer import Trainer

    cfg, resume = ctx.job.extra["inputs"]["train"]
    stop_reason: list[str] = []

    class ServerTrainer(Trainer):
        def _train_step(self, step: int):  # type: ignore[override]
            try:
                ctx.check()
            except JobCancelled:
                stop_reason.append("stopped")
                raise KeyboardInterrupt from None
            except JobTimeout:
                stop_reason.append("timeout")
                raise KeyboardInterrupt from None
            out = super()._train_step(step)
            if "step0" not in ctx.job.extra:
                ctx.job.extra["step0"] = step
            ctx.progress(step + 1, cfg.steps or 0, loss=out[0], run=self.run_dir.name)
            return out

    trainer = ServerTrainer(cfg, resume=resume)
    ctx.job.result = {"run": trainer.run_dir.name}
    ctx.progress(trainer.start_step, cfg.steps or 0, run=trainer.run_dir.name)
    res = trainer.train()
    last = res.stats[-1] if res.stats else {}
    result = {
        "run": res.run_dir.name,
        "step": res.step,
        "loss": last.get("loss"),
        "model": f"run:{res.run_dir.name}" if res.model_dir else None,
        "stopped": stop_reason[0] if stop_reason else None,
        "finished": res.stopped,
    }
    return result


# ----- estimate and evaluate -------------------------------------------------------------------
def run_estimate(app_state: Any, p: EstimateParams) -> dict[str, Any]:
    from ..estimator import predict as est

    model = p.model if p.model in ESTIMATE_PRESETS else str(app_state.models.path(p.model))
    report = est.estimate(
        model,
        task=p.task,
        size=p.size,
        steps=p.steps,
        batch=p.batch,
        device=p.device,
        cfg=p.cfg,
    )
    return {"report": report.to_dict(), "text": report.table()}


@register_kind("estimate", EstimateParams, "Predict time and memory before running.")
def estimate(ctx: JobContext, p: EstimateParams) -> dict[str, Any]:
    ctx.progress(0, 1)
    out = run_estimate(ctx.manager.app_state, p)
    ctx.progress(1, 1)
    return out


@register_kind("eval", EvalParams, "FID / KID / IS / precision-recall of a model's samples.")
def evaluate(ctx: JobContext, p: EvalParams) -> dict[str, Any]:
    from ..metrics.evaluate import evaluate_model
    from ..metrics.protocol import format_scores

    ctx.check()
    ctx.progress(0, 1)
    path = ctx.manager.models.path(p.model)
    result = evaluate_model(
        path,
        p.ref,
        p.metrics,
        p.n,
        seed=p.seed,
        sampler=p.sampler,
        steps=p.steps,
        device=ctx.settings.device,
        progress=False,
    )
    ctx.progress(1, 1)
    return {
        "model": p.model,
        "scores": json.loads(json.dumps(result.get("scores", {}), default=str)),
        "text": format_scores(result["scores"]),
    }
