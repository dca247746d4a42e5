"""`imagesynth serve`: a local FastAPI server (JSON API, A1111 subset, web page).

FastAPI, uvicorn and torch load only when `create_app` is called.
"""

from __future__ import annotations

from .settings import Settings

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None):
    """The ASGI app (see `imagesynth.server.app.create_app`)."""
    from .app import create_app as _create

    return _create(settings)
