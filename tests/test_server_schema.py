"""schemathesis over the server's OpenAPI schema, in process (ASGI, no network): every route,
valid and invalid generated requests, and never a 5xx.

Small caps keep any job a generated request manages to create tiny (1-2 steps, 32 px, a
2-job queue, 5 s per job), so a few examples per route run in well under a minute.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from imagesynth.server import Settings, create_app  # noqa: E402

OUTPUTS = Path(tempfile.mkdtemp(prefix="imagesynth-schema-"))
(OUTPUTS / "data" / "cats").mkdir(parents=True)
SETTINGS = Settings(
    outputs_dir=OUTPUTS / "outputs",
    data_root=OUTPUTS / "data",
    max_queue=2,
    max_steps=2,
    max_side=32,
    max_images=1,
    max_job_seconds=5,
    max_train_steps=2,
    max_tool_side=32,
    max_upscale_side=64,
    max_tool_steps=2,
    max_body_bytes=1 << 20,
)
APP = create_app(SETTINGS)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    try:  # stop the app's lifespan (worker thread, SQLite) that schemathesis started
        from schemathesis.python.asgi import shutdown_lifespans

        shutdown_lifespans()
    except Exception:
        pass
    shutil.rmtree(OUTPUTS, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("IMAGESYNTH_SCHEMA_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: a failure here is reproducible
)
def test_no_server_errors(case):
    response = case.call(timeout=60)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    )
    if response.status_code >= 400:  # errors are {code, message}, one line, no traceback
        body = response.json()
        assert set(body) == {"code", "message"}, body
        assert "Traceback" not in body["message"] and "\n" not in body["message"]
