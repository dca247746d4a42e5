"""The server's image-tool job kinds: upscale, style, texture (tiny images, a few steps).

Each kind: outputs in the gallery with PNG parameters, progress (and previews where the loop
has a hook), cancel within one step where it has one, and a one-line 4xx for bad input.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient
from PIL import Image

from imagesynth.io.pngmeta import read_png_metadata
from imagesynth.server import Settings, create_app

FINISHED = ("done", "failed", "cancelled", "interrupted")


def b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def smooth(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colour image (gradients and a disc): upscalers should reproduce it closely."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(xx / (3 + seed))
    g = yy / h
    b = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 3) ** 2).astype(np.float32)
    arr = np.stack([r, g, 0.2 + 0.6 * b], -1)
    return Image.fromarray((arr * 255).round().astype(np.uint8))


def palette(side: int, seed: int = 0) -> Image.Image:
    """A blocky image of 4 colours: quilting copies sample pixels, so outputs use only these."""
    rng = np.random.default_rng(seed)
    colours = np.array([[200, 30, 30], [30, 160, 40], [20, 40, 200], [240, 240, 240]], np.uint8)
    idx = rng.integers(0, 4, (side // 4, side // 4)).repeat(4, 0).repeat(4, 1)
    return Image.fromarray(colours[idx])


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def submit(client: TestClient, kind: str, **params) -> str:
    r = client.post("/api/v1/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def bad(client: TestClient, kind: str, **params) -> str:
    r = client.post("/api/v1/jobs", json={"kind": kind, "params": params})
    assert r.status_code in (400, 413, 422), r.text
    body = r.json()
    assert set(body) == {"code", "message"} and "\n" not in body["message"]
    return body["message"]


def events(client: TestClient, job_id: str) -> list[tuple[str, dict]]:
    out, name = [], None
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def wait(client: TestClient, job_id: str, timeout: float = 120, step: int | None = None) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        info = client.get(f"/api/v1/jobs/{job_id}").json()
        if info["status"] in FINISHED or (step is not None and info["step"] >= step):
            return info
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def output(client: TestClient, info: dict) -> tuple[np.ndarray, dict]:
    assert info["status"] == "done", info
    [img] = info["result"]["images"]
    png = client.get(img["url"]).content
    return pixels(png), read_png_metadata(png).params


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    out = tmp_path_factory.mktemp("tools") / "outputs"
    settings = Settings(outputs_dir=out, max_tool_side=96, max_upscale_side=256)
    with TestClient(create_app(settings)) as c:
        yield c


def test_upscale_model_and_classical(client):
    im = smooth(20, 24)
    arr, params = output(client, wait(client, submit(client, "upscale", image=b64(im))))
    assert arr.shape == (48, 40, 3)
    assert params["method"] == "model" and params["scale"] == 2 and params["kind"] == "upscale"
    assert params["model"] == "upscaler-x2" and params["input_size"] == [20, 24]
    down = np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((20, 24), Image.BOX), np.int16)
    assert np.abs(down - np.asarray(im, np.int16)).mean() < 6  # the content is kept

    info = wait(client, submit(client, "upscale", image=b64(im), method="bicubic", scale=4))
    arr4, params4 = output(client, info)
    assert np.array_equal(arr4, np.asarray(im.resize((80, 96), Image.BICUBIC), np.int16))
    assert params4["method"] == "bicubic" and info["progress"] == 1.0

    from imagesynth import bundled

    if (Path(bundled.__file__).parent / "upscaler-x4" / "imagesynth.json").is_file():
        arr4m, p4m = output(client, wait(client, submit(client, "upscale", image=b64(im), scale=4)))
        assert arr4m.shape == (96, 80, 3) and p4m["model"] == "upscaler-x4" and p4m["scale"] == 4

    assert "upscales x2" in bad(client, "upscale", image=b64(im), scale=4, model="upscaler-x2")
    assert "at most 256 px" in bad(client, "upscale", image=b64(smooth(90, 90)), scale=4)
    assert "at least 8x8" in bad(client, "upscale", image=b64(smooth(4, 4)))
    assert "not an upscaler" in bad(client, "upscale", image=b64(im), model="shapes-t2i")


def test_style_progress_previews_and_cancel(client):
    content, style = smooth(32, 32), palette(32, 1)
    job = submit(client, "style", content=b64(content), styles=[b64(style)], size=32, steps=6)
    evs = events(client, job)
    prog = [d for n, d in evs if n == "progress"]
    assert [d["step"] for d in prog] == [1, 2, 3, 4, 5, 6] and prog[-1]["total"] == 6
    assert any("preview" in d for d in prog)
    prev = Image.open(io.BytesIO(base64.b64decode(next(d for d in prog if "preview" in d)
                                                  ["preview"])))  # fmt: skip
    assert prev.size == (128, 128)
    arr, params = output(client, wait(client, job))
    assert arr.shape == (32, 32, 3) and params["steps"] == 6 and params["optimizer"] == "adam"
    assert params["features"] == "random" and params["kind"] == "style"
    assert np.abs(arr - np.asarray(content, np.int16)).mean() > 1.0  # it moved toward the style

    long = submit(client, "style", content=b64(content), styles=[b64(style)], size=64,
                  steps=2000, preview=False)  # fmt: skip
    wait(client, long, step=3)
    at = client.post(f"/api/v1/jobs/{long}/cancel").json()["step"]  # the step when cancelled
    info = wait(client, long)
    assert info["status"] == "cancelled" and 3 <= info["step"] <= at + 1 < 2000  # <= one more
    assert info["total"] == 2000

    one = {"content": b64(content), "styles": [b64(style)], "size": 32}
    assert "style_weights" in bad(client, "style", **one, style_weights=[1, 2])
    assert "steps must be at most 2000" in bad(client, "style", **one, steps=2001)
    assert "size must be at most 96" in bad(client, "style", **{**one, "size": 128})
    assert "at least 16x16" in bad(client, "style", **{**one, "content": b64(smooth(8, 8))})


def test_texture_methods_fill_and_bad_input(client):
    sample = palette(48)
    colours = {tuple(c) for c in np.asarray(sample).reshape(-1, 3)}
    arr, params = output(client, wait(client, submit(client, "texture", sample=b64(sample),
                                                     size=64, block=16, seed=3)))  # fmt: skip
    assert arr.shape == (64, 64, 3) and params["method"] == "quilting" and params["seed"] == 3
    assert {tuple(c) for c in arr.reshape(-1, 3)} <= colours  # quilting copies sample pixels

    info = wait(client, submit(client, "texture", sample=b64(sample), size=24,
                               method="efros-leung"))  # fmt: skip
    assert output(client, info)[0].shape == (24, 24, 3)

    job = submit(client, "texture", sample=b64(sample), size=32, method="neural", steps=5)
    prog = [d for n, d in events(client, job) if n == "progress"]
    assert [d["step"] for d in prog if d["step"]] == [1, 2, 3, 4, 5]
    assert any("preview" in d for d in prog)
    arr_n, params_n = output(client, wait(client, job))
    assert arr_n.shape == (32, 32, 3) and params_n["steps"] == 5

    mask = Image.new("L", (48, 48), 0)
    mask.paste(255, (16, 16, 32, 32))
    arr_f, params_f = output(client, wait(client, submit(
        client, "texture", sample=b64(sample), mask=b64(mask), block=9)))  # fmt: skip
    keep = np.asarray(mask) == 0
    assert np.array_equal(arr_f[keep], np.asarray(sample, np.int16)[keep])
    assert params_f["method"] == "fill"

    assert "quilting with block 60" in bad(client, "texture", sample=b64(sample), size=32, block=60)
    small = b64(mask.crop((0, 0, 40, 40)))
    assert "must match" in bad(client, "texture", sample=b64(sample), mask=small)
    assert "size must be at most 96" in bad(client, "texture", sample=b64(sample), size=128)
    assert bad(client, "texture", sample=b64(sample), method="warp")  # 422 from the schema
    assert "sample: not a readable image" in bad(
        client, "texture", sample="bm90IGFuIGltYWdl", size=32
    )


def test_tool_kinds_are_listed(client):
    kinds = {k["name"] for k in client.get("/api/v1/kinds").json()}
    assert {"upscale", "style", "texture"} <= kinds
