import time

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imagesynth.classical.texture import efros_leung, fill, match_histogram, min_cut, quilt
from imagesynth.cli.main import app
from imagesynth.data.skimage_sets import sample_image
from imagesynth.errors import ImagesynthError

runner = CliRunner()


def _sample(name="brick"):
    return np.asarray(sample_image(name).crop((0, 0, 64, 64)), dtype=np.float32) / 255


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


def _seam_ratio(out):
    """Mean abs difference across the wrap-around boundary / across interior neighbours,
    averaged over columns and rows (1 = the wrap looks like any interior boundary)."""
    r = []
    for a in (out, out.transpose(1, 0, 2)):
        wrap = np.abs(a[:, 0] - a[:, -1]).mean()
        inner = np.abs(a[:, 1:] - a[:, :-1]).mean()
        r.append(wrap / inner)
    return float(np.mean(r))


def test_tile_wraps_seamlessly():
    s = _sample("gravel")
    tiled = [quilt(s, 80, seed=k, tile=True) for k in range(3)]
    plain = [quilt(s, 80, seed=k) for k in range(3)]
    assert all(t.shape == (80, 80, 3) for t in tiled)  # exact period, no resampling
    # the measure sees a seam where there is one (an untiled quilt's opposite borders) ...
    assert np.mean([_seam_ratio(p) for p in plain]) > 2.5
    # ... and none across the minimum-error cuts of the wrap-around
    assert np.mean([_seam_ratio(t) for t in tiled]) < 1.4


def _stripes(n=32, period=6):
    """Vertical black / white stripes, 3 px each, as an (n, n, 3) sample."""
    col = ((np.arange(n) % period) < period // 2).astype(np.float32)
    return np.repeat(np.tile(col, (n, 1))[..., None], 3, axis=2)


def test_efros_leung_grows_structure_sequentially():
    out = efros_leung(_stripes(), 24, window=7, seed=0)
    assert out.shape == (24, 24, 3) and set(np.unique(out)) <= {0.0, 1.0}
    g = out[..., 0]
    # the stripes stay vertical and keep their period of 6 px (random pixels: 0.5 each)
    assert (g == g[12]).mean() > 0.8
    assert (g[:, 6:] == g[:, :-6]).mean() > 0.8
    assert 0.4 < g.mean() < 0.6


def test_efros_leung_tile_wraps_and_bad_window():
    g = efros_leung(_stripes(), 18, window=7, seed=1, tile=True)[..., 0]
    row = g.mean(0) > 0.5
    # on the torus the stripes run on across the wrap: period 6 all around
    assert (np.roll(row, -6) == row).mean() > 0.9
    with pytest.raises(ImagesynthError, match="window must be an odd number"):
        efros_leung(_stripes(), 16, window=6)


def _gram_distance(a, b):
    from imagesynth.classical.features import RandomFeatures, gram

    net = RandomFeatures(filters=32, seed=1)
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() * 2 - 1
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() * 2 - 1
    fa, fb = net(ta, net.names[:3]), net(tb, net.names[:3])
    d = [(gram(fa[n]) - gram(fb[n])).norm() / gram(fa[n]).norm() for n in fa]
    return float(np.mean([float(v) for v in d]))


def test_efros_leung_brick_beats_shuffled_pixels():
    """Pixel growing keeps the mortar lines that shuffling the sample's pixels destroys."""
    s = _sample()
    out = efros_leung(s, 48, seed=0)
    rng = np.random.default_rng(0)
    shuffled = s.reshape(-1, 3)[rng.permutation(64 * 64)[: 48 * 48]].reshape(48, 48, 3)
    assert _gram_distance(s, out) < 0.7 * _gram_distance(s, shuffled)


def test_match_histogram_takes_reference_values():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 3)).astype(np.float32)
    ref = rng.random((8, 8, 3)).astype(np.float32) ** 3
    out = match_histogram(x, ref)
    q = np.linspace(0, 1, 9)
    assert np.allclose(np.quantile(out[..., 1], q), np.quantile(ref[..., 1], q), atol=0.01)
    assert (np.argsort(out[..., 0].ravel()) == np.argsort(x[..., 0].ravel())).all()


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


def test_neural_texture_grey_clean_and_same_histogram():
    """A grey sample gives a grey result (no colour speckle), with the sample's grey levels
    and about its pixel-to-pixel roughness (Gram matching alone leaves pixel noise)."""
    from imagesynth.classical.features import get_feature_net
    from imagesynth.classical.texture import neural_texture

    s = np.asarray(sample_image("gravel").resize((128, 128)).crop((0, 0, 48, 48)), np.float32)
    s = s / 255
    seen = []
    out = neural_texture(
        s, 48, get_feature_net(None), steps=40, callback=lambda i, x: seen.append(i)
    )
    assert seen == list(range(1, 41))
    assert out.shape == (48, 48, 3) and np.array_equal(out[..., 0], out[..., 2])
    q = np.linspace(0.05, 0.95, 7)
    assert np.allclose(np.quantile(out, q), np.quantile(s, q), atol=0.02)

    def rough(a):
        return np.abs(np.diff(a[..., 0], axis=1)).mean()

    assert rough(out) < 1.3 * rough(s)
