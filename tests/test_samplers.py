"""Samplers against an analytic oracle: Gaussian data has a closed-form optimal denoiser.

Data x0 ~ N(MU, S^2) per pixel, noised as x_t = a x0 + b eps with a = sqrt(alpha_bar),
b = sqrt(1 - alpha_bar). Then x_t ~ N(a MU, V) with V = a^2 S^2 + b^2, and the optimal
predictions are the posterior means
    E[eps | x_t] = b (x_t - a MU) / V
    E[x0  | x_t] = MU + a S^2 (x_t - a MU) / V
    E[v   | x_t] = a E[eps | x_t] - b E[x0 | x_t]        (v = a eps - b x0, Salimans & Ho 2022)
and the probability-flow ODE maps x_T to x0 = MU + S (x_T - a_T MU) / sqrt(V_T) exactly, so
deterministic samplers are checked pixel by pixel, stochastic ones by mean and std.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest
import torch

from imagesynth.errors import ImagesynthError
from imagesynth.sampling import (
    SAMPLERS,
    CFGModelFn,
    StepInfo,
    alpha_bar_at,
    cfg_model_fn,
    cfg_schedule,
    make_scheduler,
    predict_x0,
    resolve_sampler,
    sample,
    sampler_names,
)

# diffusers' schedulers call np.array on torch tensors (numpy 2 copy= deprecation, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MU, S = 0.3, 0.5
SHAPE = (64, 1, 16, 16)  # 16384 pixels: standard errors 0.0039 (mean), 0.0028 (std)
MEAN_TOL = 0.015  # ~4 standard errors; no sampler here biases the mean
DETERMINISTIC = ["ddim", "dpmpp-2m", "euler", "heun", "unipc"]


def train_config(prediction_type: str = "epsilon", schedule: str = "linear") -> dict:
    betas = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}.get(schedule, (1e-4, 0.02))
    return {
        "_class_name": "DDPMScheduler",  # ignored by make_scheduler
        "num_train_timesteps": 1000,
        "beta_start": betas[0],
        "beta_end": betas[1],
        "beta_schedule": schedule,
        "prediction_type": prediction_type,
        "clip_sample": False,  # the data reaches past [-1, 1]
        "variance_type": "fixed_small",
    }


def posterior(x_t: torch.Tensor, ab: torch.Tensor) -> dict[str, torch.Tensor]:
    """Optimal eps, x0 and v predictions for N(MU, S^2) data."""
    a, b = ab.sqrt(), (1 - ab).sqrt()
    var = ab * S**2 + 1 - ab
    eps = b * (x_t - a * MU) / var
    x0 = MU + a * S**2 * (x_t - a * MU) / var
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}


def oracle(scheduler, prediction_type: str):
    """The optimal model; it reads alpha_bar straight from the training table (integer t)."""
    ac = scheduler.alphas_cumprod.double()

    def model_fn(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x_in.shape[0],)
        ti = t.round().long()
        assert torch.allclose(t, ti.to(t.dtype), atol=1e-3), t  # trailing spacing: integer t
        ab = ac[ti].view(-1, 1, 1, 1)
        return posterior(x_in.double(), ab)[prediction_type].to(x_in.dtype)

    return model_fn


def noise_like(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def probability_flow(scheduler, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """x0 from the exact ODE solution started where `sample` starts."""
    scheduler.set_timesteps(steps)
    t0 = scheduler.timesteps[0]
    x_in = scheduler.scale_model_input(noise * scheduler.init_noise_sigma, t0)  # VP form
    ab = alpha_bar_at(scheduler, t0)
    return MU + S * (x_in - math.sqrt(ab) * MU) / math.sqrt(ab * S**2 + 1 - ab)


def run(name: str, steps: int, prediction_type="epsilon", schedule="linear", seed=1, **kw):
    scheduler = make_scheduler(name, train_config(prediction_type, schedule))
    noise = noise_like()
    gen = torch.Generator().manual_seed(seed)
    out = sample(oracle(scheduler, prediction_type), noise, scheduler, steps, generator=gen, **kw)
    return out, scheduler, noise


# ---------------------------------------------------------------------------------------------
# registry and schedulers


def test_registry_names_and_labels():
    assert sampler_names() == ["ddpm", "ddim", "dpmpp-2m", "euler", "euler-a", "heun", "unipc"]
    assert resolve_sampler("Euler a").name == "euler-a"
    assert resolve_sampler("euler A").name == "euler-a"
    assert resolve_sampler("DPM++ 2M").name == "dpmpp-2m"
    assert resolve_sampler(" dpmpp-2m ").label == "DPM++ 2M"
    assert resolve_sampler("UNIPC") is SAMPLERS["unipc"]
    assert SAMPLERS["heun"].model_evals_per_step == 2
    assert {n for n, s in SAMPLERS.items() if s.stochastic} == {"ddpm", "euler-a"}


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ImagesynthError, match=r"'plms'.*ddim.*dpmpp-2m.*euler-a"):
        resolve_sampler("plms")


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_make_scheduler(name):
    info = SAMPLERS[name]
    cfg = {**train_config("v_prediction"), "not_a_key": 1}
    scheduler = make_scheduler(info.label, cfg)
    assert type(scheduler).__name__ == info.scheduler_class
    assert scheduler.config.timestep_spacing == "trailing"
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.num_train_timesteps == 1000
    assert "not_a_key" not in scheduler.config
    scheduler.set_timesteps(10)
    assert int(scheduler.timesteps[0]) == 999  # trailing: the first step is the last train step


def test_make_scheduler_options_and_errors():
    dpm = make_scheduler("dpmpp-2m", train_config())
    assert dpm.config.algorithm_type == "dpmsolver++"
    assert dpm.config.solver_order == 2
    with pytest.raises(ImagesynthError, match="'flow'"):
        make_scheduler("ddim", {**train_config(), "prediction_type": "flow"})
    with pytest.raises(ImagesynthError, match=r"'euler-a'.*'sample'"):
        make_scheduler("euler-a", train_config("sample"))
    with pytest.raises(ImagesynthError, match=r"Euler.*wiggly"):
        make_scheduler("euler", {**train_config(), "beta_schedule": "wiggly"})


def test_heun_warns_on_zero_terminal_snr(caplog):
    with caplog.at_level(logging.WARNING, logger="imagesynth"):
        make_scheduler("heun", train_config(schedule="linear"))
        assert not caplog.records
        make_scheduler("heun", train_config(schedule="squaredcos_cap_v2"))
    assert "Heun is unstable" in caplog.text


# ---------------------------------------------------------------------------------------------
# alpha_bar and x0


def test_alpha_bar_at():
    scheduler = make_scheduler("euler", train_config())
    ac = scheduler.alphas_cumprod
    for t in [0, 1, 500, 999]:
        assert alpha_bar_at(scheduler, t) == pytest.approx(float(ac[t]), rel=1e-5)
        assert alpha_bar_at(scheduler, torch.tensor(float(t))) == pytest.approx(float(ac[t]), 1e-5)
    mid = alpha_bar_at(scheduler, 500.5)
    assert float(ac[501]) < mid < float(ac[500])
    with pytest.raises(ImagesynthError, match=r"1000.5"):
        alpha_bar_at(scheduler, 1000.5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predict_x0_is_the_posterior_mean(prediction_type):
    x0 = MU + S * noise_like(1, (4, 1, 8, 8))
    eps = noise_like(2, (4, 1, 8, 8))
    for ab in [1e-4, 0.3, 0.99]:
        x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        pred = posterior(x_t, torch.tensor(ab))
        got = predict_x0(x_t, pred[prediction_type], ab, prediction_type)
        torch.testing.assert_close(got, pred["sample"], atol=2e-4, rtol=1e-4)
    # at t = 999 the data is all but gone: the best guess is the data mean
    scheduler = make_scheduler("ddpm", train_config(prediction_type))
    ab = alpha_bar_at(scheduler, 999)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    out = oracle(scheduler, prediction_type)(x_t, torch.full((4,), 999.0))
    assert (predict_x0(x_t, out, ab, prediction_type) - MU).abs().max() < 0.01
    with pytest.raises(ImagesynthError, match="'score'"):
        predict_x0(x_t, out, ab, "score")


# ---------------------------------------------------------------------------------------------
# sampling the oracle

# |std error| bounds at 50 steps: first-order ODE solvers shrink the std by O(1/steps) (measured
# -0.027 for DDIM/Euler), second-order ones are within sampling noise (std SE 0.003).
STD_TOL_50 = {"ddim": 0.04, "euler": 0.04, "dpmpp-2m": 0.012, "heun": 0.012, "unipc": 0.012}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_ode_samplers_mean_std(name):
    out, _, _ = run(name, 50)
    assert abs(out.mean().item() - MU) < MEAN_TOL
    assert abs(out.std().item() - S) < STD_TOL_50[name]


# mean |x - exact ODE solution| at 20 steps (measured: DDIM/Euler 0.055, others 0.016-0.018)
FLOW_TOL_20 = {"ddim": 0.07, "euler": 0.07, "dpmpp-2m": 0.025, "heun": 0.025, "unipc": 0.025}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_ode_samplers_follow_probability_flow(name):
    errs = {}
    for steps in (20, 50):
        out, scheduler, noise = run(name, steps)
        errs[steps] = (out - probability_flow(scheduler, noise, steps)).abs().mean().item()
    assert errs[20] < FLOW_TOL_20[name]
    # first order: error ~ 1/steps (ratio 0.4); second order ~ 1/steps^2 (0.16) or better
    assert errs[50] / errs[20] < (0.5 if name in ("ddim", "euler") else 0.3)


@pytest.mark.parametrize("name", ["dpmpp-2m", "unipc", "euler", "ddim"])
def test_cosine_schedule(name):
    out, scheduler, noise = run(name, 20, schedule="squaredcos_cap_v2")
    flow = probability_flow(scheduler, noise, 20)
    assert (out - flow).abs().mean().item() < 0.04
    assert abs(out.mean().item() - MU) < MEAN_TOL


def test_ddpm_1000_steps_is_the_reference():
    out, _, _ = run("ddpm", 1000)  # measured: mean +0.002, std +0.002
    assert abs(out.mean().item() - MU) < MEAN_TOL
    assert abs(out.std().item() - S) < 0.012


@pytest.mark.parametrize("name", ["ddpm", "euler-a"])
def test_ancestral_samplers_converge(name):
    # ancestral steps shrink the std by O(1/steps): measured -0.053 at 50 steps, -0.013 at 250
    errs = {}
    for steps in (50, 250):
        out, _, _ = run(name, steps)
        assert abs(out.mean().item() - MU) < MEAN_TOL
        errs[steps] = abs(out.std().item() - S)
    assert errs[50] < 0.08
    assert errs[250] < 0.025


def test_euler_ancestral_is_ddpm_and_ddim_is_euler():
    # Karras et al. 2022 / k-diffusion: DDIM is Euler on the probability flow ODE in sigma, and
    # DDPM's ancestral step (fixed_small variance) is Euler ancestral; same noise, same numbers.
    ddpm, _, _ = run("ddpm", 20, seed=7)
    euler_a, _, _ = run("euler-a", 20, seed=7)
    torch.testing.assert_close(euler_a, ddpm, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(run("euler", 20)[0], run("ddim", 20)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "prediction_type"),
    [
        (name, pt)
        for name, info in SAMPLERS.items()
        for pt in ("v_prediction", "sample")
        if pt in info.prediction_types
    ],
)
def test_prediction_types_agree(name, prediction_type):
    """The three optimal models are one model: samples agree with the eps oracle's."""
    ref, _, _ = run(name, 20)
    out, _, _ = run(name, 20, prediction_type)
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=1e-3)
    assert abs(out.mean().item() - MU) < MEAN_TOL


