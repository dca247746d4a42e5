"""`imagesynth generate` and `imagesynth edit` with the bundled model, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.io.pngmeta import read_png_metadata

runner = CliRunner()
PROMPT = "a red circle to the left of a blue square on a white background"


def test_bundled_model_is_small_fp16_and_reproducible():
    from imagesynth.bundled import bundled_model_path

    path = bundled_model_path()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size <= 30 * 2**20
    info = json.loads((path / "imagesynth.json").read_text())
    assert info["family"] == "latent-diffusion"
    assert all(c["dtype"] == "float16" for c in info["components"].values())
    commands = info["recipe"]["commands"]
    assert any("train autoencoder" in c for c in commands)
    assert any("train latent-diffusion" in c for c in commands)


def test_generate_writes_pngs_with_parameters(tmp_path):
    out = tmp_path / "outputs"
    strip = tmp_path / "strip.png"
    res = runner.invoke(
        app,
        [
            "generate",
            PROMPT,
            "--n",
            "2",
            "--seed",
            "7",
            "--steps",
            "8",
            "--out-dir",
            str(out),
            "--save-steps",
            str(strip),
        ],
    )
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00000-7.png", "00001-8.png"]
    meta = read_png_metadata(files[1])
    assert meta.params["prompt"] == PROMPT
    assert meta.imagesynth["seed"] == 8 and meta.imagesynth["steps"] == 8
    assert "Steps: 8" in meta.parameters and "Seed: 8" in meta.parameters
    assert strip.is_file()
    # regenerating from the metadata gives the same pixels
    again = tmp_path / "again"
    res = runner.invoke(
        app,
        ["generate", PROMPT, "--n", "1", "--seed", "8", "--steps", "8", "--out-dir", str(again)],
    )
    assert res.exit_code == 0, res.output
    a = np.asarray(Image.open(files[1]))
    b = np.asarray(Image.open(next(again.glob("*.png"))))
    assert np.array_equal(a, b)
    # numbering continues in the same folder
    res = runner.invoke(app, ["generate", "", "--n", "1", "--steps", "2", "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("00002-*.png"))) == 1


def test_edit_commands(tmp_path):
    from imagesynth.data import get_dataset

    src = tmp_path / "in.png"
    get_dataset("shapes", size=32, split="test")[2].image.save(src)
    mask = tmp_path / "mask.png"
    m = Image.new("L", (32, 32), 0)
    m.paste(255, (0, 0, 16, 32))
    m.save(mask)
    out = tmp_path / "out"
    common = ["--steps", "4", "--seed", "1", "--out-dir", str(out)]
    for args in (
        ["img2img", str(src), "a blue square", "--strength", "0.5"],
        ["inpaint", str(src), str(mask), "a green triangle on the left"],
        ["outpaint", str(src), "a blue square", "--left", "8", "--right", "8"],
        ["sketch", str(src), "a blue square", "--n", "1"],
    ):
        res = runner.invoke(app, ["edit", *args, *common])
        assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.png"))
    assert len(files) == 4
    assert Image.open(files[2]).size == (48, 32)
    modes = [read_png_metadata(f).imagesynth.get("mode") for f in files]
    assert modes == ["img2img", "inpaint", "outpaint", "sketch"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["edit", "img2img", "{src}", "x", "--strength", "1.5"], "strength must be in [0, 1]"),
        (["edit", "img2img", "{missing}", "x"], "not found"),
        (["edit", "inpaint", "{src}", "{src}", "x", "--steps", "0"], "steps"),
        (["generate", "x", "--size", "30"], "multiple"),
        (["generate", "x", "--model", "{tmp}"], "model directory"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    src = tmp_path / "in.png"
    Image.new("RGB", (32, 32), "white").save(src)
    fill = {"src": str(src), "missing": str(tmp_path / "nope.png"), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "imagesynth", *argv, "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert lines and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
