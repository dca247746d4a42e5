"""`imagesynth serve`: the local server (JSON API, AUTOMATIC1111 subset and web page)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


def serve(
    host: Annotated[str, Opt(help="Address to bind (another than 127.0.0.1 needs --token).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, Opt(help="Port.")] = 7860,
    models: Annotated[
        Path | None, Opt(help="Folder of model directories to offer (besides the bundled one).")
    ] = None,
    outputs: Annotated[
        Path, Opt(help="Images, training runs and the SQLite job index go here.")
    ] = Path("outputs"),
    data_root: Annotated[
        Path | None, Opt(help="Training on folders is allowed only under this folder.")
    ] = None,
    token: Annotated[
        str | None,
        Opt(help="Bearer token every request must send (default: env IMAGESYNTH_TOKEN)."),
    ] = None,
    allow_host: Annotated[
        list[str] | None, Opt(help="Extra Host header names to accept (repeatable).")
    ] = None,
    max_queue: Annotated[int, Opt(help="Queued jobs before the server answers 429.")] = 16,
    max_job_seconds: Annotated[float, Opt(help="Per-job time cap in seconds.")] = 3600.0,
    device: Annotated[str | None, Opt(help="cpu | cuda | mps (default: best available).")] = None,
) -> None:
    """Start the local server and print its URL (Ctrl+C stops it)."""
    import logging

    from ..errors import ImagesynthError
    from ..server.settings import Settings

    if not 1 <= port <= 65535:
        raise ImagesynthError(f"port must be in 1..65535, got {port}")
    if max_queue < 1:
        raise ImagesynthError(f"max-queue must be >= 1, got {max_queue}")
    if models is not None and not models.is_dir():
        raise ImagesynthError(f"--models {models}: not a folder")
    if data_root is not None and not data_root.is_dir():
        raise ImagesynthError(f"--data-root {data_root}: not a folder")
    settings = Settings(
        host=host,
        port=port,
        token=token,
        models_dir=models,
        outputs_dir=outputs,
        data_root=data_root,
        allowed_hosts=list(allow_host or []),
        max_queue=max_queue,
        max_job_seconds=max_job_seconds,
        device=device,
    )
    settings.check_bind()
    try:
        import uvicorn

        from ..server.app import create_app
    except ImportError as exc:
        raise ImagesynthError(f"the server needs fastapi and uvicorn ({exc})") from None
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    typer.echo(f"imagesynth serving on {url}" + ("  (token required)" if settings.token else ""))
    typer.echo(f"API docs: {url}docs   outputs: {outputs}")
    logging.getLogger("imagesynth.server").setLevel(logging.INFO)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
