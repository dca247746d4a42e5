"""Server security defaults: token on every route (enumerated from the router), Host allow-list,
Origin check, JSON-only bodies, size caps, path confinement and traversal, refusing to bind a
public address without a token. No job runs here (every request is refused or cheap)."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import Mount

from imagesynth.errors import ImagesynthError
from imagesynth.server import Settings, create_app
from imagesynth.server.security import HTTPFail, confine

TOKEN = "s3cret-token"
DUMMY = {"job_id": "a" * 32, "image_id": "b" * 32, "name": "00001-x", "file": "step-00000001.png"}


def all_routes(routes) -> list:
    """Routes, descending into included routers (FastAPI >= 0.16x wraps them)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(all_routes(inner.routes) if inner is not None else [route])
    return out


def concrete_routes(app) -> list[tuple[str, str]]:
    """(method, path) for every route the app serves, path parameters filled in."""
    out = []
    for route in all_routes(app.routes):
        if isinstance(route, APIRoute) or getattr(route, "methods", None):
            path = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: DUMMY.get(m.group(1), "x"), route.path)
            for method in sorted(route.methods or []):
                if method != "HEAD":
                    out.append((method, path))
        elif isinstance(route, Mount):
            out.append(("GET", route.path + "/style.css"))
    return out


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    data = root / "data"
    (data / "cats" / "inner").mkdir(parents=True)
    outside = root / "outside"
    outside.mkdir()
    os.symlink(outside, data / "escape")
    settings = Settings(
        outputs_dir=root / "out", token=TOKEN, data_root=data, max_body_bytes=1 << 20
    )
    app = create_app(settings)
    with TestClient(app) as client:
        yield app, client, settings


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_route_needs_the_token(secured):
    app, client, _ = secured
    routes = concrete_routes(app)
    paths = {p for _, p in routes}
    assert {"/api/v1/jobs", "/sdapi/v1/txt2img", "/", "/openapi.json", "/docs"} <= paths
    assert len(routes) > 30
    for method, path in routes:
        for headers in ({}, auth("wrong"), {"Authorization": TOKEN}, auth(TOKEN + "x")):
            r = client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.json()["code"] == "unauthorized"
        # a JSON list is no valid body anywhere: past the guard, refused before any job runs
        r = client.request(method, path, headers=auth(), json=[] if method == "POST" else None)
        assert r.status_code != 401, (method, path)
        assert r.status_code < 500, (method, path, r.text)


def test_token_in_query_becomes_a_strict_cookie(secured):
    _, client, _ = secured
    r = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    fresh = TestClient(client.app)
    assert fresh.get("/api/v1/health").status_code == 401
    fresh.cookies.set("imagesynth_token", TOKEN)
    assert fresh.get("/api/v1/health").status_code == 200
    assert TestClient(client.app).get("/?token=nope", follow_redirects=False).status_code == 401


def test_foreign_host_and_origin_are_refused(secured):
    app, client, _ = secured
    r = client.get("/api/v1/health", headers={**auth(), "Host": "evil.example:7860"})
    assert r.status_code == 400 and r.json()["code"] == "bad_host"
    for method, path in concrete_routes(app):
        if method not in ("POST", "DELETE"):
            continue
        for bad in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):  # fmt: skip
            r = client.request(method, path, headers={**auth(), **bad}, json={})
            assert r.status_code == 403 and r.json()["code"] == "bad_origin", (path, bad)
    ok = client.post("/api/v1/jobs/" + "a" * 32 + "/cancel",
                     headers={**auth(), "Origin": "http://127.0.0.1:7860"})  # fmt: skip
    assert ok.status_code == 404  # past the guard: the job just does not exist


