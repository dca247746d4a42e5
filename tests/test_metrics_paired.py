"""Paired metrics: SSIM / PSNR parity with scikit-image, MS-SSIM, LPIPS and Inception loading."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from imagesynth.data.skimage_sets import sample_image
from imagesynth.errors import ImagesynthError, ModelFileError
from imagesynth.metrics.paired import ms_ssim, ms_ssim_scales, psnr, ssim


def _pair(name, sigma=20.0, size=96):
    a = np.asarray(sample_image(name).resize((size, size)))
    rng = np.random.default_rng(0)
    b = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)
    t = lambda v: torch.from_numpy(v.copy()).permute(2, 0, 1)[None].double()  # noqa: E731
    return a, b, t(a), t(b)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_ssim_psnr_match_scikit_image(name):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b, ta, tb = _pair(name)
    ref = structural_similarity(
        a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    assert ssim(ta, tb).item() == pytest.approx(ref, abs=1e-9)
    assert psnr(ta, tb).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))


def test_ms_ssim_properties():
    _, _, ta, tb = _pair("astronaut", size=176)
    assert ms_ssim_scales(176, 176) == 5 and ms_ssim_scales(16, 16) == 1
    assert ms_ssim(ta, ta).item() == pytest.approx(1.0)
    _, _, _, tb2 = _pair("astronaut", sigma=60, size=176)
    assert 0 < ms_ssim(ta, tb2).item() < ms_ssim(ta, tb).item() < 1
    small = ta[..., :16, :16]
    assert ms_ssim(small, tb[..., :16, :16]).item() == pytest.approx(
        ssim(small, tb[..., :16, :16]).item()
    )
    assert psnr(ta, ta).item() == 100.0
    with pytest.raises(ImagesynthError, match="at least 11x11"):
        ssim(ta[..., :8, :8], tb[..., :8, :8])
    with pytest.raises(ImagesynthError, match="equal shapes"):
        ssim(ta, tb[..., :50])


def _torchvision_like(net):
    from imagesynth.metrics.lpips import NETS

    torch.manual_seed(0)
    state = {}
    for spec in NETS[net][0]:
        if spec[1] == "conv":
            i, _, cin, cout, k = spec[:5]
            state[f"features.{i}.weight"] = (
                torch.randn(cout, cin, k, k) * (2 / (cin * k * k)) ** 0.5
            )
            state[f"features.{i}.bias"] = torch.zeros(cout)
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored, as in torchvision files
    lins = {f"lin{j}.model.1.weight": torch.rand(1, c, 1, 1) for j, c in enumerate(NETS[net][2])}
    return state, lins


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_loads_standard_layouts_both_formats(net, tmp_path):
    from imagesynth.metrics.lpips import load_lpips

    state, lins = _torchvision_like(net)
    torch.save(state, tmp_path / "backbone.pth")
    save_file(lins, str(tmp_path / "lin.safetensors"))
    model, shas = load_lpips(tmp_path / "backbone.pth", tmp_path / "lin.safetensors", net)
    assert len(shas["backbone_sha256"]) == 64
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    with torch.no_grad():
        d_xy, d_yx, d_xx = model(x, y), model(y, x), model(x, x)
    assert torch.allclose(d_xy, d_yx) and d_xx.abs().max() < 1e-6 and (d_xy > 0).all()
    # the same distance computed by hand from the raw tensors (first layer only vs full)
    with pytest.raises(ModelFileError, match=r"does not exist .*expected sha256"):
        load_lpips(tmp_path / "nope.pth", tmp_path / "lin.safetensors", net)
    bad = dict(lins)
    bad.pop("lin0.model.1.weight")
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelFileError, match=r"lin0\.model\.1\.weight is missing"):
        load_lpips(tmp_path / "backbone.pth", tmp_path / "bad.safetensors", net)


def test_fid_inception_loads_pytorch_fid_layout_pth_and_safetensors(tmp_path):
    from imagesynth.metrics.inception import FIDInceptionV3, load_fid_inception

    torch.manual_seed(0)
    net = FIDInceptionV3()
    state = net.state_dict()
    assert state["fc.weight"].shape == (1008, 2048)
    assert (
        "Mixed_7c.branch3x3dbl_3b.conv.weight" in state
        and "Mixed_6e.branch7x7dbl_5.bn.running_var" in state
    )
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k) > 23_000_000
    torch.save(state, tmp_path / "pt_inception.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "inc.safetensors"))
    x = torch.rand(1, 3, 75, 75) * 2 - 1
    with torch.no_grad():
        ref_f, ref_l = net.eval().forward_both(x)
    for f in ("pt_inception.pth", "inc.safetensors"):
        loaded, sha = load_fid_inception(tmp_path / f)
        with torch.no_grad():
            feats, logits = loaded.forward_both(x)
        assert feats.shape == (1, 2048) and logits.shape == (1, 1008) and len(sha) == 64
        assert torch.equal(feats, ref_f) and torch.equal(logits, ref_l)
    with pytest.raises(ModelFileError, match=r"does not exist.*expected sha256 6726825d0af5"):
        load_fid_inception(tmp_path / "missing.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match=r"broken\.safetensors"):
        load_fid_inception(tmp_path / "broken.safetensors")
    with pytest.raises(ModelFileError, match="expected deadbeef"):
        load_fid_inception(tmp_path / "inc.safetensors", expected_sha256="deadbeef")
