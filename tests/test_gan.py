import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError
from imagesynth.io.pngmeta import read_png_metadata
from imagesynth.io.rundir import latest_checkpoint, read_jsonl
from imagesynth.models.gan import (
    Discriminator,
    GanFamily,
    GanOptions,
    augment,
    d_loss_fn,
    g_loss_fn,
    gradient_penalty,
    r1_penalty,
    slerp,
)
from imagesynth.training.config import TrainConfig
from imagesynth.training.family import DataInfo
from imagesynth.training.state import load_tensors
from imagesynth.training.trainer import Trainer, TrainingDiverged

runner = CliRunner()
DIGITS16 = DataInfo("digits", 16, 1, 10, [str(i) for i in range(10)])


def _cfg(tmp_path, **kw):
    base = dict(
        family="gan",
        data="digits",
        size=16,
        cond="class",
        steps=4,
        batch=8,
        lr=2e-4,
        lr_schedule="constant",
        warmup_steps=0,
        clip_grad=0.0,
        log_every=1,
        sample_every=1000,
        sample_n=4,
        ckpt_every=1000,
        runs_dir=str(tmp_path),
        family_options={"preset": "dcgan-tiny", "augment": "ada", "r1_gamma": 1.0, "r1_every": 2},
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def gan_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gan")
    res = Trainer(_cfg(tmp, steps=3)).train()
    return res


# ----- loss formulas ----------------------------------------------------------------------
def test_losses_match_direct_formulas():
    torch.manual_seed(0)
    r, f = torch.randn(16) * 2, torch.randn(16) * 2
    sig = torch.sigmoid
    seeds_d = -(torch.log(sig(r)).mean() + torch.log(1 - sig(f)).mean())  # -V(D, G)
    assert torch.allclose(d_loss_fn("minimax", r, f), seeds_d, atol=1e-5)
    assert torch.allclose(d_loss_fn("nonsat", r, f), seeds_d, atol=1e-5)
    assert torch.allclose(g_loss_fn("minimax", f), torch.log(1 - sig(f)).mean(), atol=1e-5)
    assert torch.allclose(g_loss_fn("nonsat", f), -torch.log(sig(f)).mean(), atol=1e-5)
    hinge = torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean()
    assert torch.allclose(d_loss_fn("hinge", r, f), hinge)
    assert torch.allclose(g_loss_fn("hinge", f), -f.mean())
    assert torch.allclose(d_loss_fn("wgan-gp", r, f), f.mean() - r.mean())
    assert torch.allclose(g_loss_fn("wgan-gp", f), -f.mean())
    # the saturating G loss has a vanishing gradient where D rejects fakes confidently
    f_low = torch.tensor([-8.0], requires_grad=True)
    g_loss_fn("minimax", f_low).backward()
    sat = f_low.grad.abs().item()
    f_low.grad = None
    g_loss_fn("nonsat", f_low).backward()
    assert sat < 1e-3 < f_low.grad.abs().item()
    with pytest.raises(ImagesynthError, match="expected one of: hinge, minimax, nonsat, wgan-gp"):
        d_loss_fn("lsgan", r, f)


class _Linear(torch.nn.Module):
    """D(x) = <w, x>: grad_x D = w everywhere."""

    def __init__(self, dim):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(dim))

    def forward(self, x, y=None):
        return x.flatten(1) @ self.w


def test_r1_and_gradient_penalty_match_autograd_and_closed_form():
    torch.manual_seed(0)
    d = _Linear(16)
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    r1 = r1_penalty(d(x), x, gamma=3.0)
    assert torch.allclose(r1, 1.5 * d.w.pow(2).sum(), atol=1e-5)
    # a non-linear D: compare with a separate autograd pass, per sample
    disc = Discriminator("dcgan", 8, 16, 1, 0, spectral_norm=False)
    x = torch.randn(3, 1, 16, 16, requires_grad=True)
    r1 = r1_penalty(disc(x), x, gamma=2.0)
    grads = [torch.autograd.grad(disc(x[i : i + 1]).sum(), x)[0][i] for i in range(3)]
    expected = torch.stack([g.pow(2).sum() for g in grads]).mean()
    assert torch.allclose(r1, expected, rtol=1e-4)
    r1.backward()  # double backprop reaches D's weights
    assert disc.fc.weight.grad is not None and disc.fc.weight.grad.abs().sum() > 0
    gp = gradient_penalty(d, torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4), None, _gen())
    assert torch.allclose(gp, (d.w.norm() - 1).pow(2), atol=1e-5)


