"""The FastAPI app: JSON API under /api/v1, the AUTOMATIC1111 subset under /sdapi/v1, the page.

`create_app(settings)` builds everything; the worker thread and the SQLite index start with
the app (lifespan) and stop with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import ImagesynthError
from . import kinds as _kinds  # noqa: F401  (registers the job kinds)
from .jobs import FINISHED, KINDS, JobManager, QueueFull
from .models import ModelRegistry
from .schemas import (
    ErrorBody,
    EstimateParams,
    EstimateResponse,
    ImageInfo,
    ImageList,
    JobCreated,
    JobInfo,
    JobList,
    JobRequest,
)
from .security import TOKEN_COOKIE, GuardMiddleware, HTTPFail, list_folders, token_ok
from .settings import Settings
from .store import Store

log = logging.getLogger("imagesynth.server")
STATIC = Path(__file__).parent / "static"
ID_RE = re.compile(r"^[0-9a-f]{32}$")
SAMPLE_RE = re.compile(r"^step-\d{8}\.png$")
TERMINAL = {"done", "cancelled", "error"}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    404: {"model": ErrorBody},
    422: {"model": ErrorBody},
}


class AppState:
    """What the routes share: settings, the index, the model registry and the job manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.outputs_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_path)
        self.models = ModelRegistry(settings)
        self.jobs = JobManager(settings, self.store, self.models)
        self.jobs.app_state = self
        self.started = time.time()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _validation_message(exc: Any) -> str:
    errs = exc.errors() if hasattr(exc, "errors") else []
    if not errs:
        return "invalid request"
    e = errs[0]
    loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body",))
    return f"{loc or 'body'}: {e.get('msg', 'invalid')}"


def get_state(request: Request) -> AppState:
    return request.app.state.imagesynth


def _check_id(value: str, what: str = "job") -> str:
    if not ID_RE.match(value):
        raise HTTPFail(404, "not_found", f"no {what} {value!r}")
    return value


def image_info(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "job_id": row["job_id"],
        "url": f"/api/v1/images/{row['id']}",
        "width": row["width"],
        "height": row["height"],
        "created": row["created"],
        "params": row["params"],
    }


def submit_job(state: AppState, kind: str, raw: dict[str, Any]) -> tuple[Any, int]:
    """Validate and queue a job (the JSON API and the A1111 routes both come here)."""
    from .kinds import prepare

    if kind not in KINDS:
        raise HTTPFail(400, "unknown_kind", f"unknown job kind {kind!r}; known: {sorted(KINDS)}")
    try:
        params = KINDS[kind].params.model_validate(raw)
    except ValidationError as exc:
        raise HTTPFail(422, "invalid", f"params.{_validation_message(exc)}") from None
    inputs = prepare(state, kind, params)
    try:
        return state.jobs.submit(kind, params.model_dump(), inputs)
    except QueueFull as exc:
        raise HTTPFail(429, "queue_full", str(exc)) from None


def file_response(path: Path, name: str) -> FileResponse:
    """An output served as a download: attachment, nosniff, never a guessed type."""
    return FileResponse(
        path,
        media_type="image/png",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        },
    )


