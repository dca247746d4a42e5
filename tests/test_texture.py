import time

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from imagesynth.classical.texture import efros_leung, fill, min_cut, quilt
from imagesynth.cli.main import app

runner = CliRunner()


def _sample():
    from imagesynth.data.skimage_sets import sample_image

    return np.asarray(sample_image("brick").crop((0, 0, 64, 64)), dtype=np.float32) / 255


def test_min_cut_follows_zero_error_column():
    err = np.ones((6, 5))
    err[:, 3] = 0
    assert list(min_cut(err)) == [3] * 6


def test_quilting_speed_and_copies_sample_blocks():
    s = _sample()
    t = time.perf_counter()
    out = quilt(s, 256, seed=0)
    assert time.perf_counter() - t < 5
    assert out.shape == (256, 256, 3)
    # the first block is a verbatim copy of a sample block
    k = 26 - 5  # block minus the overlap the next blocks may cut into
    top = out[:k, :k]
    found = any(np.allclose(s[y : y + k, x : x + k], top) for y in range(39) for x in range(39))
    assert found


def test_tile_wraps_seamlessly():
    s = _sample()
    out = quilt(s, 96, seed=1, tile=True)
    seam = np.abs(out[:, 0] - out[:, -1]).mean()
    inner = np.abs(out[:, 1:] - out[:, :-1]).mean()
    assert seam < 2.5 * inner


def test_efros_leung_uses_sample_colors():
    s = _sample()
    out = efros_leung(s, 32, levels=2, seed=0)
    assert out.shape == (32, 32, 3)
    assert abs(out.mean() - s.mean()) < 0.1


def test_fill_fills_from_texture():
    s = _sample()
    img = np.tile(s, (2, 2, 1))
    mask = np.zeros(img.shape[:2], bool)
    mask[50:70, 50:70] = True
    out = fill(img, mask, seed=0)
    assert np.allclose(out[~mask], img[~mask])
    assert abs(out[mask].mean() - img[~mask].mean()) < 0.1


def test_cli_texture_and_bad_mask(tmp_path):
    p = tmp_path / "s.png"
    Image.fromarray((_sample() * 255).astype(np.uint8)).save(p)
    out = tmp_path / "t.png"
    r = runner.invoke(app, ["texture", str(p), "--size", "64", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (64, 64)
    m = tmp_path / "m.png"
    Image.new("L", (32, 32)).save(m)
    r = runner.invoke(app, ["texture", "fill", str(p), str(m)])
    assert "must match" in str(r.exception)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (10, 10)).save(tiny)
    r = runner.invoke(app, ["texture", str(tiny)])
    assert "at least 16x16" in str(r.exception)
