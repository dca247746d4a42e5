import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.io.pngmeta import read_png_metadata

runner = CliRunner()


def _cli(*args: str) -> subprocess.CompletedProcess:
    """Run the real entry point (error handling included) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "imagesynth", *args], capture_output=True, text=True, timeout=120
    )


def test_import_is_fast_and_lazy():
    code = (
        "import time, sys; t = time.perf_counter(); import imagesynth; "
        "dt = time.perf_counter() - t; "
        "print(dt, 'torch' in sys.modules, 'sklearn' in sys.modules, 'skimage' in sys.modules)"
    )
    best = min(
        float(subprocess.check_output([sys.executable, "-c", code], text=True).split()[0])
        for _ in range(3)
    )
    out = subprocess.check_output([sys.executable, "-c", code], text=True).split()
    assert best < 1.0, f"import imagesynth took {best:.2f} s"
    assert out[1:] == ["False", "False", "False"], "heavy packages imported eagerly"


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["env"],
        ["datasets"],
        ["datasets", "list"],
        ["datasets", "preview"],
        ["datasets", "export"],
    ],
)
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_env_reports_device_and_memory():
    result = runner.invoke(app, ["env", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["device"] in ("cpu", "cuda", "mps")
    assert info["versions"]["torch"] and info["torch_threads"] >= 1
    assert info["memory"]["available_bytes"] > 0
    text = runner.invoke(app, ["env"]).output
    assert "device" in text and "GiB free" in text


def test_datasets_list():
    result = runner.invoke(app, ["datasets", "list"])
    assert result.exit_code == 0
    for name in ("shapes", "digits", "photos", "textures", "folder:PATH"):
        assert name in result.output


def test_preview_writes_grid_with_metadata(tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(
        app,
        [
            "datasets",
            "preview",
            "shapes",
            "--size",
            "32",
            "--n",
            "16",
            "--out",
            str(out),
            "--opt",
            "label_mode=color",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "on a" in result.output and "wrote" in result.output
    with Image.open(out) as im:
        assert im.size == (4 * 34 + 2, 4 * 34 + 2)
    meta = read_png_metadata(out)
    assert meta.params["dataset"] == "shapes" and meta.params["seed"] == 3


def test_export_writes_folder(tmp_path):
    out = tmp_path / "digits"
    result = runner.invoke(app, ["datasets", "export", "digits", "--n", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all((out / r["file_name"]).is_file() for r in rows)
    assert all(r["file_name"].startswith(f"{r['label']}/") for r in rows)


def test_bad_input_is_one_line_exit_2(tmp_path):
    cases = [
        (["datasets", "preview", "mnist"], "unknown dataset 'mnist'"),
        (["datasets", "preview", "digits", "--size", "4"], "size must be"),
        (["datasets", "preview", "digits", "--n", "0"], "n must be >= 1"),
        (["datasets", "preview", "shapes", "--opt", "label_mode=weight"], "label_mode"),
        (["datasets", "preview", "shapes", "--opt", "oops"], "KEY=VALUE"),
        (["datasets", "preview", f"folder:{tmp_path / 'nope'}"], "does not exist"),
        (["datasets", "preview", f"folder:{tmp_path}"], "no images"),
    ]
    for args, message in cases:
        proc = _cli(*args, "--out", str(tmp_path / "x.png"))
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert message in lines[0], lines[0]
        assert "Traceback" not in proc.stderr


def test_folder_warnings_are_one_line_each(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (20, 10), (10, 200, 30)).save(folder / "ok.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    proc = _cli(
        "datasets", "preview", f"folder:{folder}", "--size", "16", "--out", str(tmp_path / "g.png")
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "broken.jpg" in warnings[0] and "skipped 1 of 2" in warnings[1]


@pytest.mark.skipif(os.name != "posix", reason="uses the installed console script")
def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "imagesynth")
    if not os.path.exists(exe):
        pytest.skip("package not installed with its console script")
    t = time.perf_counter()
    proc = subprocess.run([exe, "datasets", "list"], capture_output=True, text=True)
    assert proc.returncode == 0 and "shapes" in proc.stdout
    assert time.perf_counter() - t < 10
