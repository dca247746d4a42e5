"""The estimator for the GAN / VAE / autoregressive / super-resolution families: their own
sampling loops and training phases counted on meta."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError
from imagesynth.estimator import estimate
from imagesynth.estimator.count import count_call
from imagesynth.estimator.families import FamilyModel, count_family, family_model, measure_family

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_CACHE", str(tmp_path / "cache"))


def _pixelcnn(size: int = 8) -> FamilyModel:
    return FamilyModel(
        name="pcnn",
        family="pixelcnn",
        family_options={"width": 8, "layers": 3, "head": 16},
        size=size,
        channels=1,
        num_classes=3,
        description="test",
    )


def test_pixelcnn_rows_counted_by_extrapolation_equal_the_whole_loop(monkeypatch):
    import imagesynth.estimator.families as fam_mod

    fm = _pixelcnn(8)  # reach 1 + 2 = 3 < 8 rows: the extrapolation is exercised
    fast, steps, _ = count_family(fm, "generate", 2, 8, use_cache=False)
    monkeypatch.setattr(fam_mod, "_count_pixel_rows", lambda fn, *a: fn())
    full, _, _ = count_family(fm, "generate", 2, 8, use_cache=False)
    assert steps == 64
    assert fast.flops_forward == full.flops_forward > 0
    assert [o[0] for o in fast.ops["fwd"]][-50:] == [o[0] for o in full.ops["fwd"]][-50:]
    assert sum(o[2] for o in fast.ops["fwd"]) == sum(o[2] for o in full.ops["fwd"])
    assert abs(len(fast.ops["fwd"]) - len(full.ops["fwd"])) <= 4  # the loop's setup only
    assert fast.module_calls == full.module_calls


def test_upscaler_generate_equals_counting_its_network():
    fm = family_model("upscaler:tiny", 64)
    c, steps, params = count_family(fm, "generate", 2, 64, use_cache=False)
    from imagesynth.estimator.families import build_family

    net = build_family(fm).nets["net"].to("meta")
    direct = count_call(net, {"x": torch.empty(2, 3, 32, 32, device="meta")})
    assert steps == 1 and c.flops_forward == direct.flops_forward
    assert params["held"] == sum(p.numel() for p in net.parameters())


def test_gan_training_step_counts_both_phases_and_optimizer_memory():
    gen = estimate("gan:dcgan-tiny", task="generate", size=16, batch=8)
    train = estimate("gan:dcgan-tiny", task="train", size=16, batch=8)
    # a GAN step runs G and D forward + backward (twice for D): far more than sampling
    assert train.flops_per_image > 3 * gen.flops_per_image
    m = train.memory
    assert m["optimizer"] == 2 * m["gradients"] > 0  # AdamW: two fp32 states per parameter
    assert m["weights"] == 4 * train.parameters
    assert any("2 phases" in n for n in train.notes)
    bigger = estimate("gan:dcgan-tiny", task="train", size=16, batch=32)
    assert bigger.memory["activations"] > 2 * m["activations"]
    assert math.isfinite(train.seconds_per_image) and train.seconds_per_image > 0


def test_pixelcnn_generation_is_sequential_and_costs_a_call_per_pixel():
    fm = _pixelcnn(8)
    r = estimate(fm, task="generate", batch=2)
    assert r.steps == 64 and any("64 sequential" in n for n in r.notes)
    one_pass = estimate(fm, task="train", batch=2)
    # sampling runs the net on growing strips, once per pixel: more than one full forward
    # (a training step's FLOPs are about 3 forwards)
    assert r.flops_per_image > 1.5 * one_pass.flops_per_image / 3


def test_model_directories_of_each_family(tmp_path):
    import imagesynth

    base = dict(
        data="digits",
        size=8,
        steps=1,
        batch=4,
        runs_dir=str(tmp_path),
        progress=False,
        sample_every=100,
        ckpt_every=100,
        sample_n=2,
        warmup_steps=1,
    )
    vq = imagesynth.train(
        family="vqvae",
        cond="none",
        **base,
        family_options={"width": 16, "factor": 2, "codebook_size": 16, "code_dim": 4},
    )
    pr = imagesynth.train(
        family="transformer",
        cond="class",
        **base,
        family_options={"vqvae": str(vq.model_dir), "dim": 16, "layers": 1, "heads": 2},
    )
    r = estimate(str(pr.model_dir), task="generate", batch=2)
    stored = imagesynth.load(pr.model_dir, device="cpu")
    n_params = sum(p.numel() for p in stored.net.parameters())
    n_params += sum(p.numel() for p in stored.vqvae.parameters())
    assert r.parameters == n_params
    assert r.steps == stored.net.cfg.tokens and r.size == 8
    with pytest.raises(ImagesynthError, match=r"makes 8 px images.*--size 8"):
        estimate(str(pr.model_dir), size=16)
    t = estimate(str(vq.model_dir), task="train", batch=4)
    assert t.memory["gradients"] > 0 and t.flops_per_step > 0


def test_measure_runs_the_same_calls_for_real():
    fm = _pixelcnn(4)
    got = measure_family(fm, "train", 4, 2, repeats=1)
    assert got["seconds_per_step"] > 0 and got["seconds_per_image"] > 0
    got = measure_family(fm, "generate", 4, 2, repeats=1)
    assert got["seconds_per_step"] == pytest.approx(got["seconds_per_image"] * 2 / 16)


def test_bad_input():
    with pytest.raises(ImagesynthError, match="transformer prior is estimated from a model dir"):
        estimate("transformer")
    with pytest.raises(ImagesynthError, match=r"unknown gan preset 'nope'.*dcgan-tiny"):
        estimate("gan:nope")
    res = runner.invoke(app, ["estimate", "--model", "vqvae:big"])
    assert res.exit_code != 0 and "no presets" in str(res.exception or res.output)
    res = runner.invoke(app, ["estimate", "--model", "gan:dcgan-tiny", "--size", "16"])
    assert res.exit_code == 0, res.output
    assert "gan preset dcgan-tiny" in res.output and "peak memory" in res.output
