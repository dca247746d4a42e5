import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError
from imagesynth.io.pngmeta import read_png_metadata
from imagesynth.io.rundir import latest_checkpoint, read_jsonl
from imagesynth.models.vae import ConvVAE, VaeFamily, VaeOptions, kl_normal, nll
from imagesynth.training.config import TrainConfig
from imagesynth.training.family import DataInfo
from imagesynth.training.state import load_tensors
from imagesynth.training.trainer import Trainer

runner = CliRunner()


def _cfg(tmp_path, **kw):
    base = dict(
        family="vae",
        data="digits",
        size=16,
        cond="class",
        steps=4,
        batch=8,
        warmup_steps=0,
        log_every=1,
        sample_every=1000,
        sample_n=8,
        ckpt_every=1000,
        runs_dir=str(tmp_path),
        family_options={"preset": "tiny"},
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def cvae_model(tmp_path_factory):
    return Trainer(_cfg(tmp_path_factory.mktemp("vae"), steps=3)).train()


def test_elbo_terms_match_direct_formulas():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 6), torch.randn(4, 6)
    var = logvar.exp()
    # KL[N(mu, var) || N(0, 1)] from the Gaussian log densities, by Monte Carlo
    q = torch.distributions.Normal(mu, var.sqrt())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    exact = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(kl_normal(mu, logvar), exact, atol=1e-5)
    x, out = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    sigma = 0.3
    gauss = -torch.distributions.Normal(out, sigma).log_prob(x).flatten(1).sum(1)
    const = 16 * 0.5 * math.log(2 * math.pi * sigma**2)
    assert torch.allclose(nll(out, x, "l2", sigma), gauss - const, atol=1e-3)
    lap = -torch.distributions.Laplace(out, sigma).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(nll(out, x, "l1", sigma), lap - 16 * math.log(2 * sigma), atol=1e-3)
    t = (x + 1) / 2  # continuous Bernoulli-style targets: t log p + (1 - t) log (1 - p)
    prob = torch.sigmoid(out)
    bern = -(t * prob.log() + (1 - t) * (1 - prob).log()).flatten(1).sum(1)
    assert torch.allclose(nll(out, x, "bce", sigma), bern, atol=1e-4)


def test_loss_is_negative_elbo_per_value_and_beta_weights_kl():
    torch.manual_seed(0)
    data = DataInfo("digits", 16, 1, 0)
    batch = {"images": torch.rand(4, 1, 16, 16) * 2 - 1, "labels": None}
    losses = {}
    for beta in (0.0, 1.0, 4.0):
        torch.manual_seed(0)
        fam = VaeFamily(VaeOptions(preset="tiny", beta=beta), data)
        loss, logs = fam.loss(fam.nets, batch, torch.Generator().manual_seed(1))
        losses[beta] = (float(loss.detach()), logs)
    rec, kl = losses[1.0][1]["rec"], losses[1.0][1]["kl"]
    for beta, (loss, logs) in losses.items():
        assert logs["rec"] == pytest.approx(rec) and logs["kl"] == pytest.approx(kl)
        assert loss == pytest.approx((rec + beta * kl) / 256, rel=1e-5)
    assert losses[1.0][1]["neg_elbo"] == pytest.approx(rec + kl)


def test_conditional_vae_uses_the_label():
    torch.manual_seed(0)
    vae = ConvVAE(16, 1, 8, 4, num_classes=10)
    torch.nn.init.normal_(vae.from_z.weight, std=0.5)
    z = torch.randn(2, 4)
    a = vae.decode(z, torch.tensor([1, 1]))
    b = vae.decode(z, torch.tensor([7, 7]))
    assert a.shape == (2, 1, 16, 16) and not torch.allclose(a, b)
    mu_a, _ = vae.encode(a.detach(), torch.tensor([1, 1]))
    mu_b, _ = vae.encode(a.detach(), torch.tensor([7, 7]))
    assert not torch.allclose(mu_a, mu_b)
    with pytest.raises(ImagesynthError, match="class-conditional"):
        vae.decode(z)


