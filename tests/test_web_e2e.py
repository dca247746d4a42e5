"""The web page end to end in headless Chromium (Debian's `chromium`, driven by Playwright's
Python API with `executable_path`; no browser download).

A real server (uvicorn in a thread, free port, temporary outputs, the bundled 32 px model with
a few steps). Scenarios: generate with a live preview and find the image with its parameters
in the gallery; paint a mask with the mouse and inpaint; start a short training job and watch
its loss plot. Screenshots go to $IMAGESYNTH_TEST_ARTIFACTS (default: pytest's tmp_path).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from PIL import Image  # noqa: E402

from imagesynth.server import Settings, create_app  # noqa: E402

PHONE = {"width": 390, "height": 844}
HTTP = httpx.Client(timeout=60)  # the first request may wait while the worker loads the model
DESKTOP = {"width": 1280, "height": 900}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    env = os.environ.get("IMAGESYNTH_TEST_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.mktemp("web-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real app under uvicorn in a background thread; yields its base URL."""
    out = tmp_path_factory.mktemp("web") / "outputs"
    port = free_port()
    app = create_app(Settings(outputs_dir=out, port=port, max_steps=50))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        try:
            if HTTP.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        raise AssertionError("the server did not start in 30 s")
    # load the pipeline once before the browser waits on it (first load: text encoder + UNet)
    r = HTTP.post(f"{base}/api/v1/jobs", json={"kind": "txt2img", "params": {"steps": 1}})
    job = r.json()["id"]
    while HTTP.get(f"{base}/api/v1/jobs/{job}").json()["status"] in ("queued", "running"):
        time.sleep(0.1)
    yield base
    srv.should_exit = True
    thread.join(15)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ctx = browser.new_context(viewport=DESKTOP)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server + "/")
    wait_js(pg, "document.querySelector('#gen-model').options.length > 0", 30)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def wait_js(page, expr: str, timeout: float = 60) -> None:
    """Poll a JS expression until it is truthy (page.wait_for_function compiles its predicate
    with eval, which the page's Content-Security-Policy forbids; evaluate goes around it)."""
    t0 = time.monotonic()
    while not page.evaluate(f"() => Boolean({expr})"):
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {expr}")
        time.sleep(0.1)


def watch_src(page, selector: str) -> None:
    """Record every value the `src` of `selector` takes (in window.__srcs)."""
    page.evaluate(
        """(sel) => {
            const el = document.querySelector(sel);
            window.__srcs = [el.src];
            new MutationObserver(() => window.__srcs.push(el.src))
                .observe(el, {attributes: true, attributeFilter: ['src']});
        }""",
        selector,
    )


def test_generate_preview_and_gallery_parameters(page, artifacts):
    page.fill("#prompt", "a red circle")
    page.fill("#gen-steps", "12")
    page.fill("#gen-seed", "7")
    watch_src(page, "#gen-preview")
    page.click("#generate-btn")
    page.wait_for_selector("#gen-results img.result", timeout=60_000)
    assert page.text_content("#gen-status") == "done"
    srcs = page.evaluate("window.__srcs")
    previews = [s for s in srcs if s.startswith("data:image/png;base64,")]
    assert previews, f"the preview never updated: {srcs[:1]}"
    assert page.eval_on_selector("#gen-progress", "p => p.value") == 1
    page.screenshot(path=str(artifacts / "web_generate_desktop.png"), full_page=True)

    page.click("#gen-results img.result")  # opens the gallery with the image's parameters
    page.wait_for_selector("#gallery-detail:not([hidden])")
    wait_js(page, "document.querySelector('#detail-params').textContent.length > 0")
    params = json.loads(page.text_content("#detail-params"))
    assert params["prompt"] == "a red circle" and params["seed"] == 7 and params["steps"] == 12
    page.wait_for_selector("#gallery img")
    assert page.locator("#gallery img").count() >= 1
    page.screenshot(path=str(artifacts / "web_gallery_desktop.png"), full_page=True)

    page.click("#send-generate")  # the parameters go back to the form
    assert page.input_value("#prompt") == "a red circle"
    assert page.input_value("#gen-seed") == "7"

    page.set_viewport_size(PHONE)
    page.click("button[data-tab=generate]")
    page.screenshot(path=str(artifacts / "web_generate_phone.png"), full_page=True)


