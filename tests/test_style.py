import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from imagesynth.classical.features import VGG19_CFG, VGG19Features, load_vgg19, vgg_layer_names
from imagesynth.classical.style import StyleOptions, match_color, style_transfer, to_tensor
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


def test_style_transfer_moves_toward_style_and_multi_style():
    torch.manual_seed(0)
    from imagesynth.classical.features import RandomFeatures

    content = Image.new("RGB", (32, 32), (200, 30, 30))
    style = Image.effect_noise((32, 32), 80).convert("RGB")
    net = RandomFeatures(filters=16, levels=3)
    opts = StyleOptions(size=32, steps=20, optimizer="adam", lr=0.05, style_weight=10)
    out, rec = style_transfer(content, [style, style], net, opts)
    assert out.size == (32, 32) and rec["style_image_weights"] == [0.5, 0.5]
    c = to_tensor(content)
    assert (to_tensor(out) - c).abs().mean() > 0.01


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
