"""The eval / synth-dataset / cas commands through a local typer app calling `register`."""

import json

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from imagesynth.cli.eval import register

runner = CliRunner()


def _app():
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    register(app)
    return app


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_CACHE", str(tmp_path_factory.getbasetemp() / "cli-cache"))


def _write_images(folder, n, size=16, mode="L", seed=0, sub=None):
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, 3)
        d = folder / sub[i % len(sub)] if sub else folder
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(d / f"{i:03d}.png")


def test_eval_pair_files_and_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _write_images(a, 3, 24, "RGB", seed=0)
    _write_images(b, 3, 24, "RGB", seed=1)
    out = tmp_path / "pair.json"
    r = runner.invoke(_app(), ["eval", "pair", str(a), str(b), "--metrics", "ssim,ms-ssim,psnr",
                               "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    payload = json.loads(out.read_text())
    assert [s["metric"] for s in payload["scores"]] == ["ssim", "ms-ssim", "psnr"]
    assert payload["scores"][0]["protocol"]["n_pairs"] == 3
    r = runner.invoke(_app(), ["eval", "pair", str(a / "000.png"), str(a / "000.png")])
    assert r.exit_code == 0 and "psnr" in r.output and "100.000" in r.output
    (b / "002.png").unlink()
    r = runner.invoke(_app(), ["eval", "pair", str(a), str(b)])
    assert r.exit_code != 0 and "002 is only in" in str(r.exception)
    r = runner.invoke(_app(), ["eval", "pair", str(a), str(a), "--metrics", "lpips"])
    assert "--lpips-backbone" in str(r.exception)


def test_eval_folder_default_run_and_compare(tmp_path):
    folder = tmp_path / "fakes"
    _write_images(folder, 30, 16, "L")
    outs = []
    for n in (30, 20):
        out = tmp_path / f"s{n}.json"
        r = runner.invoke(_app(), ["eval", str(folder), "--ref", "digits", "--metrics", "fid,kid",
                                   "--extractor", "random", "--n", str(n), "--kid-subsets", "3",
                                   "--convert-channels", "--out", str(out)])  # fmt: skip
        assert r.exit_code == 0, r.output
        assert "real floor" in r.output and "fid" in r.output
        outs.append(str(out))
    r = runner.invoke(_app(), ["eval", "compare", *outs])
    assert r.exit_code == 0 and "not comparable" in r.output and "n_samples" in r.output
    rgb = tmp_path / "rgb"
    _write_images(rgb, 5, 16, "L")
    _write_images(rgb / "x", 1, 8, "L")
    r = runner.invoke(_app(), ["eval", str(rgb), "--ref", "digits", "--extractor", "random"])
    assert r.exit_code != 0 and "mixes image sizes" in str(r.exception)


@pytest.mark.slow
def test_synth_dataset_and_cas_with_a_tiny_model(tmp_path):
    from imagesynth.api import train

    res = train(family="diffusion", data="digits", size=16, cond="class", steps=2, batch=8,
                family_options={"preset": "tiny"}, runs_dir=str(tmp_path / "runs"),
                sample_every=100, progress=False)  # fmt: skip
    model = res.model_dir
    out = tmp_path / "synth"
    r = runner.invoke(_app(), ["synth-dataset", str(model), "--n", "20", "--out", str(out),
                               "--steps", "2", "--batch", "10"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and rows[3]["label"] == 3 and rows[3]["file_name"] == "3/000003.png"
    assert rows[3]["caption"] == "a handwritten digit 3" and (out / "3" / "000003.png").is_file()
    from imagesynth.io.pngmeta import read_png_metadata

    assert read_png_metadata(out / "3" / "000003.png").params["seed"] == 3
    r = runner.invoke(_app(), ["cas", "--synthetic", str(out), "--data", "digits",
                               "--train-steps", "3", "--per-class", "2",
                               "--out", str(tmp_path / "cas.json")])  # fmt: skip
    assert r.exit_code == 0, r.output
    cas = json.loads((tmp_path / "cas.json").read_text())
    assert cas["n_synthetic"] == 20 and cas["n_small_real"] == 20 and cas["n_test"] == 359
    for k in ("real_accuracy", "synthetic_accuracy", "small_real_gain"):
        assert -1 <= cas[k] <= 1