def build_api(state_getter: Any = get_state) -> APIRouter:
    api = APIRouter(prefix="/api/v1", responses=ERRORS)

    @api.get("/health", tags=["server"])
    def health(request: Request) -> dict[str, Any]:
        st = get_state(request)
        cur = st.jobs.current
        return {
            "status": "ok",
            "version": __version__,
            "queued": st.jobs.queued_count(),
            "running": cur.id if cur else None,
            "uptime_s": time.time() - st.started,
        }

    # ----- listings -----------------------------------------------------------------------
    @api.get("/kinds", tags=["listings"])
    def list_kinds() -> list[dict[str, Any]]:
        return [
            {"name": k, "description": v.description, "params": v.params.model_json_schema()}
            for k, v in KINDS.items()
        ]

    @api.get("/models", tags=["listings"])
    def list_models(request: Request) -> list[dict[str, Any]]:
        return get_state(request).models.listing()

    @api.get("/samplers", tags=["listings"])
    def list_samplers() -> list[dict[str, Any]]:
        from ..sampling import SAMPLERS

        return [
            {"name": s.name, "label": s.label, "stochastic": s.stochastic}
            for s in SAMPLERS.values()
        ]

    @api.get("/datasets", tags=["listings"])
    def list_datasets_route() -> list[dict[str, Any]]:
        from ..data import list_datasets

        return [
            {"name": d.name, "description": d.description, "takes_path": d.takes_path}
            for d in list_datasets()
        ]

    @api.get("/metrics", tags=["listings"])
    def list_metrics() -> list[dict[str, Any]]:
        from ..metrics.protocol import METRICS

        out = []
        for name, m in METRICS.items():
            desc = getattr(m, "description", None) or getattr(m, "doc", None) or ""
            out.append({"name": name, "description": str(desc)})
        return out

    @api.get("/families", tags=["listings"])
    def list_families() -> list[dict[str, Any]]:
        import importlib

        from ..training import trainer

        out = []
        for name, (module, _, _) in trainer.FAMILIES.items():
            presets: list[str] = []
            with contextlib.suppress(Exception):
                mod = importlib.import_module(module, trainer.__package__)
                presets = list(getattr(mod, "PRESETS", {}))
            out.append({"name": name, "presets": presets})
        return out

    @api.get("/folders", tags=["listings"])
    def list_data_folders(request: Request) -> dict[str, Any]:
        st = get_state(request)
        return {
            "enabled": st.settings.data_root is not None,
            "folders": list_folders(st.settings.data_root),
        }

    # ----- jobs ---------------------------------------------------------------------------
    @api.post(
        "/jobs", tags=["jobs"], response_model=JobCreated, responses={429: {"model": ErrorBody}}
    )
    def create_job(body: JobRequest, request: Request) -> dict[str, Any]:
        job, position = submit_job(get_state(request), body.kind, body.params)
        return {"id": job.id, "position": position}

    @api.get("/jobs", tags=["jobs"], response_model=JobList)
    def list_jobs(
        request: Request,
        limit: int = Query(50, ge=1, le=200),
        offset: int = Query(0, ge=0, le=1_000_000),
        kind: str | None = Query(None, max_length=40),
    ) -> dict[str, Any]:
        st = get_state(request)
        out = []
        for row in st.store.list_jobs(limit, offset, kind):
            info = st.jobs.info(row["id"])
            if info is not None:
                out.append(info)
        return {"jobs": out}

    @api.get("/jobs/{job_id}", tags=["jobs"], response_model=JobInfo)
    def get_job(job_id: str, request: Request) -> dict[str, Any]:
        info = get_state(request).jobs.info(_check_id(job_id))
        if info is None:
            raise HTTPFail(404, "not_found", f"no job {job_id!r}")
        return info

    @api.post("/jobs/{job_id}/cancel", tags=["jobs"], response_model=JobInfo)
    def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        info = get_state(request).jobs.cancel(_check_id(job_id))
        if info is None:
            raise HTTPFail(404, "not_found", f"no job {job_id!r}")
        return info

    @api.get(
        "/jobs/{job_id}/events",
        tags=["jobs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: state, queued, started, progress (+ preview), done / error."""
        st = get_state(request)
        _check_id(job_id)
        job = st.jobs.get(job_id)
        info = st.jobs.info(job_id)
        if info is None:
            raise HTTPFail(404, "not_found", f"no job {job_id!r}")

        def fmt(seq: int, name: str, data: dict[str, Any]) -> str:
            return f"id: {seq}\nevent: {name}\ndata: {json.dumps(data, default=str)}\n\n"

        async def stream():
            yield fmt(0, "state", {**info, "preview": job.preview if job else None})
            if job is None:  # known only from the index: finished (or interrupted) before
                return
            last, idle = 0, 0.0
            while True:
                events = job.events_after(last)
                for seq, name, data in events:
                    last = seq
                    yield fmt(seq, name, data)
                    if name in TERMINAL:
                        return
                if not events:
                    if job.status in FINISHED and not job.events_after(last):
                        # the worker sets the status, records it, then emits done / error /
                        # cancelled: wait for that event (restart-interrupted jobs have none)
                        for _ in range(100):
                            await asyncio.sleep(0.05)
                            if job.events_after(last):
                                break
                        else:
                            yield fmt(last + 1, "state", job.info())
                            return
                        continue
                    if await request.is_disconnected():
                        return
                    await asyncio.sleep(0.05)
                    idle += 0.05
                    if idle >= 15:
                        idle = 0.0
                        yield ": keep-alive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # ----- gallery ------------------------------------------------------------------------
    @api.get("/images", tags=["images"], response_model=ImageList)
    def list_images(
        request: Request,
        limit: int = Query(50, ge=1, le=200),
        offset: int = Query(0, ge=0, le=1_000_000),
    ) -> dict[str, Any]:
        st = get_state(request)
        rows = st.store.list_images(limit, offset)
        return {"images": [image_info(r) for r in rows], "total": st.store.count_images()}

    def _image_row(request: Request, image_id: str) -> tuple[AppState, dict[str, Any]]:
        st = get_state(request)
        row = st.store.get_image(_check_id(image_id, "image"))
        if row is None:
            raise HTTPFail(404, "not_found", f"no image {image_id!r}")
        return st, row

    @api.get(
        "/images/{image_id}",
        tags=["images"],
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}},
    )
    def get_image(image_id: str, request: Request) -> FileResponse:
        """The PNG (parameters inside), as an attachment."""
        st, row = _image_row(request, image_id)
        path = st.settings.images_dir / row["file"]
        if not path.is_file():
            raise HTTPFail(404, "not_found", f"image {image_id!r} is gone from disk")
        return file_response(path, row["file"])

    @api.get("/images/{image_id}/info", tags=["images"], response_model=ImageInfo)
    def get_image_info(image_id: str, request: Request) -> dict[str, Any]:
        return image_info(_image_row(request, image_id)[1])

    @api.delete("/images/{image_id}", tags=["images"])
    def delete_image(image_id: str, request: Request) -> dict[str, Any]:
        st, _ = _image_row(request, image_id)
        name = st.store.delete_image(image_id)
        if name:
            with contextlib.suppress(OSError):
                (st.settings.images_dir / name).unlink()
        return {"deleted": image_id}

    # ----- training runs ------------------------------------------------------------------
    @api.get("/runs", tags=["training"])
    def list_runs(request: Request) -> list[dict[str, Any]]:
        from .kinds import RUN_RE

        root = get_state(request).settings.runs_dir
        out = []
        if root.is_dir():
            for sub in sorted(root.iterdir(), reverse=True):
                if RUN_RE.match(sub.name) and (sub / "config.json").is_file():
                    cfg = json.loads((sub / "config.json").read_text())
                    out.append(
                        {
                            "name": sub.name,
                            "family": cfg.get("family"),
                            "data": _public_data(cfg.get("data")),
                            "steps": cfg.get("steps"),
                            "has_model": (sub / "model" / "imagesynth.json").is_file(),
                        }
                    )
        return out

    @api.get("/runs/{name}", tags=["training"])
    def get_run(name: str, request: Request, tail: int = Query(500, ge=1, le=5000)):
        from ..io import rundir
        from .kinds import find_run

        run = find_run(get_state(request).settings.runs_dir, name)
        cfg = json.loads((run / "config.json").read_text())
        cfg["data"] = _public_data(cfg.get("data"))
        cfg.pop("runs_dir", None)
        stats = rundir.read_jsonl(run / "stats.jsonl") if (run / "stats.jsonl").is_file() else []
        samples = sorted(p.name for p in (run / "samples").glob("step-*.png"))
        ckpts = [step for step, _ in rundir.list_checkpoints(run)]
        return {
            "name": run.name,
            "config": cfg,
            "stats": [{k: v for k, v in s.items() if isinstance(v, int | float)} for s in stats][
                -tail:
            ],
            "samples": [
                f"/api/v1/runs/{run.name}/samples/{s}" for s in samples if SAMPLE_RE.match(s)
            ],
            "checkpoints": ckpts,
            "model": f"run:{run.name}" if (run / "model" / "imagesynth.json").is_file() else None,
        }

    @api.get(
        "/runs/{name}/samples/{file}",
        tags=["training"],
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}},
    )
    def get_run_sample(name: str, file: str, request: Request) -> FileResponse:
        from .kinds import find_run

        run = find_run(get_state(request).settings.runs_dir, name)
        if not SAMPLE_RE.match(file) or not (run / "samples" / file).is_file():
            raise HTTPFail(404, "not_found", f"no sample {file!r} in run {name!r}")
        return file_response(run / "samples" / file, f"{run.name}-{file}")

    # ----- quick synchronous estimate (the training page) ----------------------------------
    @api.post("/estimate", tags=["training"], response_model=EstimateResponse)
    def estimate(body: EstimateParams, request: Request) -> dict[str, Any]:
        from .kinds import is_estimate_preset, run_estimate

        st = get_state(request)
        if not is_estimate_preset(body.model):
            st.models.path(body.model)
        return run_estimate(st, body)

    return api


