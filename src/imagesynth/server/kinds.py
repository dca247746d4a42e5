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
from .jobs import JobContext, register_kind
from .schemas import (
    EstimateParams,
    EvalParams,
    GenerateParams,
    Img2ImgParams,
    InpaintParams,
    OutpaintParams,
    StyleParams,
    TextureParams,
    TrainParams,
    Txt2ImgParams,
    UpscaleParams,
)
from .security import HTTPFail, confine, decode_image

RUN_RE = re.compile(r"^\d{5}-[A-Za-z0-9._+-]{1,150}$")
ESTIMATE_PRESETS = ("tiny", "small", "base", "sd15", "sdxl", "sdxl-refiner")


def is_estimate_preset(name: str) -> bool:
    """A name the estimator takes without a model directory (any family's preset)."""
    if name in ESTIMATE_PRESETS:
        return True
    from ..estimator.families import preset_names

    return name in preset_names()


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
    if isinstance(params, EstimateParams) and not is_estimate_preset(params.model):
        app_state.models.path(params.model)
    if isinstance(params, UpscaleParams | StyleParams | TextureParams):
        inputs.update(prepare_tool(app_state, params))
    return inputs


# ----- generation ------------------------------------------------------------------------------
def _preview_b64(pipe: Any, x0: Any, side: int = 128) -> str:

    from ..io.images import tensor_to_pil

    x = pipe.decode(x0[:1]) if hasattr(pipe, "decode") else x0[:1].clamp(-1, 1)
    return _image_preview(tensor_to_pil(x.float().cpu())[0], side)


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


# ----- image tools: upscale, style, texture --------------------------------------------------
def _image_preview(im: Any, side: int = 128) -> str:
    """A small PNG (base64) of a PIL image: shrunk to `side` px, or enlarged by pixel repeats."""
    from PIL import Image

    im = im.convert("RGB")
    if max(im.size) > side:
        im = im.copy()
        im.thumbnail((side, side), Image.BILINEAR)
    elif max(im.size) * 2 <= side:
        k = side // max(im.size)
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _tensor_image(x: Any) -> Any:
    """(1, C, H, W) in [-1, 1] -> PIL."""
    from ..io.images import tensor_to_pil

    return tensor_to_pil(x.detach().float().cpu().clamp(-1, 1))[0]


class _Progress:
    """A loop callback: cancel / time cap checked every step, previews at most every 0.3 s."""

    def __init__(self, ctx: JobContext, total: int, preview: bool) -> None:
        self.ctx, self.total, self.preview, self.last = ctx, total, preview, 0.0

    def __call__(self, step: int, image: Any = None) -> None:
        self.ctx.check()  # cancel stops the loop here, within one step
        b64 = None
        now = time.monotonic()
        if self.preview and image is not None and (now - self.last >= 0.3 or step == self.total):
            self.last = now
            b64 = _image_preview(image() if callable(image) else image)
        self.ctx.progress(step, self.total, b64)


def _tool_image(data: str, what: str, s: Any, min_side: int, max_side: int) -> Any:
    """A decoded RGB input image of a tool job, its sides checked against the caps."""
    im = decode_image(data, what, s.max_pixels)
    if min(im.size) < min_side:
        raise ImagesynthError(
            f"{what} is {im.width}x{im.height} px; it must be at least {min_side}x{min_side} px"
        )
    if max(im.size) > max_side:
        raise ImagesynthError(
            f"{what} is {im.width}x{im.height} px; at most {max_side} px a side on this server"
        )
    return im.convert("RGB")


