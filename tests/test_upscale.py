import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from imagesynth.classical import deconv
from imagesynth.cli.main import app
from imagesynth.models.superres import ResidualSR, SuperResOptions, degrade, psnr
from imagesynth.pipelines.upscale import run_tiled

runner = CliRunner()


def test_untrained_net_is_bicubic_and_tiling_matches():
    torch.manual_seed(0)
    net = ResidualSR(width=8, blocks=1, scale=2)
    x = torch.rand(1, 3, 40, 52) * 2 - 1
    base = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic")
    assert torch.allclose(net(x), base)
    torch.nn.init.normal_(net.tail.weight, std=0.1)
    whole = net(x)
    tiled = run_tiled(net, x, 2, tile=24, overlap=8)
    assert tiled.shape == whole.shape
    assert float(psnr(tiled, whole.detach())) > 40


def test_degrade_is_seeded_and_downscales():
    opts = SuperResOptions(noise_prob=1.0, blur_prob=1.0, jpeg_prob=1.0).validate()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a = degrade(x, opts, torch.Generator().manual_seed(1))
    b = degrade(x, opts, torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)


def test_bundled_upscaler_beats_bicubic(tmp_path):
    from imagesynth import load
    from imagesynth.cli.image_tools import _bundled_upscaler
    from imagesynth.data.skimage_sets import sample_image

    pipe = load(_bundled_upscaler())
    hr = np.asarray(sample_image("coffee").crop((200, 100, 328, 228)), dtype=np.float32)
    x = torch.from_numpy(hr / 127.5 - 1).permute(2, 0, 1)[None]
    lr = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bicubic", antialias=True)
    with torch.no_grad():
        sr = pipe.net(lr).clamp(-1, 1)
    bic = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bicubic").clamp(-1, 1)
    assert float(psnr(sr, x) - psnr(bic, x)) > 0.5


def test_bundled_x4_beats_bicubic_and_is_the_scale4_default(tmp_path):
    from imagesynth import load
    from imagesynth.cli.image_tools import _bundled_upscaler
    from imagesynth.data.skimage_sets import sample_image
    from imagesynth.io.pngmeta import read_png_metadata

    pipe = load(_bundled_upscaler(4))
    assert pipe.task == "upscale" and pipe.scale == 4
    gains = []
    for name, box in (("coffee", (200, 100, 328, 228)), ("chelsea", (100, 60, 228, 188))):
        hr = np.asarray(sample_image(name).crop(box), dtype=np.float32)
        x = torch.from_numpy(hr / 127.5 - 1).permute(2, 0, 1)[None]
        lr = torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True)
        with torch.no_grad():
            sr = pipe.net(lr).clamp(-1, 1)
        bic = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic").clamp(-1, 1)
        gains.append(float(psnr(sr, x) - psnr(bic, x)))
    assert min(gains) > 0.3, gains
    img = tmp_path / "in.png"
    Image.fromarray(np.asarray(sample_image("chelsea").crop((100, 60, 132, 84)))).save(img)
    out = tmp_path / "o.png"
    r = runner.invoke(app, ["upscale", str(img), "--scale", "4", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (128, 96)
    assert read_png_metadata(out).params["model"] == "upscaler-x4"


def test_train_upscaler_tiny(tmp_path):
    r = runner.invoke(
        app,
        [
            "train",
            "upscaler",
            "--data",
            "textures",
            "--opt",
            "length=64",
            "--size",
            "16",
            "--steps",
            "3",
            "--batch",
            "4",
            "--runs-dir",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    model = next(tmp_path.glob("*/model"))
    img = tmp_path / "in.png"
    Image.fromarray(np.full((20, 20, 3), 100, np.uint8)).save(img)
    out = tmp_path / "o.png"
    r = runner.invoke(app, ["upscale", str(img), "--model", str(model), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (40, 40)
    r = runner.invoke(app, ["upscale", str(img), "--model", str(model), "--scale", "4"])
    assert r.exit_code != 0 and "upscales x2, got --scale 4" in str(r.exception)


def test_upscale_bad_inputs(tmp_path):
    r = runner.invoke(app, ["upscale", str(tmp_path / "nope.png")])
    assert "does not exist" in str(r.exception)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = runner.invoke(app, ["upscale", str(bad)])
    assert "not a readable image" in str(r.exception)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    r = runner.invoke(app, ["upscale", str(tiny)])
    assert "need at least 8x8" in str(r.exception)


def test_richardson_lucy_sharpens():
    from imagesynth.models.superres import gaussian_blur

    rng = np.random.default_rng(0)
    img = np.kron(rng.random((8, 8)), np.ones((8, 8)))[..., None].repeat(3, -1)
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    blurred = gaussian_blur(t, 1.5)[0].permute(1, 2, 0).numpy().astype(np.float64)
    psf = deconv.gaussian_psf(1.5)
    rl = deconv.richardson_lucy(blurred, psf, 30)
    err = lambda a: float(((a - img)[8:-8, 8:-8] ** 2).mean())  # noqa: E731
    assert err(rl) < err(blurred)


def test_restore_without_a_bundled_model_needs_model(tmp_path, monkeypatch):
    from imagesynth import bundled

    monkeypatch.setattr(
        bundled, "BUNDLED", {k: v for k, v in bundled.BUNDLED.items() if k != "restorer-denoise"}
    )
    img = tmp_path / "in.png"
    Image.new("RGB", (20, 20)).save(img)
    r = runner.invoke(app, ["restore", str(img), "--task", "denoise"])
    assert r.exit_code != 0
    assert "no bundled denoise model: pass --model DIR" in str(r.exception)


def test_perceptual_adversarial_fine_tune_runs_and_starts_from_init(tmp_path):
    import imagesynth
    from imagesynth.cli.image_tools import _bundled_upscaler
    from imagesynth.io.model_dir import load_model

    res = imagesynth.train(
        family="upscaler",
        data="textures",
        size=16,
        steps=2,
        batch=2,
        lr=1e-6,
        runs_dir=str(tmp_path),
        data_options={"length": 8},
        family_options={
            "perceptual_weight": 0.1,
            "adv_weight": 0.01,
            "init_from": str(_bundled_upscaler(2)),
        },
    )
    stats = [s for s in res.stats if "sr/perceptual" in s]
    assert stats and stats[-1]["sr/perceptual"] > 0 and "sr/g_adv" in stats[-1]
    start = load_model(_bundled_upscaler(2)).state_dict()["tail.weight"].float()
    tuned = load_model(res.model_dir).state_dict()["tail.weight"].float()
    assert torch.allclose(start, tuned, atol=1e-3)  # lr 1e-6: still the bundled weights