def test_only_json_bodies_and_size_caps(secured):
    app, client, settings = secured
    for method, path in concrete_routes(app):
        if method != "POST":
            continue
        for ctype, body in (("application/x-www-form-urlencoded", b"a=1"),
                            ("multipart/form-data; boundary=x", b"--x--"),
                            ("text/plain", b'{"kind": "txt2img"}')):  # fmt: skip
            r = client.post(path, content=body, headers={**auth(), "Content-Type": ctype})
            assert r.status_code == 415 and r.json()["code"] == "json_only", (path, ctype)
    big = b'{"kind": "txt2img", "params": {"prompt": "' + b"a" * (2 << 20) + b'"}}'
    r = client.post("/api/v1/jobs", content=big,
                    headers={**auth(), "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    # a PNG that declares more pixels than the cap is refused before decoding
    buf = io.BytesIO()
    Image.new("1", (5000, 4000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < settings.max_body_bytes
    r = client.post("/api/v1/jobs", headers=auth(), json={"kind": "img2img", "params": {
        "image": base64.b64encode(buf.getvalue()).decode()}})  # fmt: skip
    assert r.status_code == 413 and r.json()["code"] == "image_too_large"


def test_security_headers(secured):
    _, client, _ = secured
    r = client.get("/", headers=auth())
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/api/v1/health", headers=auth()).headers["x-content-type-options"]


TRAVERSALS = ["../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e%2f%2e%2e%2fetc",
              "%252e%252e%252f", "/etc/passwd", "....//....//etc", "..\\..\\windows",
              "a" * 31 + "/", "%00", "~root"]  # fmt: skip


def test_path_traversal_on_routes_that_name_files(secured):
    _, client, settings = secured
    secret = settings.outputs_dir / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    for t in TRAVERSALS:
        for url in (f"/api/v1/images/{t}", f"/api/v1/images/{t}/info", f"/api/v1/runs/{t}",
                    f"/api/v1/runs/{t}/samples/step-00000001.png",
                    f"/api/v1/runs/00001-x/samples/{t}", f"/api/v1/jobs/{t}",
                    f"/static/{t}"):  # fmt: skip
            r = client.get(url, headers=auth())
            assert r.status_code in (404, 405, 422), (url, r.status_code)
            assert b"secret" not in r.content and b"root:" not in r.content


def test_training_folders_are_confined_to_the_data_root(secured):
    _, client, settings = secured

    def train(data):
        body = {"kind": "train", "params": {"data": data, "steps": 1}}
        return client.post("/api/v1/jobs", headers=auth(), json=body)

    for bad, code in (("folder:../outside", "outside_root"), ("folder:/etc", "bad_path"),
                      ("folder:escape", "outside_root"), ("folder:cats/../../outside",
                      "outside_root"), ("folder:%2e%2e/outside", "not_found"),
                      ("folder:C:\\x", "bad_path"), ("folder:", "bad_path"),
                      ("/etc/passwd", "bad_request")):  # fmt: skip
        r = train(bad)
        assert 400 <= r.status_code < 500 and r.json()["code"] == code, (bad, r.text)
    root = settings.data_root
    assert confine(root, "cats") == root.resolve() / "cats"
    assert confine(root, "cats/inner/..") == root.resolve() / "cats"
    for bad in ("escape", "../outside", "/tmp", "cats/../../outside", "escape/.."):
        with pytest.raises(HTTPFail):
            confine(root, bad)
    with pytest.raises(HTTPFail):
        confine(None, "cats")
    listed = client.get("/api/v1/folders", headers=auth()).json()
    assert listed["enabled"] and "cats" in listed["folders"] and "escape" not in listed["folders"]


def test_public_bind_needs_a_token():
    with pytest.raises(ImagesynthError, match="without a token"):
        Settings(host="0.0.0.0", token=None).check_bind()
    Settings(host="0.0.0.0", token="t").check_bind()
    Settings(host="127.0.0.1", token=None).check_bind()
    env = {k: v for k, v in os.environ.items() if k != "IMAGESYNTH_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "imagesynth", "serve", "--host", "0.0.0.0", "--port", "1"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: refusing to listen on '0.0.0.0'")
    assert "Traceback" not in proc.stderr