def _px(im):
    return np.asarray(im).tolist()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----- conditioning -----------------------------------------------------------------------
@pytest.mark.parametrize("cond", ["projection", "concat"])
def test_conditional_discriminator_shape_and_class_dependence(cond):
    torch.manual_seed(0)
    disc = Discriminator("resnet", 8, 16, 3, num_classes=10, cond=cond)
    if cond == "projection":
        torch.nn.init.normal_(disc.embed.parametrizations.weight.original, std=1.0)
    x = torch.randn(4, 3, 16, 16)
    a = disc(x, torch.tensor([0, 1, 2, 3]))
    b = disc(x, torch.tensor([5, 5, 5, 5]))
    assert a.shape == (4,)
    assert (a - b).abs().min() > 1e-4  # the label changes every logit
    with pytest.raises(ImagesynthError, match="class-conditional"):
        disc(x)
    if cond == "projection":  # logit = fc(phi) + <embed(y), phi>
        disc.eval()  # no power iteration: the spectral norms stay fixed between calls
        phi = disc.features(x, None)
        y = torch.tensor([0, 1, 2, 3])
        expected = disc.fc(phi).squeeze(1) + (disc.embed(y) * phi).sum(1)
        assert torch.allclose(disc(x, y), expected, atol=1e-4)


# ----- augmentation -----------------------------------------------------------------------
def test_diffaugment_is_differentiable_and_p_gates_it():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    x.requires_grad_(True)
    y = augment(x, ["color", "translation", "cutout"], 1.0, _gen())
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not torch.allclose(y, x)
    # p = 0: identity, and the same number of random draws (so resume stays in step)
    g0, g1 = _gen(1), _gen(1)
    same = augment(x.detach(), ["color", "translation", "cutout"], 0.0, g0)
    assert torch.allclose(same, x.detach(), atol=1e-6)
    augment(x.detach(), ["color", "translation", "cutout"], 1.0, g1)
    assert torch.equal(torch.rand(3, generator=g0), torch.rand(3, generator=g1))
    # cutout zeroes a quarter of the image area (when the square lies inside)
    ones = torch.ones(64, 1, 16, 16)
    cut = augment(ones, ["cutout"], 1.0, _gen(2))
    zero_frac = (cut == 0).float().mean((1, 2, 3))
    assert zero_frac.max() == pytest.approx(0.25) and zero_frac.min() > 0
    # translation moves content without changing it
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 8, 8] = 1.0
    moved = augment(img.repeat(32, 1, 1, 1), ["translation"], 1.0, _gen(3))
    assert torch.allclose(moved.sum((1, 2, 3)), torch.ones(32))


def test_ada_probability_moves_with_the_overfitting_heuristic():
    opts = GanOptions(augment="ada", ada_interval=1, ada_kimg=0.1, ada_target=0.6)
    fam = GanFamily(opts, DIGITS16)
    disc = fam.nets["D"]
    logs = fam._ada_update(disc, torch.ones(50), 50)  # r_t = 1 > 0.6: D overfits -> more aug
    assert logs["rt"] == 1.0 and logs["ada_p"] == pytest.approx(0.5)
    fam._ada_update(disc, torch.ones(50), 50)
    assert float(disc.ada_p) == pytest.approx(1.0)  # clamped at 1
    fam._ada_update(disc, -torch.ones(50), 50)  # r_t = -1 < 0.6 -> less
    assert float(disc.ada_p) == pytest.approx(0.5)
    assert "ada_p" in dict(disc.named_buffers())  # saved with D: resumes exactly


# ----- training ---------------------------------------------------------------------------
def _weights(run_dir):
    ckpt = latest_checkpoint(run_dir)
    return {p.name: load_tensors(p) for p in ckpt.glob("*.safetensors")}


def test_gan_resume_is_exact_and_stats_hold_signals(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a")).train()
    first = Trainer(_cfg(tmp_path / "b"))
    real_step = first._train_step

    def interrupted(step):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(step)

    first._train_step = interrupted
    assert first.train().step == 2
    resumed = Trainer(_cfg(tmp_path / "b"), resume="latest").train()
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert set(a) >= {"net-G.safetensors", "net-D.safetensors", "ema-G.safetensors"}
    assert a.keys() == b.keys()
    for name in a:
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}:{k} differs after resume"
    stats = read_jsonl(straight.run_dir / "stats.jsonl")
    keys = set().union(*stats)
    for k in ("D/acc_real", "D/acc_fake", "D/rt", "D/ada_p", "G/d_grad_norm", "G/diversity",
              "G/diversity_ratio", "D/r1", "grad_norm"):  # fmt: skip
        assert k in keys, k
    assert all(0 <= r["D/acc_real"] <= 1 for r in stats)
    assert [r["step"] for r in stats] == [1, 2, 3, 4]


