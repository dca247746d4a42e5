"""The server's JSON API, job queue, SSE events, gallery, A1111 subset and restart persistence.

One app per module (the bundled 32 px model, 2-4 denoising steps); pipelines are cached per
process, so the model loads once.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient
from PIL import Image
from pydantic import BaseModel

from imagesynth.io.pngmeta import read_png_metadata
from imagesynth.server import Settings, create_app
from imagesynth.server.jobs import KINDS, JobKind
from imagesynth.server.store import Store

FINISHED = ("done", "failed", "cancelled", "interrupted")


def wait(client: TestClient, job_id: str, timeout: float = 180) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        info = client.get(f"/api/v1/jobs/{job_id}").json()
        if info["status"] in FINISHED:
            return info
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {info}")


def wait_step(client: TestClient, job_id: str, step: int, timeout: float = 180) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        info = client.get(f"/api/v1/jobs/{job_id}").json()
        if info["step"] >= step or info["status"] in FINISHED:
            return info
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached step {step}")


def submit(client: TestClient, kind: str, **params) -> str:
    r = client.post("/api/v1/jobs", json={"kind": kind, "params": params})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("server") / "outputs"
    settings = Settings(outputs_dir=out, max_queue=3, max_steps=400)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def test_txt2img_events_preview_gallery_and_png_parameters(server):
    client, _settings = server
    job_id = submit(client, "txt2img", prompt="a red circle", steps=3, seed=5, n=2)
    events = []
    with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[0] == "state" and names[-1] == "done"
    progress = [d for n, d in events if n == "progress"]
    assert [d["step"] for d in progress] == [1, 2, 3] and progress[-1]["total"] == 3
    previews = [d["preview"] for d in progress if "preview" in d]
    assert previews, "progress events carry a predicted-x0 preview"
    prev = Image.open(io.BytesIO(base64.b64decode(previews[-1])))
    assert prev.format == "PNG" and prev.size[0] >= 32
    result = events[-1][1]["result"]
    assert result["seed"] == 5 and len(result["images"]) == 2

    info = client.get(f"/api/v1/jobs/{job_id}").json()
    assert info["status"] == "done" and info["progress"] == 1.0 and info["step"] == 3

    img = result["images"][1]
    r = client.get(img["url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"].startswith("attachment")
    assert r.headers["x-content-type-options"] == "nosniff"
    meta = read_png_metadata(r.content)
    assert meta.params["seed"] == 6 and meta.params["prompt"] == "a red circle"
    assert "Steps: 3" in meta.parameters and "Seed: 6" in meta.parameters

    gallery = client.get("/api/v1/images").json()
    ids = [g["id"] for g in gallery["images"]]
    assert img["id"] in ids and gallery["total"] >= 2
    detail = client.get(f"/api/v1/images/{img['id']}/info").json()
    assert detail["params"]["seed"] == 6 and detail["params"]["steps"] == 3


def test_same_seed_same_pixels_and_a1111_txt2img_matches(server):
    client, _ = server
    a = wait(client, submit(client, "txt2img", prompt="a blue square", steps=2, seed=11))
    png_a = client.get(a["result"]["images"][0]["url"]).content
    r = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "a blue square", "steps": 2, "seed": 11, "cfg_scale": 2.0,
              "sampler_name": "DPM++ 2M"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert isinstance(body["info"], str)
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11] and info["seed"] == 11 and info["steps"] == 2
    assert info["infotexts"][0].startswith("a blue square\nSteps: 2, Sampler: DPM++ 2M")
    assert body["parameters"]["prompt"] == "a blue square" and body["parameters"]["n_iter"] == 1
    png_b = base64.b64decode(body["images"][0])
    assert np.array_equal(pixels(png_a), pixels(png_b))  # one code path, one result
    c = wait(client, submit(client, "txt2img", prompt="a blue square", steps=2, seed=12))
    png_c = client.get(c["result"]["images"][0]["url"]).content
    assert np.abs(pixels(png_a) - pixels(png_c)).mean() > 1.0


def test_a1111_listings_progress_interrupt_and_png_info(server):
    client, _ = server
    samplers = client.get("/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert {"DPM++ 2M", "Euler a", "DDIM"} <= set(names)
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["model_name"] == "shapes-t2i" and "/" not in models[0]["filename"]
    idle = client.get("/sdapi/v1/progress").json()
    assert set(idle) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert idle["state"]["job_count"] == 0

    job_id = submit(client, "txt2img", prompt="a circle", steps=300, seed=1)
    wait_step(client, job_id, 2)
    prog = client.get("/sdapi/v1/progress").json()
    assert prog["state"]["job"] == job_id and 0 < prog["progress"] < 1
    assert prog["state"]["sampling_steps"] == 300 and prog["current_image"]
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    assert wait(client, job_id)["status"] == "cancelled"

    done = wait(client, submit(client, "txt2img", prompt="a small green star", steps=2, seed=3))
    png = client.get(done["result"]["images"][0]["url"]).content
    r = client.post("/sdapi/v1/png-info", json={"image": b64(png)}).json()
    assert r["info"].startswith("a small green star\nSteps: 2")
    assert r["parameters"]["Prompt"] == "a small green star"
    assert r["parameters"]["Seed"] == 3 and r["parameters"]["Steps"] == 2
    assert r["parameters"]["Size-1"] == 32 and "imagesynth" in r["items"]
    junk = client.post("/sdapi/v1/png-info", json={"image": b64(b"not a png")}).json()
    assert junk["info"] == "" and junk["parameters"] == {}


def test_cancel_stops_within_one_step_and_drops_queued_jobs(server):
    client, _ = server
    running = submit(client, "txt2img", prompt="x", steps=400, seed=1)
    queued = submit(client, "txt2img", prompt="y", steps=400, seed=2)
    at = wait_step(client, running, 3)["step"]
    r = client.post(f"/api/v1/jobs/{queued}/cancel")
    assert r.json()["status"] == "cancelled"
    t0 = time.monotonic()
    client.post(f"/api/v1/jobs/{running}/cancel")
    info = wait(client, running)
    assert info["status"] == "cancelled" and time.monotonic() - t0 < 20
    # the step counter read before the cancel can lag by one step; the sampler stops at the next
    assert info["step"] <= at + 2 < 400
    q = wait(client, queued)
    assert q["status"] == "cancelled" and q["step"] == 0 and q["started"] is None
    assert client.get("/api/v1/health").json()["running"] is None


def test_full_queue_answers_429(server):
    client, settings = server
    ids, codes = [], []
    for i in range(settings.max_queue + 3):
        r = client.post(
            "/api/v1/jobs", json={"kind": "txt2img", "params": {"steps": 400, "seed": i}}
        )
        codes.append(r.status_code)
        if r.status_code == 200:
            ids.append(r.json()["id"])
        else:
            assert r.json()["code"] == "queue_full" and "queue is full" in r.json()["message"]
    assert 429 in codes
    assert len(ids) in (settings.max_queue, settings.max_queue + 1)  # + the one running
    for job_id in ids:
        client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert all(wait(client, j)["status"] == "cancelled" for j in ids)


def test_bad_requests_are_4xx_with_code_and_message(server):
    client, _ = server

    def post(kind, **params):
        return client.post("/api/v1/jobs", json={"kind": kind, "params": params})

    cases = [
        (post("upscale-nonexistent"), 400, "unknown_kind"),
        (post("txt2img", steps=0), 422, "invalid"),
        (post("txt2img", unknown_field=1), 422, "invalid"),
        (post("txt2img", sampler="warp-drive"), 400, "bad_request"),
        (post("txt2img", model="../../etc"), 400, "bad_request"),
        (post("txt2img", n=50), 400, "bad_request"),
        (post("txt2img", width=4096, height=64), 400, "bad_request"),
        (post("img2img", image="%%%not-base64"), 400, "bad_request"),
        (post("img2img", image=b64(b"GIF89a garbage")), 400, "bad_request"),
        (
            client.post(
                "/api/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}
            ),
            422,
            "invalid",
        ),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.text
        body = r.json()
        assert set(body) == {"code", "message"} and body["code"] == code
        assert "Traceback" not in body["message"] and "\n" not in body["message"]
    assert "dpmpp-2m" in post("txt2img", sampler="warp-drive").json()["message"]
    # a size the model cannot take fails the job (not the server) with a clear message
    info = wait(client, submit(client, "txt2img", width=36, height=36, steps=2))
    assert info["status"] == "failed" and info["error"]["code"] == "bad_request"
    assert "multiple" in info["error"]["message"]


def test_img2img_and_inpaint_keep_what_they_should(server):
    client, _ = server
    base = wait(client, submit(client, "txt2img", prompt="a red circle", steps=3, seed=2))
    png = client.get(base["result"]["images"][0]["url"]).content
    orig = pixels(png)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # repaint the left half
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    job = submit(client, "inpaint", prompt="a blue square", image=b64(png),
                 mask="data:image/png;base64," + b64(buf.getvalue()), steps=3, seed=9)  # fmt: skip
    out = wait(client, job)
    assert out["status"] == "done", out
    new = pixels(client.get(out["result"]["images"][0]["url"]).content)
    kept = np.abs(new[:, 20:] - orig[:, 20:]).mean()
    changed = np.abs(new[:, :12] - orig[:, :12]).mean()
    assert kept < 3.0 and changed > 3 * kept + 1, (kept, changed)
    assert out["result"]["images"][0]["params"]["mode"] == "inpaint"

    low = wait(client, submit(client, "img2img", image=b64(png), strength=0.0, steps=3, seed=9))
    recon = pixels(client.get(low["result"]["images"][0]["url"]).content)
    assert np.abs(recon - orig).mean() < 20  # strength 0 = the autoencoder's reconstruction
    r = client.post(
        "/sdapi/v1/img2img",
        json={"init_images": [b64(png)], "mask": b64(buf.getvalue()), "steps": 2, "seed": 1},
    )
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_listings_come_from_the_registries(server):
    client, _ = server
    from imagesynth.data import list_datasets
    from imagesynth.sampling import sampler_names

    assert [s["name"] for s in client.get("/api/v1/samplers").json()] == sampler_names()
    names = {d["name"] for d in client.get("/api/v1/datasets").json()}
    assert names == {d.name for d in list_datasets()}
    assert "fid" in {m["name"] for m in client.get("/api/v1/metrics").json()}
    fams = {f["name"]: f["presets"] for f in client.get("/api/v1/families").json()}
    assert "tiny" in fams["diffusion"]
    kinds = {k["name"] for k in client.get("/api/v1/kinds").json()}
    assert {"txt2img", "img2img", "inpaint", "outpaint", "train", "estimate", "eval"} <= kinds
    assert client.get("/api/v1/folders").json() == {"enabled": False, "folders": []}


def test_estimate_route_and_job(server):
    client, _ = server
    r = client.post("/api/v1/estimate", json={"model": "tiny", "task": "train", "size": 16,
                                              "batch": 8})  # fmt: skip
    assert r.status_code == 200, r.text
    rep = r.json()["report"]
    assert rep["seconds_per_step"] > 0 and rep["memory"]["total"] > 0 and rep["task"] == "train"
    job = wait(client, submit(client, "estimate", model="shapes-t2i", steps=4, size=32))
    assert job["status"] == "done" and job["result"]["report"]["steps"] == 4
    # the other families' presets, as the Train page names them
    r = client.post("/api/v1/estimate", json={"model": "gan:dcgan-tiny", "task": "train",
                                              "size": 16, "batch": 8})  # fmt: skip
    assert r.status_code == 200, r.text
    assert "gan preset dcgan-tiny" in r.json()["report"]["architecture"]
    r = client.post("/api/v1/estimate", json={"model": "gan:nope", "task": "train"})
    assert r.status_code == 400 and "unknown" in r.json()["message"]


def test_eval_job_progress_and_cancel_inside_the_sampling(server):
    client, _ = server
    job = submit(client, "eval", model="shapes-t2i", ref="shapes", metrics="kid", n=8, steps=2)
    steps = []
    with client.stream("GET", f"/api/v1/jobs/{job}/events") as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"step"' in line:
                steps.append(json.loads(line[6:]).get("step"))
    info = wait(client, job)
    assert info["status"] == "done", info
    assert info["total"] == 9 and info["step"] == 9  # 8 images, then the metrics
    assert 4 in steps and 8 in steps  # half the steps of the one batch = half the images
    assert "kid" in info["result"]["text"]

    long = submit(client, "eval", model="shapes-t2i", ref="shapes", metrics="kid", n=16,
                  steps=400)  # fmt: skip
    at = wait_step(client, long, 1)["step"]
    t0 = time.monotonic()
    client.post(f"/api/v1/jobs/{long}/cancel")
    info = wait(client, long)
    assert info["status"] == "cancelled" and 1 <= at <= info["step"] < 16
    assert time.monotonic() - t0 < 20


def test_crashing_job_fails_and_server_keeps_serving(server):
    client, _ = server

    class NoParams(BaseModel):
        pass

    def boom(ctx, params):
        raise RuntimeError("synthetic crash\nwith a second line")

    KINDS["crash-test"] = JobKind(NoParams, boom)
    try:
        info = wait(client, submit(client, "crash-test"))
    finally:
        del KINDS["crash-test"]
    assert info["status"] == "failed" and info["error"]["code"] == "job_crashed"
    assert info["error"]["message"] == "RuntimeError: synthetic crash"
    ok = wait(client, submit(client, "txt2img", steps=1, seed=0))
    assert ok["status"] == "done"


def test_time_cap_fails_the_job(server):
    client, settings = server
    old = settings.max_job_seconds
    settings.max_job_seconds = 0.3
    try:
        info = wait(client, submit(client, "txt2img", steps=400, seed=0))
    finally:
        settings.max_job_seconds = old
    assert info["status"] == "failed" and info["error"]["code"] == "timeout"
    assert info["step"] < 400  # stopped at the first check past the cap


def test_train_stop_resume_and_the_trained_model_is_listed(server):
    client, _ = server
    params = {"family": "diffusion", "data": "digits", "size": 16, "preset": "tiny",
              "steps": 400, "batch": 4, "sample_every": 1000, "log_every": 1,
              "ckpt_every": 1000}  # fmt: skip
    job = submit(client, "train", **params)
    wait_step(client, job, 3, timeout=240)
    client.post(f"/api/v1/jobs/{job}/cancel")
    info = wait(client, job, timeout=240)
    assert info["status"] == "cancelled", info
    run, stopped_at = info["result"]["run"], info["result"]["step"]
    assert info["result"]["stopped"] == "stopped" and 3 <= stopped_at < 400
    detail = client.get(f"/api/v1/runs/{run}").json()
    assert detail["checkpoints"] == [stopped_at]  # the interrupt path saved one
    assert [s["step"] for s in detail["stats"]] == list(range(1, stopped_at + 1))
    assert detail["samples"] and client.get(detail["samples"][-1]).status_code == 200
    assert "/" not in detail["config"]["data"] or detail["config"]["data"] == "digits"

    # the stopped run's model generates (and is cached) before the resume rewrites it
    before = wait(client, submit(client, "txt2img", model=f"run:{run}", steps=2, seed=0))
    png_before = client.get(before["result"]["images"][0]["url"]).content

    resumed = wait(client, submit(client, "train", resume=run, steps=stopped_at + 2), timeout=240)
    assert resumed["status"] == "done", resumed
    assert resumed["result"]["run"] == run and resumed["result"]["step"] == stopped_at + 2
    stats = client.get(f"/api/v1/runs/{run}").json()["stats"]
    assert [s["step"] for s in stats] == list(range(1, stopped_at + 3))  # continued, no restart
    models = {m["name"]: m for m in client.get("/api/v1/models").json()}
    assert models[f"run:{run}"]["family"] == "diffusion"
    # the trained (class-free pixel diffusion) model generates through the same job kind
    gen = wait(client, submit(client, "txt2img", model=f"run:{run}", steps=2, seed=0))
    assert gen["status"] == "done", gen
    png_after = client.get(gen["result"]["images"][0]["url"]).content
    # same seed, new weights: a stale cached pipeline would give the very same pixels
    assert not np.array_equal(pixels(png_before), pixels(png_after))
    bad = client.post("/api/v1/jobs", json={"kind": "train", "params": {"resume": "../x"}})
    assert bad.status_code == 404 and bad.json()["code"] == "not_found"


def test_restart_keeps_jobs_and_images_and_marks_interrupted(tmp_path):
    settings = Settings(outputs_dir=tmp_path / "out")
    with TestClient(create_app(settings)) as client:
        done = wait(client, submit(client, "txt2img", prompt="a circle", steps=1, seed=4))
        image_id = done["result"]["images"][0]["id"]
    # a job left running by a crash: written as the worker would, then the process "dies"
    store = Store(settings.db_path)
    store.add_job("f" * 32, "txt2img", {"prompt": "lost"}, time.time())
    store.update_job("f" * 32, status="running", started=time.time(), step=3, total=20)
    store.close()
    with TestClient(create_app(settings)) as client:
        again = client.get(f"/api/v1/jobs/{done['id']}").json()
        assert again["status"] == "done" and again["result"]["images"][0]["id"] == image_id
        assert client.get(f"/api/v1/images/{image_id}").status_code == 200
        assert image_id in [i["id"] for i in client.get("/api/v1/images").json()["images"]]
        lost = client.get(f"/api/v1/jobs/{'f' * 32}").json()
        assert lost["status"] == "interrupted" and lost["step"] == 3
        with client.stream("GET", f"/api/v1/jobs/{'f' * 32}/events") as resp:
            lines = [ln for ln in resp.iter_lines() if ln.startswith("data: ")]
        assert json.loads(lines[0][6:])["status"] == "interrupted"
        listed = {j["id"]: j["status"] for j in client.get("/api/v1/jobs").json()["jobs"]}
        assert listed[done["id"]] == "done" and listed["f" * 32] == "interrupted"


def test_model_cache_reloads_a_model_rewritten_on_disk(tmp_path):
    import shutil

    from imagesynth.bundled import bundled_model_path
    from imagesynth.server.models import ModelRegistry

    models = tmp_path / "models"
    shutil.copytree(bundled_model_path(), models / "copy")
    reg = ModelRegistry(Settings(outputs_dir=tmp_path / "out", models_dir=models))
    a = reg.load("copy")
    assert reg.load("copy") is a  # cached while the files are unchanged
    meta = models / "copy" / "imagesynth.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # "rewritten"
    b = reg.load("copy")
    assert b is not a and reg.load("copy") is b
