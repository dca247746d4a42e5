"""Evaluation suite: parity with scipy / torchmetrics / scikit-image, protocols, bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.errors import DataError, ImagesynthError, ModelFileError
from imagesynth.metrics import stats
from imagesynth.metrics.evaluate import evaluate_samples, from_pils, reference_images
from imagesynth.metrics.extractors import (
    load_domain_extractor,
    random_extractor,
    train_domain_extractor,
)
from imagesynth.metrics.protocol import make_score, parse_metrics, require_comparable


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def tiny_extractor(tmp_path_factory):
    """A domain extractor trained for 1 epoch on 16 px digits (real code, short recipe)."""
    path = train_domain_extractor(
        "digits", epochs=1, out=tmp_path_factory.mktemp("ext") / "digits-16", progress=False
    )
    return path


def _feats(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    return a + shift


# ------------------------------------------------------------------ set metric math


def test_fid_matches_float64_scipy_reference():
    from scipy import linalg

    a, b = _feats(400, 32, 0), _feats(300, 32, 1, shift=0.5)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b).real
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean)
    assert stats.fid(a, b) == pytest.approx(ref, rel=1e-6)
    assert abs(stats.fid(a, a)) < 1e-8


def test_fid_kid_is_match_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    a = torch.from_numpy(_feats(120, 16, 2))
    b = torch.from_numpy(_feats(100, 16, 3, shift=0.3))
    tm = FrechetInceptionDistance(feature=Identity(), normalize=True)
    tm.update(b, real=True)
    tm.update(a, real=False)
    assert stats.fid(a.numpy(), b.numpy()) == pytest.approx(tm.compute().item(), rel=1e-6)

    kid_tm = KernelInceptionDistance(feature=Identity(), subsets=1, subset_size=100, normalize=True)
    kid_tm.update(b, real=True)
    kid_tm.update(a[:100], real=False)
    ours = stats.kid(a[:100].numpy(), b.numpy(), subsets=1, subset_size=100)[0]
    assert ours == pytest.approx(kid_tm.compute()[0].item(), rel=1e-6)

    logits = torch.from_numpy(_feats(64, 10, 4))
    is_tm = InceptionScore(feature=Identity(), splits=1)  # float logits pass through
    is_tm.update(logits)
    assert stats.inception_score(logits.numpy(), 1)[0] == pytest.approx(
        is_tm.compute()[0].item(), rel=1e-6
    )


def test_kid_unbiased_estimator_matches_direct_sum():
    x, y = _feats(7, 5, 5), _feats(6, 5, 6, shift=0.2)
    k = lambda u, v: (u @ v / 5 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(6)) / 42
    assert stats.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_precision_recall_brute_force():
    a, b = _feats(30, 3, 7), _feats(25, 3, 8, shift=0.4)

    def radii(s):
        d = np.linalg.norm(s[:, None] - s[None], axis=-1)
        return np.sort(d, 1)[:, 3]

    def cover(q, c):
        d = np.linalg.norm(q[:, None] - c[None], axis=-1)
        return float((d <= radii(c)[None] + 1e-12).any(1).mean())

    p, r = stats.precision_recall(a, b, k=3)
    assert p == pytest.approx(cover(a, b)) and r == pytest.approx(cover(b, a))
    assert stats.precision_recall(b, b, k=3) == (1.0, 1.0)


def test_set_metric_bad_input():
    one = np.zeros((1, 4))
    with pytest.raises(ImagesynthError, match="at least 2"):
        stats.fid(one, _feats(5, 4, 0))
    with pytest.raises(ImagesynthError, match="larger than the sample"):
        stats.kid(_feats(10, 4, 0), _feats(50, 4, 1), subset_size=20)
    with pytest.raises(ImagesynthError, match="feature sizes differ"):
        stats.fid(_feats(5, 4, 0), _feats(5, 3, 0))
    with pytest.raises(ImagesynthError, match="unknown metric"):
        parse_metrics("fid,fud")
    assert parse_metrics("fid,pr") == ["fid", "precision", "recall"]


# ------------------------------------------------------------------ images and protocols


def test_fid_of_same_images_is_zero_and_grows_with_noise(tiny_extractor):
    ext = load_domain_extractor(tiny_extractor)
    x = reference_images(
        __import__("imagesynth.metrics.evaluate", fromlist=["x"]).make_reference(
            "digits", 16, split="test"
        )
    ).images[:150]
    feats = ext.extract(x)[0]
    scale = np.trace(np.cov(feats.astype(np.float64), rowvar=False))
    assert abs(stats.fid(feats, feats)) < 1e-6 * scale  # rank-deficient covariance: round-off only
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    values = []
    for sigma in (0.05, 0.2, 0.5, 1.0):
        noisy = ((x.float() / 127.5 - 1) + sigma * noise).clamp(-1, 1)
        values.append(stats.fid(ext.extract(((noisy + 1) * 127.5).round().byte())[0], feats))
    assert values == sorted(values) and values[0] > 0


def test_evaluate_samples_records_protocol_and_floor(tiny_extractor):
    ext = load_domain_extractor(tiny_extractor)
    ds_x = torch.rand(60, 1, 16, 16) * 2 - 1
    r = evaluate_samples(ds_x, "digits", "fid,kid,is", extractor=ext, kid_subsets=5)
    v = r["values"]
    assert v["fid"] > v["fid_floor"] > 0  # noise is far from digits; real-vs-real is not
    fid_score = r["scores"][0]
    p = fid_score["protocol"]
    assert p["n_samples"] == 60 and p["n_refs"] == 1438
    assert p["extractor_sha256"] == ext.sha256 and p["resize_filter"] == "bilinear-antialias"
    assert p["reference"]["split"] == "train" and fid_score["floor_n"] == 60
    # a different sample count is a different protocol: never shown as comparable
    r2 = evaluate_samples(ds_x[:40], "digits", "fid", extractor=ext)
    assert r2["scores"][0]["protocol"]["protocol_id"] != p["protocol_id"]
    with pytest.raises(ImagesynthError, match="not comparable"):
        require_comparable([fid_score, r2["scores"][0]])
    with pytest.raises(ImagesynthError, match="at least 2"):
        evaluate_samples(ds_x[:1], "digits", "fid", extractor=ext)
    with pytest.raises(ImagesynthError, match="larger than the sample"):
        evaluate_samples(ds_x, "digits", "kid", extractor=ext, kid_subset_size=100)


def test_grayscale_vs_rgb_is_an_error_or_a_recorded_conversion(tiny_extractor):
    ext = load_domain_extractor(tiny_extractor)
    rgb = torch.rand(20, 3, 16, 16) * 2 - 1
    with pytest.raises(DataError, match=r"RGB .* grayscale|convert_channels"):
        evaluate_samples(rgb, "digits", "fid", extractor=ext)
    r = evaluate_samples(rgb, "digits", "fid", extractor=ext, convert_channels=True)
    assert r["scores"][0]["protocol"]["channel_conversion"].startswith("rgb->gray")


def test_mixed_sizes_are_refused():
    ims = [Image.new("L", (16, 16)), Image.new("L", (16, 16)), Image.new("L", (8, 8))]
    with pytest.raises(DataError, match=r"mixes image sizes.*image 2 is 8x8"):
        from_pils(ims)


def test_corrupt_or_missing_extractor_weights_name_file_and_sha(tiny_extractor, tmp_path):
    import shutil

    bad = tmp_path / "ext"
    shutil.copytree(tiny_extractor, bad)
    weights = bad / "model.safetensors"
    expected = load_domain_extractor(tiny_extractor).sha256
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=rf"model\.safetensors.*expected {expected}"):
        load_domain_extractor(bad)
    weights.unlink()
    with pytest.raises(ModelFileError, match=rf"missing \(expected sha256 {expected}"):
        load_domain_extractor(bad)


def test_extractor_records_held_out_accuracy(tiny_extractor):
    import json

    info = json.loads((tiny_extractor / "imagesynth.json").read_text())
    assert (
        info["family"] == "extractor" and 0.2 < info["metrics"]["test_accuracy"] <= 1
    )  # 1 epoch; chance is 0.1
    ext = load_domain_extractor(tiny_extractor)
    assert 100_000 <= sum(p.numel() for p in ext.net.parameters()) <= 300_000


def test_training_evaluator_contract(tiny_extractor, tmp_path):
    from imagesynth.metrics.training import TrainingEvaluator, plot_metrics

    ev = TrainingEvaluator("digits", 16, "fid,kid,acc", n=40, extractor=f"domain:{tiny_extractor}")
    gen = torch.Generator().manual_seed(0)

    def sample_fn(n):
        return torch.rand(n, 1, 16, 16, generator=gen) * 2 - 1, torch.arange(n) % 10

    rows = []
    for step in (10, 20):
        values = ev(sample_fn, step)
        assert {"fid", "fid_floor", "kid", "acc", "acc_floor"} <= set(values)
        rows.append(ev.row(step, values))
    assert rows[0]["protocol"]["fid"] == rows[1]["protocol"]["fid"]
    assert ev.is_better({"fid": 1.0}, {"fid": 2.0}) and not ev.is_better({"fid": 3.0}, {"fid": 2.0})
    assert plot_metrics(rows, tmp_path / "plots" / "metrics.png").is_file()
    with pytest.raises(ImagesynthError, match="best metric"):
        TrainingEvaluator("digits", 16, "fid", n=40, extractor="random", best_metric="is")


def test_random_extractor_is_fixed():
    a, b = random_extractor(), random_extractor()
    assert a.sha256 == b.sha256
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    np.testing.assert_array_equal(a.extract(x)[0], b.extract(x)[0])


def test_protocol_id_ignores_sample_identity_only():
    s1 = make_score("fid", 1.0, {"n_samples": 10, "source": "a"})
    s2 = make_score("fid", 2.0, {"n_samples": 10, "source": "b"})
    s3 = make_score("fid", 2.0, {"n_samples": 11, "source": "b"})
    assert s1["protocol"]["protocol_id"] == s2["protocol"]["protocol_id"]
    assert s1["protocol"]["protocol_id"] != s3["protocol"]["protocol_id"]


def test_importing_metrics_does_not_import_torch():
    code = "import imagesynth, imagesynth.metrics, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