def test_film_decoder_starts_as_the_plain_one_and_old_configs_load():
    from imagesynth.models.vae import vae_from_config

    torch.manual_seed(0)
    film = ConvVAE(16, 1, 8, 4, num_classes=10, label_every_block=True)
    plain = ConvVAE(16, 1, 8, 4, num_classes=10)
    missing = plain.load_state_dict(film.state_dict(), strict=False)
    assert plain.film is None and missing.unexpected_keys == ["film.0.weight", "film.1.weight"]
    z, y = torch.randn(3, 4), torch.tensor([0, 4, 9])
    torch.testing.assert_close(film.decode(z, y), plain.decode(z, y))  # zero-initialised FiLM
    torch.nn.init.normal_(film.film[1].weight)
    assert not torch.allclose(film.decode(z, y), plain.decode(z, y))
    old = {"size": 16, "channels": 1, "width": 8, "z_dim": 4, "num_classes": 10}
    assert vae_from_config(old).film is None  # saved before FiLM: the plain decoder
    assert vae_from_config({**old, "label_every_block": True}).film is not None
    assert ConvVAE(16, 1, 8, 4, label_every_block=True).film is None  # unconditional


def _quadrants(k=4, s=8):
    """Class c: quadrant c bright, the rest dark (k <= 4 templates)."""
    t = -torch.ones(k, 1, s, s)
    h = s // 2
    for c in range(k):
        r, q = divmod(c, 2)
        t[c, :, r * h : (r + 1) * h, q * h : (q + 1) * h] = 1.0
    return t