def prepare_tool(app_state: Any, params: BaseModel) -> dict[str, Any]:
    """Submission checks of the upscale / style / texture kinds (sizes, steps, images)."""
    s = app_state.settings
    inputs: dict[str, Any] = {}
    if isinstance(params, UpscaleParams):
        im = _tool_image(params.image, "image", s, 8, s.max_tool_side)
        out = max(im.size) * params.scale
        if out > s.max_upscale_side:
            raise ImagesynthError(
                f"x{params.scale} of a {im.width}x{im.height} image is {out} px a side; at most "
                f"{s.max_upscale_side} px on this server"
            )
        if params.method == "model":
            cfg_path = upscaler_path(app_state, params.model, params.scale) / "config.json"
            try:
                scale = int(json.loads(cfg_path.read_text()).get("scale", 2))
            except (OSError, ValueError, TypeError):
                raise ImagesynthError(f"model {params.model!r}: unreadable config.json") from None
            if params.scale != scale:
                name = params.model or f"upscaler-x{params.scale}"
                raise ImagesynthError(
                    f"model {name!r} upscales x{scale}, got scale {params.scale}; use an "
                    f"x{params.scale} model or method bicubic or lanczos"
                )
        inputs["image"] = im
    elif isinstance(params, StyleParams):
        if params.size > s.max_tool_side:
            raise ImagesynthError(f"size must be at most {s.max_tool_side} px, got {params.size}")
        if params.steps > s.max_tool_steps:
            raise ImagesynthError(f"steps must be at most {s.max_tool_steps}, got {params.steps}")
        w = params.style_weights
        if w is not None and (len(w) != len(params.styles) or sum(w) <= 0 or min(w) < 0):
            raise ImagesynthError(
                f"style_weights must be {len(params.styles)} numbers >= 0 with a positive sum, "
                f"got {w}"
            )
        big = 4 * s.max_tool_side  # inputs are resized to `size`; refuse absurd ones early
        inputs["content"] = _tool_image(params.content, "content", s, 16, big)
        inputs["styles"] = [
            _tool_image(d, f"styles[{i}]", s, 16, big) for i, d in enumerate(params.styles)
        ]
    elif isinstance(params, TextureParams):
        if params.mask is None and params.size > s.max_tool_side:  # fill keeps the sample size
            raise ImagesynthError(f"size must be at most {s.max_tool_side} px, got {params.size}")
        if params.method == "neural" and params.steps > s.max_tool_steps:
            raise ImagesynthError(f"steps must be at most {s.max_tool_steps}, got {params.steps}")
        sample = _tool_image(params.sample, "sample", s, 16, s.max_tool_side)
        inputs["sample"] = sample
        if params.mask is not None:
            mask = _tool_image(params.mask, "mask", s, 1, s.max_tool_side)
            if mask.size != sample.size:
                raise ImagesynthError(
                    f"mask is {mask.width}x{mask.height} px but the sample is "
                    f"{sample.width}x{sample.height} px; they must match"
                )
            inputs["mask"] = mask
        else:
            import numpy as np

            from ..classical.texture import default_block

            block = params.block or default_block(np.zeros((sample.height, sample.width)))
            if params.method == "quilting" and min(sample.size) <= block:
                raise ImagesynthError(
                    f"sample is {sample.width}x{sample.height} px; quilting with block {block} "
                    f"needs more than {block} px a side"
                )
    return inputs


def upscaler_path(app_state: Any, name: str | None, scale: int = 2) -> Path:
    """A named upscaler model of this server, or (no name) the bundled one for `scale`."""
    from .. import bundled

    if name is None:
        path = Path(bundled.__file__).resolve().parent / f"upscaler-x{scale}"
        if not (path / "imagesynth.json").is_file():
            raise ImagesynthError(
                f"no bundled x{scale} upscaler in this installation; use method bicubic or lanczos"
            )
        return path
    path = app_state.models.path(name)
    from .models import _family

    if _family(path) != "upscaler":
        raise ImagesynthError(f"model {name!r} is a {_family(path)} model, not an upscaler")
    return path


@register_kind("upscale", UpscaleParams, "Upscale x2 / x4 (learned model or bicubic / Lanczos).")
def upscale(ctx: JobContext, p: UpscaleParams) -> dict[str, Any]:
    from ..pipelines.upscale import classical_upscale

    im = ctx.job.extra["inputs"]["image"]
    ctx.check()
    if p.method != "model":
        ctx.progress(0, 1)
        out = classical_upscale(im, p.scale, p.method)
        params: dict[str, Any] = {"method": p.method, "scale": p.scale}
        ctx.progress(1, 1)
    else:
        pipe = ctx.manager.models.load_path(upscaler_path(ctx.manager.app_state, p.model, p.scale))
        cb = _Progress(ctx, 1, False)

        def on_tile(done: int, total: int) -> None:
            cb.total = total
            cb(done)

        res = pipe(im, scale=p.scale, tile=p.tile, overlap=p.overlap, callback=on_tile)
        out, params = res.images[0], {"method": "model", **res.params[0]}
        params["model"] = p.model or f"upscaler-x{p.scale}"
    ctx.check()
    params = {"prompt": f"upscale x{p.scale}", **params, "input_size": list(im.size)}
    return {"images": [ctx.save_image(out, params)]}


@register_kind("style", StyleParams, "Neural style transfer (Gatys et al.): content x style(s).")
def style(ctx: JobContext, p: StyleParams) -> dict[str, Any]:
    from ..classical.features import get_feature_net
    from ..classical.style import StyleOptions, _scales, style_transfer

    inputs = ctx.job.extra["inputs"]
    opts = StyleOptions(
        size=p.size,
        content_weight=p.content_weight,
        style_weight=p.style_weight,
        tv_weight=p.tv_weight,
        optimizer=p.optimizer,
        steps=p.steps,
        scales=p.scales,
        preserve_color=p.preserve_color,
        seed=p.seed,
        style_image_weights=list(p.style_weights or []),
    )
    levels = len(_scales(p.size, p.scales))  # the coarse-to-fine sizes style_transfer runs
    cb = _Progress(ctx, p.steps * levels, p.preview)

    def on_step(k: int, i: int, image: Any) -> None:
        cb(k * p.steps + i, image)

    ctx.check()
    image, record = style_transfer(
        inputs["content"],
        inputs["styles"],
        get_feature_net(p.features),
        opts,
        callback=on_step,
        save_every=1,
    )
    ctx.check()
    params = {"prompt": "style transfer", **record}
    return {"images": [ctx.save_image(image, params)]}