# ---------------------------------------------------------------------------------------------
# seeds, callbacks, img2img


@pytest.mark.parametrize("name", ["ddpm", "euler-a"])
def test_stochastic_samplers_follow_the_generator(name):
    a, _, _ = run(name, 10, seed=3)
    b, _, _ = run(name, 10, seed=3)
    c, _, _ = run(name, 10, seed=4)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


def test_per_image_generators_make_images_batch_independent():
    scheduler = make_scheduler("euler-a", train_config())
    model = oracle(scheduler, "epsilon")
    noise = noise_like(0, (2, 1, 8, 8))
    gens = [torch.Generator().manual_seed(s) for s in (10, 11)]
    both = sample(model, noise, scheduler, 10, generator=gens)
    one = sample(model, noise[1:], scheduler, 10, generator=[torch.Generator().manual_seed(11)])
    torch.testing.assert_close(both[1:], one)
    with pytest.raises(ImagesynthError, match="1 generators for a batch of 2"):
        sample(model, noise, scheduler, 10, generator=gens[:1])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback(name):
    infos: list[StepInfo] = []
    calls = []
    scheduler = make_scheduler(name, train_config())
    model = oracle(scheduler, "epsilon")

    def counting_model(x, t):
        calls.append(float(t[0]))
        return model(x, t)

    noise = noise_like(0, (4, 1, 8, 8))
    out = sample(counting_model, noise, scheduler, 8, callback=infos.append, progress=True)
    assert [s.i for s in infos] == list(range(8))
    assert all(s.total == 8 for s in infos)
    assert len(calls) == 8 * SAMPLERS[name].model_evals_per_step - (name == "heun")
    assert all(s.x0.shape == noise.shape and s.x.shape == noise.shape for s in infos)
    assert infos[0].t == 999.0
    assert [s.t for s in infos] == sorted({s.t for s in infos}, reverse=True)
    # the first prediction is about the data mean; the last step lands on its own prediction
    assert abs(infos[0].x0.mean().item() - MU) < 0.01
    assert infos[0].x0.std().item() < 0.01
    torch.testing.assert_close(infos[-1].x0, out, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(infos[-1].x, out)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_img2img_last_step_denoises_init(name):
    scheduler = make_scheduler(name, train_config())
    model = oracle(scheduler, "epsilon")
    init = MU + S * noise_like(5, (4, 1, 8, 8))
    noise = noise_like(6, (4, 1, 8, 8))
    infos: list[StepInfo] = []
    out = sample(model, noise, scheduler, 20, start_step=19, init=init, callback=infos.append)
    assert [(s.i, s.total) for s in infos] == [(0, 1)]
    t = infos[0].t
    assert t == 49.0  # trailing, 20 steps: the last step starts at t = 49
    # one step from t = 49 denoises x_t = sqrt(ab) init + sqrt(1 - ab) noise to E[x0 | x_t]
    ab = alpha_bar_at(scheduler, t)
    x_t = math.sqrt(ab) * init + math.sqrt(1 - ab) * noise
    expected = posterior(x_t, torch.tensor(ab))["sample"]
    if SAMPLERS[name].stochastic:  # the last ancestral step adds no noise either
        torch.testing.assert_close(out, expected, atol=1e-3, rtol=1e-3)
    else:
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    assert (out - init).abs().mean() < 0.15  # close to init
    full = sample(model, noise, scheduler, 20)
    assert (full - init).abs().mean() > 0.4  # a full run forgets it


def test_img2img_halfway_counts_steps():
    scheduler = make_scheduler("heun", train_config())
    infos: list[StepInfo] = []
    init = torch.full((2, 1, 8, 8), MU)
    sample(
        oracle(scheduler, "epsilon"),
        noise_like(0, (2, 1, 8, 8)),
        scheduler,
        10,
        start_step=4,
        init=init,
        callback=infos.append,
    )
    assert [s.i for s in infos] == list(range(6))
    assert infos[0].t == 599.0  # trailing, 10 steps: 999, 899, ..., 99


# ---------------------------------------------------------------------------------------------
# validation


def test_bad_inputs():
    scheduler = make_scheduler("ddim", train_config())
    model = oracle(scheduler, "epsilon")
    noise = noise_like(0, (2, 1, 8, 8))
    with pytest.raises(ImagesynthError, match=r"steps.*got 0"):
        sample(model, noise, scheduler, 0)
    with pytest.raises(ImagesynthError, match=r"4-D.*\(1, 8, 8\)"):
        sample(model, noise[0], scheduler, 5)
    bad = noise.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ImagesynthError, match="1 NaN"):
        sample(model, bad, scheduler, 5)
    with pytest.raises(ImagesynthError, match=r"at most 1000.*got 1001"):
        sample(model, noise, scheduler, 1001)
    with pytest.raises(ImagesynthError, match=r"torch\.int64"):
        sample(model, noise.long(), scheduler, 5)
    with pytest.raises(ImagesynthError, match=r"start_step.*0..4.*got 5"):
        sample(model, noise, scheduler, 5, start_step=5, init=noise)
    with pytest.raises(ImagesynthError, match="start_step=2 needs an init"):
        sample(model, noise, scheduler, 5, start_step=2)
    with pytest.raises(ImagesynthError, match=r"init.*\(1, 1, 8, 8\)"):
        sample(model, noise, scheduler, 5, start_step=2, init=noise[:1])
    with pytest.raises(ImagesynthError, match=r"model output.*\(2, 2, 8, 8\)"):
        sample(lambda x, t: torch.cat([x, x], 1), noise, scheduler, 5)