def test_cvae_samples_follow_the_label():
    """Trained on four classes with a within-class style (brightness), samples from the prior
    must show the requested class, not a class drawn from z (chance = 25 %)."""
    from imagesynth.models.vae import to_image

    torch.manual_seed(0)
    fam = VaeFamily(VaeOptions(preset="tiny", latent_dim=4), DataInfo("toy", 8, 1, 4))
    vae = fam.nets["vae"]
    opt = torch.optim.Adam(vae.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(0)
    t = _quadrants()
    for _ in range(100):
        y = torch.randint(0, 4, (32,), generator=gen)
        amp = 0.3 + 0.7 * torch.rand(32, 1, 1, 1, generator=gen)  # the style z should hold
        loss, _ = fam.loss(fam.nets, {"images": t[y] * amp, "labels": y}, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval()
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(64) % 4
    with torch.no_grad():
        out = to_image(vae.decode(z, y), "l2")
        swapped = to_image(vae.decode(z, (y + 1) % 4), "l2")
    pred = (out.flatten(1) @ t.flatten(1).t()).argmax(1)  # nearest template by correlation
    assert float((pred == y).float().mean()) >= 0.6
    assert (out - swapped).abs().mean() > 0.15  # same z, another label: another image


def test_cvae_trains_resumes_and_saves(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a")).train()
    first = Trainer(_cfg(tmp_path / "b"))
    real = first._train_step

    def interrupted(step):
        if step == 2:
            raise KeyboardInterrupt
        return real(step)

    first._train_step = interrupted
    first.train()
    resumed = Trainer(_cfg(tmp_path / "b"), resume="latest").train()
    a = load_tensors(latest_checkpoint(straight.run_dir) / "ema-vae.safetensors")
    b = load_tensors(latest_checkpoint(resumed.run_dir) / "ema-vae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    stats = read_jsonl(straight.run_dir / "stats.jsonl")
    assert {"elbo/rec", "elbo/kl", "elbo/psnr", "elbo/neg_elbo"} <= set(stats[-1])
    info = json.loads((straight.model_dir / "imagesynth.json").read_text())
    assert info["family"] == "vae" and "train_recon_psnr_db" in info["metrics"]
    grid = Image.open(straight.run_dir / "samples" / "step-00000004.png")
    assert read_png_metadata(grid.filename).imagesynth["grid"].startswith("first half: samples")


def test_vae_learns_to_reconstruct(tmp_path):
    """A short unconditional run improves reconstruction PSNR well beyond the start."""
    cfg = _cfg(tmp_path, cond="none", steps=60, batch=32, lr=2e-3, log_every=10)
    res = Trainer(cfg).train()
    stats = read_jsonl(res.run_dir / "stats.jsonl")
    assert stats[-1]["elbo/psnr"] > stats[0]["elbo/psnr"] + 3
    assert stats[-1]["loss"] < stats[0]["loss"]


def test_pipeline_sample_reconstruct_interpolate_traverse(cvae_model):
    import imagesynth

    pipe = imagesynth.load(cvae_model.model_dir, device="cpu")
    assert pipe.family == "vae" and pipe.num_classes == 10
    a, b = pipe(n=3, seed=4), pipe(n=1, seed=6, class_labels=[2])
    assert np.array_equal(np.asarray(a.images[2]), np.asarray(b.images[0]))  # classes i % 10
    assert a.params[1]["class_label"] == 1
    from imagesynth.data import get_dataset

    ds = get_dataset("digits", size=16, split="test")
    items = [ds[i] for i in range(4)]
    rec = pipe.reconstruct([it.image for it in items], [it.label for it in items])
    assert len(rec.images) == 4 and rec.images[0].size == (16, 16)
    with pytest.raises(ImagesynthError, match="give class_labels"):
        pipe.reconstruct([it.image for it in items])
    strip = pipe.interpolate(3, 9, frames=4, class_label=5)
    assert len(strip.images) == 4 and strip.params[0]["class_label"] == 5
    grid = pipe.traverse(seed=0, dims=3, steps=5, class_label=1)
    assert grid.size == (5 * 16 + 6 * 2, 3 * 16 + 4 * 2)
    grid2 = pipe.traverse(dims=[0, 2], steps=4, class_label=1, image=items[0].image)
    assert grid2.size[1] == 2 * 16 + 3 * 2
    with pytest.raises(ImagesynthError, match="latent dimension 99 out of range"):
        pipe.traverse(dims=[99], class_label=1)
    with pytest.raises(ImagesynthError, match="do not take top_k"):
        pipe(n=1, top_k=5)


def test_cli_sample_vae(cvae_model, tmp_path):
    out = tmp_path / "g.png"
    res = runner.invoke(
        app, ["sample", str(cvae_model.model_dir), "--n", "4", "--out", str(out), "--class", "8"]
    )
    assert res.exit_code == 0, res.output
    assert read_png_metadata(out).imagesynth["family"] == "vae"
    res = runner.invoke(app, ["sample", str(cvae_model.model_dir), "--save-steps", "x.png"])
    assert isinstance(res.exception, ImagesynthError)
    assert "--save-steps do not apply" in str(res.exception)


@pytest.mark.parametrize(
    ("fopts", "message"),
    [
        ({"beta": -0.5}, "beta must be >= 0"),
        ({"reconstruction": "ssim"}, "unknown vae reconstruction loss 'ssim'; expected one of"),
        ({"preset": "huge"}, "unknown vae preset 'huge'; expected one of: base, small, tiny"),
        ({"sigma": 0}, "sigma must be > 0"),
        ({"perceptual_extractor": "inception:x"}, "perceptual_extractor must be domain:NAME"),
    ],
)
def test_bad_options(tmp_path, fopts, message):
    with pytest.raises(ImagesynthError, match=message):
        Trainer(_cfg(tmp_path, family_options=fopts))


def test_cli_beta_below_zero_is_refused(tmp_path):
    res = runner.invoke(
        app, ["train", "vae", "--data", "digits", "--steps", "1", "--beta", "-1",
              "--runs-dir", str(tmp_path), "--dry-run"],
    )  # fmt: skip
    assert isinstance(res.exception, ImagesynthError)
    assert "beta must be >= 0" in str(res.exception)