def test_nonfinite_gan_loss_stops_cleanly(tmp_path):
    trainer = Trainer(_cfg(tmp_path, steps=20, max_bad_steps=2, ckpt_every=1))
    g_phase = trainer.phases[1]
    real = g_phase.loss

    def poisoned(nets, batch, gen):
        loss, logs = real(nets, batch, gen)
        return (loss * float("nan") if batch["step"] >= 2 else loss), logs

    g_phase.loss = poisoned
    with pytest.raises(TrainingDiverged, match="non-finite for 2 steps in a row"):
        trainer.train()
    ckpt = latest_checkpoint(trainer.run_dir)
    assert json.loads((ckpt / "checkpoint.json").read_text())["step"] <= 3  # before the 2nd bad
    for t in load_tensors(ckpt / "net-G.safetensors").values():
        assert torch.isfinite(t).all()


# ----- pipeline and CLI -------------------------------------------------------------------
def test_saved_gan_samples_per_seed_truncation_and_slerp(gan_model):
    import imagesynth

    pipe = imagesynth.load(gan_model.model_dir, device="cpu")
    assert pipe.family == "gan" and pipe.num_classes == 10
    a = pipe(n=4, seed=5, class_labels=[3])
    b = pipe(n=1, seed=7, class_labels=[3])
    assert _px(a.images[2]) == _px(b.images[0])  # image i = seed + i
    assert a.params[0]["class_label"] == 3 and a.params[1]["seed"] == 6
    t0 = pipe(n=2, seed=1, truncation=0.0, class_labels=[4])
    assert _px(t0.images[0]) == _px(t0.images[1])  # psi 0: class mean
    strip = pipe.interpolate(1, 2, frames=5, class_label=7)
    ends = pipe(n=2, seed=1, class_labels=[7])
    assert _px(strip.images[0]) == _px(ends.images[0])
    assert _px(strip.images[-1]) == _px(ends.images[1])
    za, zb = torch.randn(8), torch.randn(8)
    mid = slerp(za, zb, 0.5)
    assert torch.allclose(slerp(za, zb, 0.0), za, atol=1e-5)
    assert mid.norm() > 0.9 * min(za.norm(), zb.norm())  # slerp keeps the radius
    for bad, msg in [
        ({"class_labels": [10]}, "class index 10 out of range; expected 0..9"),
        ({"truncation": 1.5}, "truncation psi must be in"),
        ({"temperature": 0.7}, "do not take temperature"),
        ({"guidance_scale": 3.0}, "no classifier-free guidance"),
    ]:
        with pytest.raises(ImagesynthError, match=msg):
            pipe(n=2, **bad)


def test_cli_sample_and_interpolate(gan_model, tmp_path):
    model = str(gan_model.model_dir)
    out = tmp_path / "grid.png"
    res = runner.invoke(
        app, ["sample", model, "--n", "4", "--out", str(out), "--truncation", "0.7", "--class", "2"]
    )
    assert res.exit_code == 0, res.output
    meta = read_png_metadata(out).imagesynth
    assert meta["truncation"] == 0.7 and meta["class_label"] == 2 and meta["family"] == "gan"
    strip = tmp_path / "strip.png"
    res = runner.invoke(
        app, ["interpolate", model, "--from-seed", "1", "--to-seed", "2", "--frames", "6",
              "--out", str(strip), "--class", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert Image.open(strip).size == (6 * 16 + 7 * 2, 16 + 4)
    assert read_png_metadata(strip).imagesynth["interpolate_to_seed"] == 2
    for args, msg in [
        (["sample", model, "--temperature", "0.5"], "do not take temperature"),
        (["sample", model, "--sampler", "ddim"], "--sampler do not apply"),
        (["sample", model, "--class", "12"], "class index 12 out of range"),
        (["interpolate", model, "--frames", "1"], "frames must be >= 2"),
    ]:
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "x.png")])
        assert isinstance(res.exception, ImagesynthError), res.output
        assert msg in str(res.exception)