def test_import_does_not_load_diffusers():
    code = "import sys, imagesynth.sampling; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# classifier-free guidance


class ToyConditional:
    """out = x * (1 + label) + label: the label changes the output; counts batch sizes."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == t.shape[0] == labels.shape[0]
        self.batches.append(x.shape[0])
        lab = labels.to(x.dtype).view(-1, 1, 1, 1)
        return x * (1 + lab) + lab


def test_cfg_combines_linearly():
    x = noise_like(0, (3, 1, 4, 4))
    t = torch.full((3,), 500.0)
    cond, uncond = torch.tensor([1, 2, 3]), torch.tensor([9, 9, 9])
    toy = ToyConditional()
    c, u = toy(x, t, cond), toy(x, t, uncond)

    toy.batches.clear()
    torch.testing.assert_close(cfg_model_fn(toy, cond, uncond, 1.0)(x, t), c)
    torch.testing.assert_close(cfg_model_fn(toy, cond, uncond, 0.0)(x, t), u)
    assert toy.batches == [3, 3]  # scale 1 or 0: one call of B
    torch.testing.assert_close(cfg_model_fn(toy, cond, uncond, 3.5)(x, t), u + 3.5 * (c - u))
    assert toy.batches[-1] == 6  # one batched call of 2B


def test_cfg_concat_for_structured_conditioning():
    def model(x, t, cond):
        assert cond["emb"].shape == (4, 5, 3) and cond["mask"].shape == (4, 5)
        return x + cond["emb"].mean((1, 2)).view(-1, 1, 1, 1)

    x, t = noise_like(0, (2, 1, 4, 4)), torch.full((2,), 10.0)
    c = {"emb": torch.ones(2, 5, 3), "mask": torch.ones(2, 5)}
    u = {"emb": torch.zeros(2, 5, 3), "mask": torch.zeros(2, 5)}
    torch.testing.assert_close(cfg_model_fn(model, c, u, 2.0)(x, t), x + 2.0)


def test_cfg_schedules():
    const, lin, cos = (cfg_schedule(n, 7.0) for n in ("constant", "linear", "cosine"))
    assert [const(i, 11) for i in (0, 5, 10)] == [7.0, 7.0, 7.0]
    assert [lin(i, 11) for i in (0, 5, 10)] == pytest.approx([7.0, 4.0, 1.0])
    assert [cos(i, 11) for i in (0, 5, 10)] == pytest.approx([7.0, 4.0, 1.0])
    assert cos(2, 11) > lin(2, 11)  # cosine holds the scale longer
    assert lin(0, 1) == 7.0
    with pytest.raises(ImagesynthError, match=r"'exp'.*constant, cosine, linear"):
        cfg_schedule("exp", 7.0)
    with pytest.raises(ImagesynthError, match="nan"):
        cfg_model_fn(ToyConditional(), None, None, float("nan"))


def test_sample_tells_cfg_the_step():
    seen: list[tuple[int, int]] = []

    def schedule(i: int, total: int) -> float:
        seen.append((i, total))
        return 1.0

    scheduler = make_scheduler("heun", train_config())
    model = oracle(scheduler, "epsilon")
    guided = cfg_model_fn(lambda x, t, c: model(x, t), None, None, schedule)
    assert isinstance(guided, CFGModelFn)
    sample(guided, noise_like(0, (2, 1, 4, 4)), scheduler, 4)
    # Heun: two evaluations per step but one for the last (Euler to sigma = 0)
    assert seen == [(0, 4), (0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4)]


def test_guided_sampling_moves_towards_the_condition():
    """Two Gaussian 'classes' N(+-1, S^2): guidance at scale s pushes samples past the class."""
    scheduler = make_scheduler("dpmpp-2m", train_config())
    ac = scheduler.alphas_cumprod.double()

    def model(x, t, labels):  # label 0: mean -1, label 1: mean +1, label 2: "no class", mean 0
        ab = ac[t.round().long()].view(-1, 1, 1, 1)
        mu = (labels.double() * 2 - 1).where(labels < 2, torch.zeros(())).view(-1, 1, 1, 1)
        a, b = ab.sqrt(), (1 - ab).sqrt()
        return (b * (x.double() - a * mu) / (ab * S**2 + 1 - ab)).float()

    noise = noise_like(0, (8, 1, 8, 8))
    labels, none = torch.ones(8, dtype=torch.long), torch.full((8,), 2)
    means = {}
    for s in (0.0, 1.0, 2.0):
        out = sample(cfg_model_fn(model, labels, none, s), noise, scheduler, 20)
        means[s] = out.mean().item()
    assert means[0.0] == pytest.approx(0.0, abs=0.03)
    assert means[1.0] == pytest.approx(1.0, abs=0.03)
    assert means[2.0] > 1.3  # extrapolated past the conditional mean
