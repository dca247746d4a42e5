"""Restoration (deblur / denoise): classical baselines, the bundled restorer, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imagesynth.classical import deconv
from imagesynth.cli.main import app
from imagesynth.models.superres import RestorerOptions, degrade, gaussian_blur

runner = CliRunner()


def _held_out_crop(side: int = 96) -> np.ndarray:
    """A crop of chelsea (never trained on) as float (H, W, 3) in [0, 1]."""
    from imagesynth.data.skimage_sets import sample_image

    arr = np.asarray(sample_image("chelsea"), dtype=np.float64) / 255
    return arr[60 : 60 + side, 110 : 110 + side]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = gaussian_blur(t, sigma)[0].permute(1, 2, 0).double().numpy()
    return np.round(np.clip(out, 0, 1) * 255) / 255


def _psnr(a: np.ndarray, b: np.ndarray, trim: int = 8) -> float:
    d = (a - b)[trim:-trim, trim:-trim]
    return float(10 * np.log10(1 / (d**2).mean()))


def test_richardson_lucy_matches_scikit_image():
    from skimage.restoration import richardson_lucy

    rng = np.random.default_rng(0)
    img = rng.random((40, 48, 3))
    psf = deconv.gaussian_psf(1.5)
    ours = deconv.richardson_lucy_path(img, psf, [3, 12], pad=False)
    for n in (3, 12):
        ref = np.stack([richardson_lucy(img[..., c], psf, num_iter=n) for c in range(3)], -1)
        np.testing.assert_allclose(ours[n], np.clip(ref, 0, 1), atol=1e-6)
    assert not np.allclose(ours[3], ours[12])


def test_classical_baselines_improve_a_blurred_photo():
    sharp = _held_out_crop()
    blurred = _blur(sharp, 1.5)
    psf = deconv.gaussian_psf(1.5)
    base = _psnr(blurred, sharp)
    assert _psnr(deconv.richardson_lucy(blurred, psf, 20), sharp) > base + 0.5
    assert _psnr(deconv.wiener(blurred, psf, 0.01), sharp) > base + 0.5
    noisy = np.clip(sharp + np.random.default_rng(0).normal(0, 0.08, sharp.shape), 0, 1)
    assert _psnr(deconv.denoise_tv(noisy, 0.1), sharp) > _psnr(noisy, sharp) + 2


def test_deblur_degradation_is_the_stated_blur_plus_noise():
    x = torch.rand(3, 3, 24, 24) * 2 - 1
    opts = RestorerOptions(blur_sigma=(1.2, 1.2), noise_prob=0.0).validate()
    out = degrade(x, opts, torch.Generator().manual_seed(0))
    assert torch.allclose(out, gaussian_blur(x, 1.2).clamp(-1, 1), atol=1e-6)
    noisy = RestorerOptions(blur_sigma=(1.2, 1.2), noise_prob=1.0, noise_sigma=(0.05, 0.05))
    res = degrade(x, noisy.validate(), torch.Generator().manual_seed(0)) - out
    # noise std 0.05 on [0, 1] is 0.1 on [-1, 1] (a little is clipped away)
    assert 0.08 < float(res.std()) < 0.11


def test_bundled_restorer_deblurs_a_held_out_photo():
    from imagesynth import load
    from imagesynth.bundled import bundled_model_path

    pipe = load(bundled_model_path("restorer-deblur"))
    assert pipe.task == "deblur" and pipe.scale == 1
    sharp = _held_out_crop()
    scores = {}
    for sigma in (1.0, 2.0):
        blurred = _blur(sharp, sigma)
        out = np.asarray(pipe(Image.fromarray(np.uint8(np.round(blurred * 255)))).images[0]) / 255
        scores[sigma] = (_psnr(blurred, sharp), _psnr(out, sharp))
    for sigma, (before, after) in scores.items():
        assert after > before + 1.0, (sigma, before, after)


def test_restore_cli_default_model_and_classical(tmp_path):
    sharp = _held_out_crop(64)
    blurred = Image.fromarray(np.uint8(np.round(_blur(sharp, 1.5) * 255)))
    src = tmp_path / "blurred.png"
    blurred.save(src)
    for method in ("model", "richardson-lucy", "wiener"):
        out = tmp_path / f"{method}.png"
        r = runner.invoke(
            app, ["restore", str(src), "--method", method, "--sigma", "1.5", "--out", str(out)]
        )
        assert r.exit_code == 0, r.output
        res = np.asarray(Image.open(out), dtype=np.float64) / 255
        assert res.shape == sharp.shape
        assert _psnr(res, sharp) > _psnr(np.asarray(blurred) / 255, sharp), method


def test_train_restorer_denoise_tiny_and_restore(tmp_path):
    r = runner.invoke(
        app,
        [
            "train",
            "restorer",
            "--task",
            "denoise",
            "--data",
            "textures",
            "--opt",
            "length=32",
            "--size",
            "16",
            "--steps",
            "2",
            "--batch",
            "4",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    model = next(tmp_path.glob("*/model"))
    img = tmp_path / "in.png"
    Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(img)
    out = tmp_path / "o.png"
    r = runner.invoke(
        app, ["restore", str(img), "--task", "denoise", "--model", str(model), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (24, 20)
    # a denoise model is not a deblur model, and not an upscaler
    r = runner.invoke(app, ["restore", str(img), "--task", "deblur", "--model", str(model)])
    assert r.exit_code != 0 and "is a denoise model, not a deblur model" in str(r.exception)
    r = runner.invoke(app, ["upscale", str(img), "--model", str(model)])
    assert "is a denoise model, not an upscaler" in str(r.exception)


def _run_error(args: list[str]) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    return str(r.exception)


def test_restore_bad_inputs(tmp_path):
    from imagesynth.bundled import bundled_model_path
    from imagesynth.io.model_dir import Component, save_model

    img = tmp_path / "in.png"
    Image.new("RGB", (20, 20)).save(img)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (5, 30)).save(tiny)
    assert "is 5x30 px; need at least 8x8 px" in _run_error(["restore", str(tiny)])
    err = _run_error(["restore", str(img), "--task", "sharpen"])
    assert "unknown restore task (--task) 'sharpen'; expected one of: deblur, denoise" in err
    err = _run_error(["restore", str(img), "--task", "denoise", "--method", "wiener"])
    assert "unknown --method for --task denoise 'wiener'" in err
    err = _run_error(["restore", str(img), "--method", "richardson-lucy", "--iterations", "0"])
    assert "--iterations must be >= 1" in err
    # an upscaler is no restorer
    x2 = bundled_model_path("upscaler-x2")
    assert "is a x2 upscaler, not a deblur model" in _run_error(
        ["restore", str(img), "--model", str(x2)]
    )
    # a model directory of another family
    other = tmp_path / "vae"
    save_model(other, Component({"x": 1}, {"w": torch.zeros(2)}), family="vae")
    assert "holds a 'vae' model, not an upscaler or restorer" in _run_error(
        ["restore", str(img), "--model", str(other)]
    )
    assert "imagesynth.json" in _run_error(["restore", str(img), "--model", str(tmp_path)])


@pytest.mark.parametrize(("model", "scale"), [("upscaler-x2", 4), ("upscaler-x4", 2)])
def test_upscale_scale_must_match_model(tmp_path, model, scale):
    from imagesynth.bundled import bundled_model_path

    img = tmp_path / "in.png"
    Image.new("RGB", (20, 20)).save(img)
    path = bundled_model_path(model)
    err = _run_error(["upscale", str(img), "--model", str(path), "--scale", str(scale)])
    assert f"upscales x{6 - scale}, got --scale {scale}" in err


def test_init_from_must_match_the_network(tmp_path):
    import imagesynth
    from imagesynth.bundled import bundled_model_path
    from imagesynth.errors import ImagesynthError

    with pytest.raises(ImagesynthError, match=r"init_from .* does not match this run's"):
        imagesynth.train(
            family="restorer",
            data="textures",
            size=16,
            steps=1,
            batch=2,
            runs_dir=str(tmp_path),
            data_options={"length": 8},
            family_options={"init_from": str(bundled_model_path("upscaler-x2"))},
        )