def test_paint_a_mask_and_inpaint(page, server, artifacts):
    r = HTTP.post(
        f"{server}/api/v1/jobs",
        json={"kind": "txt2img", "params": {"prompt": "a blue square", "steps": 4, "seed": 3}},
    )
    job = r.json()["id"]
    while (info := HTTP.get(f"{server}/api/v1/jobs/{job}").json())["status"] == "queued" or (
        info["status"] == "running"
    ):
        time.sleep(0.1)
    source = info["result"]["images"][0]

    page.click("button[data-tab=gallery]")
    page.click(f"#gallery img[data-id='{source['id']}']")
    page.wait_for_selector("#gallery-detail:not([hidden])")
    page.click("#send-edit")
    page.wait_for_selector("#tab-edit:not([hidden])")
    page.select_option("#edit-mode", "inpaint")
    page.fill("#edit-prompt", "a green triangle")
    page.fill("#edit-steps", "6")
    page.fill("#edit-seed", "1")
    wait_js(page, "document.querySelector('#edit-image').getContext('2d')"
                  ".getImageData(128, 128, 1, 1).data[3] > 0")  # fmt: skip
    page.eval_on_selector("#brush", "b => { b.value = '12'; }")  # a wide brush
    box = page.locator("#edit-mask").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.35)
    page.mouse.down()
    for i in range(1, 17):  # a stroke across the upper half
        page.mouse.move(box["x"] + box["width"] * (0.1 + 0.05 * i), box["y"] + box["height"] * 0.35)
    page.mouse.up()
    # the painted mask at the image's 32 px: True where the stroke is
    mask32 = page.evaluate(
        """() => { const c = document.createElement('canvas'); c.width = c.height = 32;
                   const x = c.getContext('2d');
                   x.drawImage(document.querySelector('#edit-mask'), 0, 0, 32, 32);
                   return Array.from(x.getImageData(0, 0, 32, 32).data)
                     .filter((_, i) => i % 4 === 3).map((a) => a > 128); }"""
    )
    painted = page.evaluate(
        """() => { const c = document.querySelector('#edit-mask');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }"""
    )
    assert painted > 500, painted
    page.click("#edit-btn")
    page.wait_for_selector("#edit-results img.result", timeout=60_000)
    assert page.text_content("#edit-status") == "done"
    page.screenshot(path=str(artifacts / "web_inpaint_desktop.png"), full_page=True)
    jobs = HTTP.get(f"{server}/api/v1/jobs", params={"kind": "inpaint"}).json()["jobs"]
    assert jobs and jobs[0]["status"] == "done"
    out = jobs[0]["result"]["images"][0]["params"]
    assert out["mode"] == "inpaint" and out["prompt"] == "a green triangle" and out["steps"] == 6
    before = np.asarray(Image.open(io.BytesIO(HTTP.get(server + source["url"]).content)), float)
    url = jobs[0]["result"]["images"][0]["url"]
    after = np.asarray(Image.open(io.BytesIO(HTTP.get(server + url).content)), float)
    m = np.array(mask32).reshape(32, 32)
    diff = np.abs(after - before).mean(-1)
    assert diff[m].mean() > 2 * diff[~m].mean() + 1, (diff[m].mean(), diff[~m].mean())
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(artifacts / "web_inpaint_phone.png"), full_page=True)


def test_train_shows_the_loss_plot_and_stops(page, artifacts):
    page.click("button[data-tab=train]")
    page.select_option("#train-data", "digits")
    page.select_option("#train-family", "diffusion")
    page.select_option("#train-preset", "tiny")
    page.fill("#train-size", "16")
    page.fill("#train-steps", "400")  # long: the Stop button ends it (samples every 50 steps)
    page.fill("#train-batch", "4")
    page.click("#train-btn")
    wait_js(page, "Number(document.querySelector('#loss-plot').dataset.points || 0) >= 3")
    assert page.text_content("#train-status").startswith("step ")
    page.click("#train-stop")  # the trainer saves a checkpoint, samples and the model
    wait_js(page, "document.querySelector('#train-status').textContent === 'cancelled'")
    wait_js(page, "document.querySelector('#train-sample').naturalWidth > 0")
    page.wait_for_selector("#runs tbody tr")
    blue = page.evaluate(
        """() => { const c = document.querySelector('#loss-plot');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 0; i < d.length; i += 4)
                     n += d[i + 2] > 150 && d[i] < 120 && d[i + 3] > 0; return n; }"""
    )
    assert blue > 20, blue  # the loss curve is drawn
    page.screenshot(path=str(artifacts / "web_train_desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(artifacts / "web_train_phone.png"), full_page=True)


def test_tools_tab_upscales_a_file(page, server, artifacts, tmp_path):
    src = tmp_path / "small.png"
    Image.new("RGB", (24, 16), (200, 40, 40)).save(src)
    page.click("button[data-tab=tools]")
    assert not page.is_visible("#tool-style-file")  # style-only fields hidden for upscale
    page.set_input_files("#tool-file", str(src))
    page.select_option("#tool-method-up", "bicubic")
    page.select_option("#tool-scale", "4")
    page.click("#tool-btn")
    page.wait_for_selector("#tool-results img.result", timeout=60_000)
    assert page.text_content("#tool-status") == "done"
    jobs = HTTP.get(f"{server}/api/v1/jobs", params={"kind": "upscale"}).json()["jobs"]
    img = jobs[0]["result"]["images"][0]
    info = HTTP.get(f"{server}{img['url']}/info").json()
    assert (info["width"], info["height"]) == (96, 64) and info["params"]["method"] == "bicubic"
    page.select_option("#tool-kind", "style")
    assert page.is_visible("#tool-style-file")
    page.screenshot(path=str(artifacts / "web_tools_desktop.png"), full_page=True)