@register_kind("texture", TextureParams, "Texture synthesis from a sample, or hole filling.")
def texture(ctx: JobContext, p: TextureParams) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from ..classical import texture as tx

    inputs = ctx.job.extra["inputs"]
    sample = np.asarray(inputs["sample"], dtype=np.float32) / 255.0
    ctx.check()
    if "mask" in inputs:
        ctx.progress(0, 1)
        hole = np.asarray(inputs["mask"].convert("L"), dtype=np.float32) > 127.5
        arr = tx.fill(sample, hole, block=p.block or 15, seed=p.seed)
        params: dict[str, Any] = {"prompt": "texture fill", "block": p.block or 15}
    elif p.method == "neural":
        from ..classical.features import get_feature_net

        cb = _Progress(ctx, p.steps, p.preview)
        arr = tx.neural_texture(
            sample,
            p.size,
            get_feature_net(p.features),
            steps=p.steps,
            seed=p.seed,
            tile=p.tile,
            callback=lambda i, x: cb(i, lambda: _tensor_image(x)),
        )
        params = {"prompt": "texture", "steps": p.steps, "features": p.features}
    elif p.method == "efros-leung":
        cb = _Progress(ctx, 1, False)

        def on_pixels(done: int, total: int) -> None:
            cb.total = total
            cb(done)

        arr = tx.efros_leung(sample, p.size, seed=p.seed, tile=p.tile, callback=on_pixels)
        params = {"prompt": "texture"}
    else:
        ctx.progress(0, 1)  # quilting has no per-block hook: 0, then 1
        arr = tx.quilt(sample, p.size, block=p.block, seed=p.seed, tile=p.tile)
        params = {"prompt": "texture", "block": p.block}
    ctx.check()
    out = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
    if ctx.job.step < ctx.job.total or ctx.job.total == 0:
        ctx.progress(1, 1)
    params.update(method=p.method if "mask" not in inputs else "fill", seed=p.seed)
    if "mask" not in inputs:
        params.update(size=p.size, tile=p.tile)
    return {"images": [ctx.save_image(out, params)]}


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
    """Runs the library's Trainer in the worker thread through its public hooks.

    `on_step` reports progress and the loss; the job's cancel (and the time cap) call
    `trainer.request_stop`, after which the trainer saves a checkpoint, samples and the model.
    """
    from ..training.trainer import Trainer

    cfg, resume = ctx.job.extra["inputs"]["train"]
    total = cfg.steps or 0

    def on_step(trainer: Trainer, step: int, loss: float) -> bool:
        ctx.job.extra.setdefault("step0", step - 1)
        ctx.progress(step, total, loss=loss, run=trainer.run_dir.name)
        if ctx.timed_out:
            trainer.request_stop("timeout")
        return False

    trainer = Trainer(cfg, resume=resume, on_step=on_step)
    ctx.job.result = {"run": trainer.run_dir.name}
    ctx.on_cancel(lambda: trainer.request_stop("stopped"))  # stops before the next step
    ctx.progress(trainer.start_step, total, run=trainer.run_dir.name)
    res = trainer.train()
    last = res.stats[-1] if res.stats else {}
    stopped = res.stopped if res.stopped in ("stopped", "timeout") else None
    return {
        "run": res.run_dir.name,
        "step": res.step,
        "loss": last.get("loss"),
        "model": f"run:{res.run_dir.name}" if res.model_dir else None,
        "stopped": stopped,
        "finished": res.stopped,
    }


# ----- estimate and evaluate -------------------------------------------------------------------
def run_estimate(app_state: Any, p: EstimateParams) -> dict[str, Any]:
    from ..estimator import predict as est

    model = p.model if is_estimate_preset(p.model) else str(app_state.models.path(p.model))
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
    total = p.n + 1  # one unit per sampled image, the last one for features and metrics
    ctx.progress(0, total)

    def on_sample(done: int, n: int, info: Any) -> None:
        ctx.check()  # cancel stops the sampling within one denoising step
        if info is not None:  # inside a batch: the images-equivalent of the steps so far
            batch = min(64, n - done)
            done += batch * (info.i + 1) // max(1, info.total)
        if done != ctx.job.step:
            ctx.progress(done, total)

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
        callback=on_sample,
    )
    ctx.progress(total, total)
    return {
        "model": p.model,
        "scores": json.loads(json.dumps(result.get("scores", {}), default=str)),
        "text": format_scores(result["scores"]),
    }
