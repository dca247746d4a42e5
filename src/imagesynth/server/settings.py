"""Server options: one dataclass, filled by `imagesynth serve` or by tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImagesynthError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None  # bearer token; required when binding a non-loopback address
    models_dir: Path | None = None  # extra model directories (each subfolder one model)
    outputs_dir: Path = Path("outputs")  # images, run directories and the SQLite index
    data_root: Path | None = None  # training folders must lie under this (None: none allowed)
    allowed_hosts: list[str] = field(default_factory=list)  # Host names beside the loopbacks
    max_queue: int = 16  # queued jobs; one more answers 429
    max_body_bytes: int = 16 << 20  # request body cap (base64 images included)
    max_pixels: int = 4096 * 4096  # Image.MAX_IMAGE_PIXELS for decoded uploads
    max_side: int = 1024  # largest width / height a generation job may ask for
    max_images: int = 8  # images per generation job
    max_steps: int = 150  # denoising steps per generation job
    max_job_seconds: float = 3600.0  # any job running longer is stopped
    max_train_steps: int = 1_000_000
    max_tool_side: int = 512  # style / texture: largest result side; upscale: input side
    max_upscale_side: int = 2048  # largest upscaled result side
    max_tool_steps: int = 2000  # style / neural texture optimisation steps
    device: str | None = None  # torch device for the pipelines (default: best available)
    keep_jobs_in_memory: int = 200  # finished jobs kept for SSE; the SQLite file keeps all

    def __post_init__(self) -> None:
        self.outputs_dir = Path(self.outputs_dir)
        if self.models_dir is not None:
            self.models_dir = Path(self.models_dir)
        if self.data_root is not None:
            self.data_root = Path(self.data_root)
        if self.token is None:
            self.token = os.environ.get("IMAGESYNTH_TOKEN") or None

    def check_bind(self) -> None:
        """Refuse a non-loopback bind without a token."""
        if self.host not in LOOPBACK and not self.token:
            raise ImagesynthError(
                f"refusing to listen on {self.host!r} without a token: pass --token or set "
                "IMAGESYNTH_TOKEN (or bind 127.0.0.1)"
            )

    @property
    def db_path(self) -> Path:
        return self.outputs_dir / "imagesynth-server.sqlite"

    @property
    def images_dir(self) -> Path:
        return self.outputs_dir / "images"

    @property
    def runs_dir(self) -> Path:
        return self.outputs_dir / "runs"