def document_job_kinds(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI body of POST /api/v1/jobs as one alternative per registered kind (its own
    parameter model), so clients and schema-driven tools see every kind's parameters."""
    body = schema["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    alternatives = []
    for name, kind in KINDS.items():
        params = kind.params.model_json_schema()
        defs = params.pop("$defs", None)
        if defs:  # flat models only (nested ones would need their definitions in components)
            continue
        alternatives.append(
            {
                "title": f"{name} job",
                "type": "object",
                "properties": {"kind": {"type": "string", "enum": [name]}, "params": params},
                "required": ["kind"],
                "additionalProperties": False,
                "description": kind.description,
            }
        )
    body["schema"] = {"oneOf": alternatives}
    return schema


def _public_data(data: Any) -> Any:
    """A run's data spec without the server's absolute folder path."""
    if isinstance(data, str) and data.startswith("folder:"):
        return "folder:" + Path(data[len("folder:") :]).name
    return data


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app for `settings` (defaults: 127.0.0.1, outputs/)."""
    from . import a1111

    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state = AppState(settings)
        app.state.imagesynth = state
        if state.store.interrupted:
            log.warning("%d jobs were interrupted by the last shutdown", state.store.interrupted)
        state.jobs.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.jobs.shutdown)
            state.store.close()

    app = FastAPI(
        title="imagesynth",
        version=__version__,
        description="Generate, edit, train, evaluate and estimate: a local image-synthesis API.",
        lifespan=lifespan,
    )

    @app.exception_handler(HTTPFail)
    async def _fail(request: Request, exc: HTTPFail) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(ImagesynthError)
    async def _user_error(request: Request, exc: ImagesynthError) -> JSONResponse:
        return _error(400, "bad_request", str(exc).splitlines()[0] if str(exc) else "bad request")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal server error (see the server log)")

    app.include_router(build_api())
    app.include_router(a1111.router)

    @app.get("/", include_in_schema=False)
    def index(request: Request, token: str | None = Query(None, max_length=500)):
        if token and settings.token and token_ok(token, settings.token):  # keep it in a cookie
            resp = RedirectResponse("/", status_code=303)
            resp.set_cookie(
                TOKEN_COOKIE, token, httponly=True, samesite="strict", max_age=30 * 24 * 3600
            )
            return resp
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_job_kinds(base_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(GuardMiddleware, settings=settings)
    return app
