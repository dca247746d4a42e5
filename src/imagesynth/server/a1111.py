"""An AUTOMATIC1111-compatible subset (/sdapi/v1) so existing clients work unchanged.

Field names, defaults and response shapes follow A1111's API (`{images, parameters, info}`
with `info` a JSON string); requests run through the same job queue as /api/v1. One deviation:
width / height default to the model's native size instead of 512.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from fastapi import APIRouter, Query, Request

from ..io.pngmeta import A1111_LABELS, format_parameters, read_png_metadata
from .schemas import (
    A1111Images,
    A1111Img2Img,
    A1111PngInfo,
    A1111PngInfoRequest,
    A1111Txt2Img,
    ErrorBody,
)
from .security import HTTPFail

router = APIRouter(
    prefix="/sdapi/v1", tags=["automatic1111"], responses={400: {"model": ErrorBody}}
)
DEFAULT_SAMPLER = "DPM++ 2M"


def _state(request: Request) -> Any:
    return request.app.state.imagesynth


def _model(body: A1111Txt2Img) -> str | None:
    opts = body.override_settings or {}
    name = opts.get("sd_model_checkpoint")
    if isinstance(name, str) and name:
        return name.split(" [")[0]  # titles look like "name [hash]"
    return None


def _common(body: A1111Txt2Img) -> dict[str, Any]:
    return {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "model": _model(body),
        "seed": body.seed,
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "sampler": body.sampler_name or body.sampler_index or DEFAULT_SAMPLER,
        "n": body.batch_size * body.n_iter,
        "preview": True,
    }


async def _run(request: Request, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Queue a job and wait for it (A1111 calls are synchronous)."""
    from .app import submit_job

    state = _state(request)
    job, _ = await asyncio.to_thread(submit_job, state, kind, params)
    while job.status not in ("done", "failed", "cancelled", "interrupted"):
        await asyncio.sleep(0.05)
    if job.status == "done":
        return job.result or {}
    if job.status == "cancelled":
        raise HTTPFail(409, "interrupted", "the job was interrupted")
    err = job.error or {"code": "failed", "message": "the job failed"}
    status = {"bad_request": 400, "timeout": 408}.get(err["code"], 500)
    raise HTTPFail(status, err["code"], err["message"])


def _response(request: Request, body: Any, result: dict[str, Any]) -> dict[str, Any]:
    state = _state(request)
    images, infotexts, seeds = [], [], []
    for im in result.get("images", []):
        path = state.settings.images_dir / f"{im['id']}.png"
        if body.send_images:
            images.append(base64.b64encode(path.read_bytes()).decode())
        infotexts.append(format_parameters(im["params"]))
        seeds.append(im["params"].get("seed"))
    first = result["images"][0]["params"] if result.get("images") else {}
    w, _, h = str(first.get("size", "x")).partition("x")
    info = {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * len(seeds),
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * len(seeds),
        "seed": seeds[0] if seeds else body.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": int(w) if w.isdigit() else body.width,
        "height": int(h) if h.isdigit() else body.height,
        "sampler_name": first.get("sampler", body.sampler_name),
        "cfg_scale": body.cfg_scale,
        "steps": body.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "sd_model_name": first.get("model"),
        "sd_model_hash": first.get("model_hash"),
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": getattr(body, "denoising_strength", None),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
    }
    params = body.model_dump()
    params.pop("init_images", None)
    params.pop("mask", None)
    return {"images": images, "parameters": params, "info": json.dumps(info)}


@router.post("/txt2img", response_model=A1111Images)
async def txt2img(body: A1111Txt2Img, request: Request) -> dict[str, Any]:
    params = {**_common(body), "width": body.width, "height": body.height}
    return _response(request, body, await _run(request, "txt2img", params))


@router.post("/img2img", response_model=A1111Images)
async def img2img(body: A1111Img2Img, request: Request) -> dict[str, Any]:
    params = {**_common(body), "image": body.init_images[0]}
    if body.mask:
        mask = body.mask
        if body.inpainting_mask_invert:
            mask = await asyncio.to_thread(_invert, request, mask)
        params.update(mask=mask, mask_blur=body.mask_blur)
        result = await _run(request, "inpaint", params)
    else:
        params["strength"] = body.denoising_strength
        result = await _run(request, "img2img", params)
    return _response(request, body, result)


def _invert(request: Request, mask: str) -> str:
    import io

    from PIL import ImageOps

    from .security import decode_image

    im = decode_image(mask, "mask", _state(request).settings.max_pixels).convert("L")
    buf = io.BytesIO()
    ImageOps.invert(im).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@router.get("/progress")
def progress(request: Request, skip_current_image: bool = Query(False)) -> dict[str, Any]:
    jobs = _state(request).jobs
    cur = jobs.current
    queued = jobs.queued_count()
    state = {
        "skipped": False,
        "interrupted": bool(cur and cur.cancel.is_set()),
        "job": cur.id if cur else "",
        "job_count": queued + (1 if cur else 0),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(cur.created)) if cur else "0",
        "job_no": 0,
        "sampling_step": cur.step if cur else 0,
        "sampling_steps": cur.total if cur else 0,
    }
    progress = cur.progress if cur else 0.0
    eta = cur.eta_s if cur else None
    eta_relative = eta if eta is not None else 0.0
    image = None if skip_current_image or cur is None else cur.preview
    return {
        "progress": progress,
        "eta_relative": eta_relative,
        "state": state,
        "current_image": image,
        "textinfo": None,
    }


@router.post("/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    jobs = _state(request).jobs
    cur = jobs.current
    if cur is not None:
        jobs.cancel(cur.id)
    return {}


@router.post("/skip")
def skip(request: Request) -> dict[str, Any]:
    return interrupt(request)


@router.post("/png-info", response_model=A1111PngInfo)
def png_info(body: A1111PngInfoRequest) -> dict[str, Any]:
    data = body.image
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=False)
    except ValueError:
        raise HTTPFail(400, "bad_request", "image: not valid base64") from None
    meta = read_png_metadata(raw)
    text = meta.parameters or ""
    items = {k: v for k, v in meta.text.items() if k != "parameters"}
    parsed: dict[str, Any] = {}
    if text:
        from ..io.pngmeta import parse_parameters

        p = parse_parameters(text)
        parsed["Prompt"] = p.pop("prompt", "")
        parsed["Negative prompt"] = p.pop("negative_prompt", "")
        if "width" in p and "height" in p:
            parsed["Size-1"], parsed["Size-2"] = p.pop("width"), p.pop("height")
        for k, v in p.items():
            parsed[A1111_LABELS.get(k, k.replace("_", " ").capitalize())] = v
    return {"info": text, "items": items, "parameters": parsed}


@router.get("/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    out = []
    for m in _state(request).models.listing():
        if not m["text"]:
            continue
        out.append(
            {
                "title": m["name"],
                "model_name": m["name"],
                "hash": None,
                "sha256": None,
                "filename": m["name"],  # a name, never a server path
                "config": None,
            }
        )
    return out


@router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    from ..sampling import SAMPLERS

    return [{"name": s.label, "aliases": [s.name], "options": {}} for s in SAMPLERS.values()]


@router.get("/options")
def options(request: Request) -> dict[str, Any]:
    return {"sd_model_checkpoint": _state(request).models.default_name()}