def test_interpolate_refuses_other_families(tmp_path, monkeypatch):
    import imagesynth.api

    class Other:
        family = "pixelcnn"

    monkeypatch.setattr(imagesynth.api, "load", lambda *a, **k: Other())
    res = runner.invoke(app, ["interpolate", str(tmp_path), "--out", str(tmp_path / "s.png")])
    assert isinstance(res.exception, ImagesynthError)
    assert "interpolate supports latent families: gan, vae" in str(res.exception)


@pytest.mark.parametrize(
    ("fopts", "message"),
    [
        ({"loss": "lsgan"}, "unknown gan loss 'lsgan'; expected one of: hinge, minimax"),
        ({"preset": "big"}, "unknown gan preset 'big'; expected one of: dcgan-base"),
        ({"augment": "flip"}, "unknown gan augment 'flip'"),
        ({"aug_policy": "color,rotate"}, "unknown augmentation 'rotate'"),
        ({"cond": "film"}, "unknown gan conditioning 'film'"),
        ({"d_lr_scale": 0}, "d_lr_scale must be in (0, 100]"),
        ({"truncation": -1}, "truncation psi must be in [0, 1]"),
    ],
)
def test_bad_family_options(tmp_path, fopts, message):
    with pytest.raises(ImagesynthError, match=re_escape(message)):
        Trainer(_cfg(tmp_path, family_options=fopts))


def re_escape(s):
    import re

    return re.escape(s)


def test_bad_size_and_lr(tmp_path):
    with pytest.raises(ImagesynthError, match="4 x a power of two"):
        Trainer(_cfg(tmp_path, size=24))
    for args, msg in [
        (["--lr", "0"], "lr must be in (0, 1), got 0.0"),
        (["--lr", "-0.001"], "lr must be in (0, 1)"),
        (["--lr", "0.3", "--d-lr-scale", "4"], "each phase's learning rate must be < 1"),
        (["--loss", "ls"], "unknown gan loss 'ls'"),
    ]:
        res = runner.invoke(
            app, ["train", "gan", "--data", "digits", "--size", "16", "--steps", "1",
                  "--runs-dir", str(tmp_path), "--dry-run", *args],
        )  # fmt: skip
        assert isinstance(res.exception, ImagesynthError), res.output
        assert msg in str(res.exception)


def test_cli_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "imagesynth", "train", "gan", "--data", "digits", "--steps", "1",
         "--lr", "0", "--runs-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: lr must be in (0, 1), got 0.0"


def test_cli_train_gan_dry_run(tmp_path):
    res = runner.invoke(
        app, ["train", "gan", "--data", "digits", "--size", "16", "--cond", "class", "--steps",
              "2", "--runs-dir", str(tmp_path), "--dry-run", "--loss", "nonsat"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output[: res.output.rindex("}") + 1])
    assert cfg["lr"] == 2e-4 and cfg["lr_schedule"] == "constant" and cfg["clip_grad"] == 0
    assert cfg["family_options"]["loss"] == "nonsat"
    assert "G: " in res.output and "10 classes" in res.output


def test_sample_diversity_signal_drops_on_collapse():
    fam = GanFamily(GanOptions(diversity_n=8), DataInfo("digits", 16, 1, 0))
    fam.real_diversity = 0.5
    g = fam.nets["G"]
    logs = fam._diversity(g, torch.device("cpu"))
    assert logs["diversity"] > 0 and math.isclose(logs["diversity_ratio"], logs["diversity"] / 0.5)
    with torch.no_grad():  # a collapsed G ignores z
        g.fc.weight.zero_()
    assert fam._diversity(g, torch.device("cpu"))["diversity"] < 1e-6
    assert F is not None


def test_sample_refuses_latent_options_for_diffusion(tmp_path):
    cfg = TrainConfig(
        family="diffusion", data="digits", size=16, cond="none", steps=1, batch=4,
        sample_every=1000, ckpt_every=1000, runs_dir=str(tmp_path), progress=False,
        family_options={"preset": "tiny", "sample_steps": 1},
    )  # fmt: skip
    model = str(Trainer(cfg).train().model_dir)
    for flag, value in [("--truncation", "0.5"), ("--temperature", "0.9"), ("--top-k", "3")]:
        res = runner.invoke(app, ["sample", model, "--n", "1", flag, value])
        assert isinstance(res.exception, ImagesynthError), res.output
        assert str(res.exception) == f"diffusion models do not take {flag}"
    out = tmp_path / "d.png"
    res = runner.invoke(app, ["sample", model, "--n", "1", "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert read_png_metadata(out).params["steps"] == 2
