import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from imagesynth.classical.features import (
    VGG19_CFG,
    RandomFeatures,
    RandomVGG,
    VGG19Features,
    get_feature_net,
    load_vgg19,
    vgg_layer_names,
)
from imagesynth.classical.style import (
    GatysLoss,
    StyleOptions,
    match_color,
    optimize_image,
    style_transfer,
    to_tensor,
)
from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError

runner = CliRunner()


def _vgg_state():
    net = VGG19Features()
    state = {}
    for i, (_, idx) in enumerate(vgg_layer_names(VGG19_CFG)):
        state[f"features.{idx}.weight"] = torch.randn_like(net.convs[i].weight) * 0.05
        state[f"features.{idx}.bias"] = torch.zeros_like(net.convs[i].bias)
    return state


def test_vgg19_loader_safetensors_and_pth(tmp_path):
    state = _vgg_state()
    save_file(state, tmp_path / "vgg.safetensors")
    net = load_vgg19(tmp_path / "vgg.safetensors")
    assert torch.equal(net.convs[3].weight, state["features.7.weight"])
    torch.save(state, tmp_path / "vgg.pth")
    net2 = load_vgg19(tmp_path / "vgg.pth")
    feats = net2(torch.zeros(1, 3, 32, 32), ["conv4_2", "conv1_1"])
    assert feats["conv1_1"].shape == (1, 64, 32, 32)
    del state["features.21.weight"]
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(ImagesynthError, match=r"missing features\.21\.weight"):
        load_vgg19(tmp_path / "bad.safetensors")


def _disk_and_stripes():
    """Content: a light disk on grey. Style: red / blue vertical stripes, 4 px each."""
    from PIL import ImageDraw

    content = Image.new("RGB", (48, 48), (128, 128, 128))
    ImageDraw.Draw(content).ellipse((12, 12, 36, 36), fill=(240, 240, 240))
    style = Image.new("RGB", (48, 48))
    d = ImageDraw.Draw(style)
    for x in range(0, 48, 8):
        d.rectangle((x, 0, x + 3, 47), fill=(220, 30, 30))
        d.rectangle((x + 4, 0, x + 7, 47), fill=(30, 30, 220))
    return content, style


def test_default_features_stylise_and_keep_content():
    """The offline default (random VGG): the grey content takes the style's red / blue
    colours, and the disk stays brighter than its surround."""
    content, style = _disk_and_stripes()
    net = get_feature_net(None)
    assert isinstance(net, RandomVGG) and net.content_layer == "conv4_1"
    opts = StyleOptions(size=48, steps=40, scales=1)
    out, rec = style_transfer(content, [style, style], net, opts)
    assert out.size == (48, 48) and rec["style_image_weights"] == [0.5, 0.5]
    assert rec["features"] == "random"  # what --features takes to rebuild it
    o = np.asarray(out, dtype=np.float32) / 255
    assert np.abs(o[..., 0] - o[..., 2]).mean() > 0.1  # content: 0 (grey); style: 0.75
    yy, xx = np.mgrid[:48, :48]
    r2 = (yy - 24) ** 2 + (xx - 24) ** 2
    assert o[r2 < 100].mean() - o[r2 > 200].mean() > 0.2  # the disk is still there


def test_lbfgs_lowers_the_loss():
    """L-BFGS used to stop at once (per-pixel gradients under its tolerance) or stall for
    good after a failed line search: it must lower the loss about as far as Adam does."""
    content, style = _disk_and_stripes()
    net = get_feature_net(None)
    c, s = to_tensor(content.resize((32, 32))), to_tensor(style.resize((32, 32)))
    final = {}
    for name in ("lbfgs", "adam"):
        opts = StyleOptions(size=32, steps=15, optimizer=name, lr=0.05)
        loss_fn = GatysLoss(net, c, [s], [1.0], opts)
        start = float(loss_fn(c)[0])
        x = optimize_image(c, loss_fn, opts, opts.steps)
        assert x.abs().max() <= 1
        final[name] = float(loss_fn(x)[0]) / start
    assert final["lbfgs"] < 0.9, final
    assert final["lbfgs"] < 1.25 * final["adam"], final


def test_feature_net_names():
    assert isinstance(get_feature_net("random-multiscale"), RandomFeatures)
    a, b = get_feature_net("random:1"), get_feature_net("random")
    assert not torch.equal(a.convs[0].weight, b.convs[0].weight)
    assert torch.equal(get_feature_net(None).convs[2].weight, b.convs[2].weight)  # seeded
    with pytest.raises(ImagesynthError, match="random:SEED needs an integer"):
        get_feature_net("random:x")


def test_match_color_moves_statistics():
    a = torch.rand(1, 3, 16, 16) * 2 - 1
    b = torch.rand(1, 3, 16, 16) * 0.2
    m = match_color(a, b)
    assert torch.allclose(m.mean((2, 3)), b.mean((2, 3)), atol=0.02)


def test_style_cli_bad_inputs(tmp_path):
    c = tmp_path / "c.png"
    Image.new("RGB", (32, 32)).save(c)
    r = runner.invoke(app, ["style", str(c), str(tmp_path / "missing.png")])
    assert "does not exist" in str(r.exception)
    tiny = tmp_path / "t.png"
    Image.new("RGB", (8, 8)).save(tiny)
    r = runner.invoke(app, ["style", str(c), str(tiny)])
    assert "at least 16x16" in str(r.exception)
    bad = tmp_path / "w.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    r = runner.invoke(app, ["style", str(c), str(c), "--features", str(bad), "--size", "32"])
    assert "missing features.0.bias" in str(r.exception)
