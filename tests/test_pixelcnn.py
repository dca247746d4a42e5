import math

import pytest
import torch
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError
from imagesynth.io.pngmeta import read_png_metadata
from imagesynth.io.rundir import latest_checkpoint
from imagesynth.models.pixelcnn import (
    PixelCNN,
    PixelCNNConfig,
    check_levels,
    dequantize,
    indices_to_images,
    palette_index,
    palette_levels,
    quantize,
    sample_logits,
    sample_pixelcnn,
    uniforms,
)
from imagesynth.training.config import TrainConfig
from imagesynth.training.state import load_tensors
from imagesynth.training.trainer import Trainer

runner = CliRunner()


def _net(channels=1, levels=16, size=8, classes=3, layers=5, seed=0):
    torch.manual_seed(seed)
    cfg = PixelCNNConfig(
        channels=channels, levels=levels, size=size, num_classes=classes, width=8,
        layers=layers, head=8,
    )  # fmt: skip
    return PixelCNN(cfg)


@pytest.mark.parametrize("channels,levels", [(1, 16), (3, 4)])
def test_causal_and_no_blind_spot(channels, levels):
    """Output at pixel p depends on every earlier pixel (all channels) and on nothing later."""
    net = _net(channels, levels)  # 5 layers, first 7x7: the receptive field covers 8x8
    x = torch.randn(1, channels, 8, 8, requires_grad=True)
    order = torch.arange(64).view(8, 8)
    for i, j in [(0, 0), (0, 5), (3, 4), (4, 7), (7, 0), (7, 7)]:
        out = net(x, torch.tensor([1]))[0, :, i, j].sum()
        (g,) = torch.autograd.grad(out, x)
        touched = g[0].abs().sum(0) > 0  # (8, 8), any channel
        p = i * 8 + j
        assert not touched[order >= p].any(), f"pixel {(i, j)} sees the future"
        assert touched[order < p].all(), f"pixel {(i, j)} has a blind spot"


def test_original_blind_spot_would_be_caught():
    """Sanity of the test itself: cutting the vertical stack's link leaves pixels unseen."""
    net = _net()
    for layer in net.layers:
        torch.nn.init.zeros_(layer.v_to_h.weight)
        torch.nn.init.zeros_(layer.v_to_h.bias)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(net(x)[0, :, 4, 4].sum(), x)
    assert (g[0, 0, :4].abs() == 0).all()  # rows above are no longer seen


@pytest.mark.parametrize("channels,levels,classes", [(1, 16, 3), (3, 4, 0)])
def test_row_cached_sampling_equals_full_forward(channels, levels, classes):
    net = _net(channels, levels, classes=classes, layers=3)  # reach 5 < 8 rows: crops too
    labels = torch.tensor([0, 2]) if classes else None
    idx, kept = sample_pixelcnn(net, labels, uniforms([5, 6], 64), keep_logits=True)
    with torch.no_grad():
        full = net(indices_to_images(idx, levels, channels), labels)
    torch.testing.assert_close(kept, full, atol=1e-5, rtol=1e-5)
    assert idx.max() < levels**channels


def test_quantization_and_palette_round_trip():
    v = torch.arange(256)
    q = quantize(v, 16)
    assert q.min() == 0 and q.max() == 15 and q[17] == 1 and q[8] == 0 and q[9] == 1
    on_grid = ((dequantize(q, 16) + 1) * 127.5).round()
    assert torch.equal(quantize(on_grid, 16), q)
    levels = torch.randint(0, 6, (2, 3, 4, 4))
    assert torch.equal(palette_levels(palette_index(levels, 6), 6, 3).permute(0, 3, 1, 2), levels)


def test_more_levels_than_built_for_is_refused():
    grid16 = ((dequantize(torch.randint(0, 16, (4, 1, 8, 8)), 16) + 1) * 127.5).round()
    check_levels(grid16.to(torch.uint8), 16)  # on the grid: fine
    full = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8)
    with pytest.raises(ImagesynthError, match=r"up to 256 levels per channel.*built for 16"):
        check_levels(full, 16)


def test_temperature_and_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(4000, 4)
    u = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(sample_logits(logits, u), minlength=4).float() / 4000
    torch.testing.assert_close(freq, torch.softmax(logits[0], 0), atol=0.03, rtol=0)
    top1 = sample_logits(logits, u, top_k=1)
    assert (top1 == 0).all()
    top2 = sample_logits(logits, u, top_k=2)
    assert set(top2.tolist()) == {0, 1}
    cold = torch.bincount(sample_logits(logits, u, temperature=0.1), minlength=4)
    hot = torch.bincount(sample_logits(logits, u, temperature=10.0), minlength=4).float()
    assert cold[0] > 3990
    assert hot.min() > 700  # close to uniform (1000 each)


