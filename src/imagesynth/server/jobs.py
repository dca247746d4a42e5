"""Jobs: a bounded queue, one worker thread, progress events, cancel, and the kinds registry.

A job kind is one entry in `KINDS`: name -> (pydantic parameter model, handler). A handler is
`handler(ctx: JobContext, params: Model) -> dict` (the job's result); it reports progress with
`ctx.progress(step, total, ...)`, calls `ctx.check()` between units of work (which raises when
the job is cancelled or over its time cap), and saves images with `ctx.save_image(...)`.
Torch work runs only in the worker thread, never on the event loop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..errors import ImagesynthError
from .settings import Settings
from .store import Store

log = logging.getLogger("imagesynth.server")

FINISHED = ("done", "failed", "cancelled", "interrupted")


class JobCancelled(Exception):
    """Raised inside a handler (from `ctx.check()`) when the job was cancelled."""


class JobTimeout(Exception):
    """Raised inside a handler when the job ran past the per-job time cap."""


class QueueFull(Exception):
    pass


@dataclass
class JobKind:
    params: type[BaseModel]
    handler: Callable[[JobContext, Any], dict[str, Any]]
    description: str = ""


# name -> JobKind; filled by server/kinds.py (one entry per kind)
KINDS: dict[str, JobKind] = {}


def register_kind(
    name: str, params: type[BaseModel], description: str = ""
) -> Callable[[Callable], Callable]:
    """Decorator: `@register_kind("txt2img", Txt2ImgParams)` over a handler."""

    def wrap(fn: Callable) -> Callable:
        KINDS[name] = JobKind(params, fn, description)
        return fn

    return wrap


@dataclass
class Job:
    id: str
    kind: str
    params: dict[str, Any]
    created: float
    status: str = "queued"
    step: int = 0
    total: int = 0
    started: float | None = None
    finished: float | None = None
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))
    seq: int = 0
    preview: str | None = None  # latest preview PNG (base64)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. training losses
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel_hooks: list[Callable[[], None]] = field(default_factory=list)

    def request_cancel(self) -> None:
        """Set the cancel flag and run the hooks a handler registered (e.g. a trainer's stop)."""
        self.cancel.set()
        with self.lock:
            hooks = list(self.cancel_hooks)
        for hook in hooks:
            try:
                hook()
            except Exception:  # a hook must never break the cancel route
                log.exception("cancel hook of job %s failed", self.id)

    def emit(self, name: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.seq += 1
            self.events.append((self.seq, name, data))

    def events_after(self, seq: int) -> list[tuple[int, str, dict[str, Any]]]:
        with self.lock:
            return [e for e in self.events if e[0] > seq]

    @property
    def progress(self) -> float:
        if self.status == "done":
            return 1.0
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def eta_s(self) -> float | None:
        done = self.step - int(self.extra.get("step0", 0))  # a resumed run starts part-way
        if self.status != "running" or not self.started or done <= 0 or not self.total:
            return None
        spent = time.time() - self.started
        return max(0.0, spent / done * (self.total - self.step))

    def info(self, position: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": self.progress,
            "step": self.step,
            "total": self.total,
            "eta_s": self.eta_s,
            "position": position,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "params": public_params(self.params),
            "error": self.error,
            "result": self.result,
        }


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as shown to clients: base64 images replaced by their length."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and len(v) > 1000:
            out[k] = f"<{len(v)} characters>"
        else:
            out[k] = v
    return out


def _without_preview(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "preview"} if "preview" in data else data


def stored_to_info(row: dict[str, Any]) -> dict[str, Any]:
    """A job row from SQLite (e.g. after a restart) in the shape of `Job.info`."""
    total = row.get("total") or 0
    step = row.get("step") or 0
    done = row["status"] == "done"
    return {
        "id": row["id"],
        "kind": row["kind"],
        "status": row["status"],
        "progress": 1.0 if done else (min(1.0, step / total) if total else 0.0),
        "step": step,
        "total": total,
        "eta_s": None,
        "position": None,
        "created": row["created"],
        "started": row["started"],
        "finished": row["finished"],
        "params": public_params(row["params"] or {}),
        "error": row["error"],
        "result": row["result"],
    }


class JobContext:
    """What a handler sees: its job, the settings, the model cache, progress and images."""

    def __init__(self, manager: JobManager, job: Job) -> None:
        self.manager = manager
        self.job = job
        self.settings: Settings = manager.settings
        self.deadline = time.monotonic() + self.settings.max_job_seconds
        self._last_store = 0.0

    @property
    def cancelled(self) -> bool:
        return self.job.cancel.is_set()

    @property
    def timed_out(self) -> bool:
        return time.monotonic() > self.deadline

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Run `hook` when the job is cancelled (at once if it already is), from any thread."""
        with self.job.lock:
            self.job.cancel_hooks.append(hook)
        if self.job.cancel.is_set():
            hook()

    def check(self) -> None:
        """Raise JobCancelled / JobTimeout when the job must stop (call between steps)."""
        if self.job.cancel.is_set():
            raise JobCancelled()
        if time.monotonic() > self.deadline:
            raise JobTimeout()

    def progress(self, step: int, total: int, preview: str | None = None, **extra: Any) -> None:
        job = self.job
        job.step, job.total = int(step), int(total)
        if preview is not None:
            job.preview = preview
        data = {"step": job.step, "total": job.total, "progress": job.progress, "eta_s": job.eta_s}
        if preview is not None:
            data["preview"] = preview
        data.update(extra)
        job.emit("progress", data)
        now = time.monotonic()
        if now - self._last_store > 1.0 or step == total:  # the index needn't see every step
            self._last_store = now
            self.manager.store.update_job(job.id, step=job.step, total=job.total)

    def save_image(self, image: Any, params: dict[str, Any]) -> dict[str, Any]:
        """Write a PNG (parameters inside) to outputs/images and index it; returns its info."""
        from ..io.pngmeta import save_png

        image_id = uuid.uuid4().hex
        name = f"{image_id}.png"
        self.settings.images_dir.mkdir(parents=True, exist_ok=True)
        params = {**params, "job": self.job.id, "kind": self.job.kind}
        save_png(image, self.settings.images_dir / name, params)
        self.manager.store.add_image(image_id, self.job.id, name, params, image.size)
        return {"id": image_id, "url": f"/api/v1/images/{image_id}", "params": params}

    def pipeline(self, model: str | None) -> Any:
        return self.manager.models.load(model)


class JobManager:
    """A bounded FIFO of jobs and the one worker thread that runs them."""

    def __init__(self, settings: Settings, store: Store, models: Any) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.jobs: dict[str, Job] = {}
        self.pending: collections.deque[str] = collections.deque()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.current: Job | None = None
        self.closing = False
        self.thread: threading.Thread | None = None
        self.finished_order: collections.deque[str] = collections.deque()
        self.app_state: Any = None  # set by the app: handlers reach settings and models here

    # ----- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self._worker, name="imagesynth-worker", daemon=True)
        self.thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self.lock:
            self.closing = True
            for job_id in self.pending:
                self.jobs[job_id].cancel.set()
            if self.current is not None:
                self.current.request_cancel()
            self.wake.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)

    # ----- API ---------------------------------------------------------------------------
    def submit(
        self, kind: str, params: dict[str, Any], inputs: dict[str, Any] | None = None
    ) -> tuple[Job, int]:
        """Queue a validated job; QueueFull when `max_queue` jobs are already waiting."""
        with self.lock:
            if self.closing:
                raise QueueFull("the server is shutting down")
            if len(self.pending) >= self.settings.max_queue:
                raise QueueFull(
                    f"the queue is full ({self.settings.max_queue} jobs waiting); retry later"
                )
            job = Job(uuid.uuid4().hex, kind, params, time.time())
            job.extra["inputs"] = inputs or {}
            self.store.add_job(job.id, kind, public_params(params), job.created)
            self.jobs[job.id] = job
            self.pending.append(job.id)
            position = len(self.pending) - 1 + (1 if self.current is not None else 0)
            job.emit("queued", {"position": position})
            self.wake.notify()
        return job, position

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            return self.jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        with self.lock:
            if job.status != "queued":
                return None
            try:
                i = self.pending.index(job.id)
            except ValueError:
                return None
            return i + (1 if self.current is not None else 0)

    def info(self, job_id: str) -> dict[str, Any] | None:
        job = self.get(job_id)
        if job is not None:
            return job.info(self.position(job))
        row = self.store.get_job(job_id)
        return stored_to_info(row) if row else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Stop a running job within one step, or drop a queued one."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                row = self.store.get_job(job_id)
                return stored_to_info(row) if row else None
            job.request_cancel()
            if job.status == "queued" and job.id in self.pending:
                self.pending.remove(job.id)
                self._finish(job, "cancelled", None)
        return job.info()

    def queued_count(self) -> int:
        with self.lock:
            return len(self.pending)

    # ----- the worker --------------------------------------------------------------------
    def _finish(self, job: Job, status: str, error: dict[str, str] | None) -> None:
        job.status = status
        job.finished = time.time()
        job.error = error
        # a finished job stays in memory (for late SSE readers) without its heavy parts: the
        # decoded inputs, base64 images in its parameters, and all previews but the last
        job.extra.pop("inputs", None)
        job.params = public_params(job.params)
        with job.lock:
            job.cancel_hooks.clear()
            with_preview = [i for i, e in enumerate(job.events) if "preview" in e[2]]
            last = with_preview[-1] if with_preview else -1
            job.events = collections.deque(
                (
                    (seq, name, data if i == last else _without_preview(data))
                    for i, (seq, name, data) in enumerate(job.events)
                ),
                maxlen=job.events.maxlen,
            )
        self.store.update_job(
            job.id,
            status=status,
            finished=job.finished,
            error=error,
            result=job.result,
            step=job.step,
            total=job.total,
        )
        if status == "done":
            job.emit("done", {"result": job.result})
        elif status == "cancelled":
            job.emit("cancelled", {"result": job.result})
        else:
            job.emit("error", {"error": error, "result": job.result})
        self.finished_order.append(job.id)
        while len(self.finished_order) > self.settings.keep_jobs_in_memory:
            old = self.finished_order.popleft()
            self.jobs.pop(old, None)

    def _worker(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.closing:
                    self.wake.wait()
                if self.closing:
                    return
                job = self.jobs[self.pending.popleft()]
                self.current = job
            try:
                self._run(job)
            finally:
                with self.lock:
                    self.current = None

    def _run(self, job: Job) -> None:
        kind = KINDS[job.kind]
        ctx = JobContext(self, job)
        job.status, job.started = "running", time.time()
        self.store.update_job(job.id, status="running", started=job.started)
        job.emit("started", {"started": job.started})
        try:
            params = kind.params.model_validate(job.params)
            job.result = kind.handler(ctx, params)
            if job.cancel.is_set() and job.result and job.result.get("stopped"):
                with self.lock:
                    self._finish(job, "cancelled", None)
            else:
                with self.lock:
                    self._finish(job, "done", None)
        except JobCancelled:
            with self.lock:
                self._finish(job, "cancelled", None)
        except JobTimeout:
            cap = self.settings.max_job_seconds
            err = {"code": "timeout", "message": f"the job ran past the {cap:g} s cap"}
            with self.lock:
                self._finish(job, "failed", err)
        except ImagesynthError as exc:
            with self.lock:
                self._finish(job, "failed", {"code": "bad_request", "message": str(exc)})
        except Exception as exc:  # a crash fails the job, never the server
            log.error("job %s (%s) crashed:\n%s", job.id, job.kind, traceback.format_exc())
            msg = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            with self.lock:
                self._finish(job, "failed", {"code": "job_crashed", "message": msg[:500]})
