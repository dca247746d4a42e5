"""The SQLite index of jobs and gallery images: survives restarts, one file under outputs/.

Only the worker thread and request handlers write, always through one lock; the file is in WAL
mode so a reader never waits on a writer for long.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,          -- queued | running | done | failed | cancelled | interrupted
    params TEXT NOT NULL,          -- the validated request parameters (JSON)
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    step INTEGER DEFAULT 0,
    total INTEGER DEFAULT 0,
    error TEXT,                    -- {"code", "message"} (JSON) or NULL
    result TEXT                    -- kind-specific result (JSON): image ids, run name, scores
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    file TEXT NOT NULL,            -- name inside outputs/images (never user-given)
    params TEXT NOT NULL,          -- generation parameters, as in the PNG (JSON)
    width INTEGER,
    height INTEGER,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_created ON images (created);
"""

ACTIVE = ("queued", "running")


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Store:
    """Jobs and images, persisted; `open` marks jobs left queued or running as interrupted."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            self.interrupted = self.db.execute(
                "UPDATE jobs SET status='interrupted', finished=? WHERE status IN (?, ?)",
                (time.time(), *ACTIVE),
            ).rowcount

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # ----- jobs --------------------------------------------------------------------------
    def add_job(self, job_id: str, kind: str, params: dict[str, Any], created: float) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO jobs (id, kind, status, params, created) "
                "VALUES (?, ?, 'queued', ?, ?)",
                (job_id, kind, json.dumps(params), created),
            )

    def update_job(self, job_id: str, **fields: Any) -> None:
        cols, vals = [], []
        for k, v in fields.items():
            if k not in ("status", "started", "finished", "step", "total", "error", "result"):
                raise KeyError(k)
            cols.append(f"{k}=?")
            vals.append(json.dumps(v) if k in ("error", "result") and v is not None else v)
        with self.lock:
            self.db.execute(f"UPDATE jobs SET {', '.join(cols)} WHERE id=?", (*vals, job_id))

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list_jobs(self, limit: int = 50, offset: int = 0, kind: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM jobs", []
        if kind:
            q += " WHERE kind=?"
            args.append(kind)
        q += " ORDER BY created DESC LIMIT ? OFFSET ?"
        with self.lock:
            rows = self.db.execute(q, (*args, limit, offset)).fetchall()
        return [self._job(r) for r in rows]

    @staticmethod
    def _job(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["params"] = _loads(d["params"])
        d["error"] = _loads(d["error"])
        d["result"] = _loads(d["result"])
        return d

    # ----- images ------------------------------------------------------------------------
    def add_image(
        self, image_id: str, job_id: str, file: str, params: dict[str, Any], size: tuple[int, int]
    ) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO images (id, job_id, file, params, width, height, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (image_id, job_id, file, json.dumps(params, default=str), *size, time.time()),
            )

    def get_image(self, image_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            return None
        d = dict(row)
        d["params"] = _loads(d["params"])
        return d

    def list_images(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM images ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["params"] = _loads(d["params"])
            out.append(d)
        return out

    def count_images(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def delete_image(self, image_id: str) -> str | None:
        """Remove an image's row; returns its file name (the caller deletes the file)."""
        with self.lock:
            row = self.db.execute("SELECT file FROM images WHERE id=?", (image_id,)).fetchone()
            if row is None:
                return None
            self.db.execute("DELETE FROM images WHERE id=?", (image_id,))
        return str(row["file"])