def _cfg(tmp_path, **kw):
    base = dict(
        family="pixelcnn", data="digits", size=8, cond="class", steps=4, batch=8, log_every=1,
        sample_every=1000, sample_n=4, ckpt_every=1000, runs_dir=str(tmp_path),
        warmup_steps=2, progress=False, family_options={"width": 8, "layers": 2, "head": 8},
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_exact_and_model_round_trips(tmp_path):
    import imagesynth

    straight = Trainer(_cfg(tmp_path / "a")).train()
    first = Trainer(_cfg(tmp_path / "b", steps=2)).train()
    resumed = Trainer(_cfg(tmp_path / "b", steps=4), resume="latest").train()
    assert first.step == 2 and resumed.step == 4
    a = load_tensors(latest_checkpoint(straight.run_dir) / "net-pixelcnn.safetensors")
    b = load_tensors(latest_checkpoint(resumed.run_dir) / "net-pixelcnn.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    stats = straight.stats[-1]
    assert math.isclose(stats["nll/bits_per_dim"], stats["loss"] / math.log(2), rel_tol=1e-5)
    assert straight.stats[0]["nll/bits_per_dim"] < 4.5  # near log2(16) = 4 at the start

    pipe = imagesynth.load(straight.model_dir, device="cpu")
    assert pipe.num_classes == 10 and pipe.levels == 16
    out = pipe(n=3, seed=7, class_labels=[1, 2, 3], sampler="ddim", steps=5)
    single = pipe(n=1, seed=8, class_labels=[2])
    assert out.images[1].tobytes() == single.images[0].tobytes()  # per-image seed
    assert out.params[1]["seed"] == 8 and out.params[1]["class_label"] == 2
    values = set(out.images[0].tobytes())
    assert values <= {round(q * 255 / 15) for q in range(16)}  # on the 16-level grid
    bpd = pipe.bits_per_dim(out.images, class_labels=[1, 2, 3])
    assert bpd.shape == (3,) and (bpd > 0).all()
    with pytest.raises(ImagesynthError, match="class index 10 out of range"):
        pipe(n=1, class_labels=[10])
    with pytest.raises(ImagesynthError, match="temperature"):
        pipe(n=1, temperature=0)
    with pytest.raises(ImagesynthError, match="top_k"):
        pipe(n=1, top_k=17)
    with pytest.raises(ImagesynthError, match="truncation applies to GANs"):
        pipe(n=1, truncation=0.7)
    with pytest.raises(ImagesynthError, match="guidance"):
        pipe(n=1, guidance_scale=3.0)


def test_cli_train_sample_and_bad_input(tmp_path):
    runs = str(tmp_path / "runs")
    common = ["--data", "digits", "--size", "8", "--steps", "2", "--batch", "8"]
    small = ["--width", "8", "--layers", "2", "--fopt", "head=8", "--runs-dir", runs]
    res = runner.invoke(app, ["train", "pixelcnn", *common, "--cond", "class", *small])
    assert res.exit_code == 0, res.output
    model = next((tmp_path / "runs").glob("*-digits-pixelcnn-*")) / "model"
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["sample", str(model), "--n", "4", "--class", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = read_png_metadata(out)
    assert "pixelcnn" in str(meta.parameters)
    opts = ["--n", "2", "--temperature", "0.5", "--top-k", "3", "--out", str(out)]
    res = runner.invoke(app, ["sample", str(model), *opts])
    assert res.exit_code == 0, res.output
    assert "0.5" in str(read_png_metadata(out).parameters)
    res = runner.invoke(app, ["sample", str(model), "--truncation", "0.7", "--out", str(out)])
    assert isinstance(res.exception, ImagesynthError)
    assert "truncation applies to GANs" in str(res.exception)
    res = runner.invoke(app, ["sample", str(model), "--n", "2", "--class", "12", "--out", str(out)])
    assert isinstance(res.exception, ImagesynthError)
    assert "class index 12 out of range" in str(res.exception)
    bad = [
        (["--levels", "1"], "levels must be an integer in 2..256"),
        (["--no-quantize"], "levels per channel; this PixelCNN was built for 16"),
        (["--layers", "0"], "layers must be a positive integer"),
    ]
    for extra, message in bad:
        res = runner.invoke(app, ["train", "pixelcnn", *common, *small, *extra])
        assert isinstance(res.exception, ImagesynthError), (extra, res.output)
        assert message in str(res.exception) and "\n" not in str(res.exception)
