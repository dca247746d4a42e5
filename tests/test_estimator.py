"""The resource estimator: counts on meta, the time / memory model, quick mode, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError
from imagesynth.estimator import estimate, quick_estimate
from imagesynth.estimator.arch import build_part, get_arch
from imagesynth.estimator.count import Counts, count_call
from imagesynth.estimator.devices import get_device, profile_path
from imagesynth.estimator.predict import COMPLEXITY


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Profiles and FLOP caches go to a fresh folder per test."""
    monkeypatch.setenv("IMAGESYNTH_CACHE", str(tmp_path / "cache"))


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_flops_match_analytic_count_and_flop_counter_mode():
    from torch.utils.flop_counter import FlopCounterMode

    b = 2
    conv = 2 * b * 16 * 16 * 8 * 3 * 9  # 2 x outputs x (C_in x k x k) MACs
    fc = 2 * b * 8 * 16 * 16 * 10
    with torch.device("meta"):
        net = _Tiny()
        x = torch.empty(b, 3, 16, 16)
    counts = count_call(net, {"x": x}, train=True)
    assert counts.flops_forward == conv + fc
    assert counts.param_count == sum(p.numel() for p in _Tiny().parameters())
    # backward: grad wrt conv weight (no grad wrt the input image) + fc input and weight
    assert counts.flops_backward == conv + 2 * fc
    real = _Tiny()
    xr = torch.randn(b, 3, 16, 16)
    with FlopCounterMode(display=False) as fc_mode:
        real(xr).float().pow(2).mean().backward()
    assert counts.flops_forward + counts.flops_backward == fc_mode.get_total_flops()
    # memory: the forward's live set holds at least the conv output; training saves more
    assert counts.peak_live_bytes >= b * 8 * 16 * 16 * 4
    assert counts.saved_bytes >= b * 8 * 16 * 16 * 4


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_sdxl_builds_on_meta_without_allocating():
    arch = get_arch("sdxl")
    unet = next(p for p in arch.parts if p.role == "unet")
    before = _rss()
    model = build_part(unet, torch.float16)
    grown = _rss() - before
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    n = sum(p.numel() for p in params)
    assert 2.5e9 < n < 2.7e9  # SDXL base UNet: 2.57 B parameters
    assert grown < 0.05 * n * 2  # far below the 5 GB of fp16 weights


def test_time_is_linear_in_steps():
    rs = [estimate("sd15", steps=s, device="rtx4090", cfg=True) for s in (10, 20, 30)]
    t = [r.seconds_per_image for r in rs]
    assert t[2] - t[1] == pytest.approx(t[1] - t[0], rel=1e-9)
    assert t[1] - t[0] == pytest.approx(10 * rs[0].seconds_per_step, rel=1e-9)
    tiny = [estimate("tiny", size=16, steps=s).seconds_per_image for s in (10, 40)]
    assert tiny[1] / tiny[0] == pytest.approx(4.0, rel=1e-9)  # pixel model: no VAE, no text


def test_flops_and_time_grow_about_quadratically_with_size():
    # large enough to be compute-bound (a tiny net on a GPU is launch-bound: flat in size)
    a = estimate("sd15", size=512, steps=10, batch=8, device="a100-80g")
    b = estimate("sd15", size=1024, steps=10, batch=8, device="a100-80g")
    # ~4x from convolutions, more from attention's (tokens^2 = size^4) part at 128^2 latents
    assert 4.0 < b.flops_per_image / a.flops_per_image < 6.5
    assert 3.5 < b.seconds_per_image / a.seconds_per_image < 7.0
    assert 2.5 < b.memory["activations"] / a.memory["activations"] < 4.5


def test_train_memory_breakdown():
    r = estimate("tiny", task="train", size=32, batch=4)
    n = r.parameters
    assert r.memory["optimizer"] == 8 * n and r.memory["gradients"] == 4 * n
    assert r.memory["ema"] == 4 * n and r.memory["master_weights"] == 0  # fp32 on CPU
    assert r.memory["activations"] > 0 and r.fits
    assert r.memory["total"] == pytest.approx(sum(v for k, v in r.memory.items() if k != "total"))


def test_slicing_materialises_scores_sdpa_does_not():
    sdpa = estimate("sd15", device="t4", cfg=True, attention="sdpa")
    sliced = estimate("sd15", device="t4", cfg=True, attention="slicing")
    assert sdpa.memory["attention"] == 0
    # the largest score slice: 4 heads x 4096 x 4096 tokens x 2 (scores, probs) x fp16
    assert sliced.memory["attention"] == 2 * 4 * 4096 * 4096 * 2
    assert sliced.seconds_per_image > sdpa.seconds_per_image


def test_verdict_and_largest_batch():
    r = estimate("sdxl", size=1024, batch=1, device="t4", cfg=True)
    assert r.fits  # ~7 GiB of fp16 weights + activations in 16 GB
    big = estimate("sdxl", size=1024, batch=r.max_batch + 1, device="t4", cfg=True)
    assert not big.fits
    assert r.max_size >= 1024 and r.max_size % 8 == 0


def test_quick_mode_maps_complexities_and_agrees_with_exact_mode():
    assert [COMPLEXITY[i][0] for i in range(1, 6)] == [
        "tiny",
        "small",
        "sd15",
        "sdxl",
        "sdxl-refiner",
    ]
    q = quick_estimate(resolution=512, steps=30, complexity=3, gpu_speed=1.0)
    e = estimate("sd15", size=512, steps=30, device="rtx4090", dtype="fp16", cfg=True)
    # the same architecture on the same device: equal to rounding (tolerance 0.1 %)
    assert q.seconds_per_image == pytest.approx(e.seconds_per_image, rel=1e-3)
    assert q.memory["total"] == pytest.approx(e.memory["total"], rel=1e-3)
    half = quick_estimate(resolution=512, steps=30, complexity=3, gpu_speed=2.0)
    assert half.seconds_per_image == pytest.approx(q.seconds_per_image / 2, rel=1e-6)
    q1 = quick_estimate(resolution=32, steps=30, complexity=1)
    assert "tiny" in q1.notes[0] and q1.parameters < 2e6


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: estimate("tiny", device="rtx9090"), "rtx4090"),
        (lambda: estimate("nosuchmodel"), "sd15"),
        (lambda: estimate("tiny", size=30), "multiple of 4"),
        (lambda: estimate("sd15", size=500, device="a100-80g"), "multiple of 8"),
        (lambda: estimate("tiny", task="finetune"), "generate"),
        (lambda: estimate("sd15", device="t4", dtype="bf16"), "fp16"),
        (lambda: quick_estimate(complexity=0), "got 0"),
        (lambda: quick_estimate(complexity=6), "got 6"),
        (lambda: quick_estimate(gpu_speed=0.0), "got 0.0"),
        (lambda: quick_estimate(gpu_speed=-1.5), "got -1.5"),
    ],
)
def test_bad_input_is_one_clear_line(call, needle):
    with pytest.raises(ImagesynthError) as err:
        call()
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_cli_estimate_table_and_json():
    runner = CliRunner()
    res = runner.invoke(app, ["estimate", "--model", "sd15", "--device", "rtx4090", "--cfg"])
    assert res.exit_code == 0, res.output
    assert "time per image" in res.output and "fits" in res.output
    res = runner.invoke(app, ["estimate", "--complexity", "4", "--resolution", "1024", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["model"] == "sdxl" and data["memory"]["total"] > 5 * 2**30


def test_cli_measure_runs_tiny_and_prints_both():
    runner = CliRunner()
    args = ["estimate", "--model", "tiny", "--size", "16", "--steps", "2", "--measure"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "predicted" in res.output and "measured" in res.output
    assert "s / image" in res.output and "peak MiB" in res.output


def test_calibrate_writes_a_profile():
    runner = CliRunner()
    res = runner.invoke(app, ["estimate", "--calibrate", "--quick-calibration"])
    assert res.exit_code == 0, res.output
    data = json.loads(profile_path().read_text())
    assert data["kind"] == "cpu" and data["measured"]["matmul_gflops"] > 0
    dev = get_device("cpu")
    assert dev.tflops["fp32"] > 0 and dev.bandwidth_gbs > 0
    assert "uncalibrated" not in estimate("tiny", size=16, steps=2).notes


def test_time_fit_recovers_known_costs_and_uses_them():
    """The CPU time model: terms from counts, NNLS fit in relative error, additive time."""
    from imagesynth.estimator.devices import _nnls_relative
    from imagesynth.estimator.predict import TIME_TERMS, kernels_time, time_terms

    rng = random.Random(0)
    truth = dict(zip(TIME_TERMS, (1e-11, 4e-10, 2e-11, 3e-11, 1e-10, 3e-5), strict=True))
    rows = [{k: rng.uniform(0.1, 1.0) * 0.01 / v for k, v in truth.items()} for _ in range(12)]
    secs = [sum(truth[k] * r[k] for k in TIME_TERMS) for r in rows]
    fit = _nnls_relative(rows, secs, TIME_TERMS, prior={})
    for k in TIME_TERMS:
        assert fit[k] == pytest.approx(truth[k], rel=1e-6)
    # a prior only breaks ties: one 3x off moves the fit towards it, a little
    fit = _nnls_relative(rows, secs, TIME_TERMS, prior={"op": 1e-5}, prior_weight=0.3)
    worst = max(
        abs(sum(fit[k] * r[k] for k in TIME_TERMS) / s - 1) for r, s in zip(rows, secs, strict=True)
    )
    assert worst < 0.1 and 1e-5 < fit["op"] < 3e-5

    counts = Counts(ops={"fwd": [[0, 2e9, 1e6], [1, 1e9, 1e5], [2, 5e8, 1e5], [3, 0.0, 4e6]]})
    terms = time_terms(counts, "fwd")
    assert terms == {
        "conv_flop": 2e9,
        "conv_byte": 1e6,
        "matmul_flop": 1e9,
        "attention_flop": 5e8,
        "memory_byte": 4e6 + 2e5,
        "op": 4,
    }
    dev = dataclasses.replace(get_device("rtx4090"), kind="cpu", cpu_time=truth)
    expected = sum(truth[k] * v for k, v in terms.items())
    assert kernels_time(counts, "fwd", dev, "fp32") == pytest.approx(expected)


def test_cached_estimate_is_fast_and_skips_diffusers(tmp_path):
    estimate("sd15", device="rtx4090", cfg=True)  # fills the disk cache
    code = (
        "import sys, time; t = time.perf_counter();"
        "from imagesynth.estimator import estimate;"
        "r = estimate('sd15', device='rtx4090', cfg=True);"
        "print(time.perf_counter() - t, 'diffusers' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    ).stdout.split()
    assert float(out[0]) < 2.0 and out[1:] == ["False", "False"]


def test_import_estimator_does_not_import_torch():
    code = "import sys, imagesynth.estimator; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_model_directory_is_estimated_from_its_saved_config(tmp_path):
    from diffusers import UNet2DModel

    from imagesynth.models.diffusion import (
        DiffusionOptions,
        save_diffusion_model,
        scheduler_config,
        unet_config,
    )
    from imagesynth.training.family import DataInfo

    opts = DiffusionOptions(preset="tiny")
    cfg = unet_config(opts, DataInfo("digits", 16, 1, 10))
    path = save_diffusion_model(
        tmp_path / "model", UNet2DModel(**cfg), scheduler_config(opts), {"unet": cfg}, {}
    )
    r = estimate(str(path), size=16, steps=4)
    assert r.size == 16 and r.parameters == sum(p.numel() for p in UNet2DModel(**cfg).parameters())
    assert r.flops_per_image > 0
    with pytest.raises(ImagesynthError, match="multiple of 4"):
        estimate(str(path), size=18)


def test_diffusers_pipeline_folder_matches_the_named_architecture(tmp_path):
    from imagesynth.estimator.arch import SD15_UNET, SD_VAE

    def write(sub, cls, cfg):
        (tmp_path / sub).mkdir()
        body = {
            "_class_name": cls,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        }
        (tmp_path / sub / "config.json").write_text(json.dumps(body))

    write("unet", "UNet2DConditionModel", SD15_UNET)
    write("vae", "AutoencoderKL", SD_VAE)
    write("text_encoder", "CLIPTextModel", {"hidden_size": 768, "num_hidden_layers": 12})
    folder = estimate(str(tmp_path), device="rtx4090", cfg=True)
    named = estimate("sd15", device="rtx4090", cfg=True)
    assert folder.size == 512 and folder.parameters == named.parameters
    assert folder.seconds_per_image == pytest.approx(named.seconds_per_image, rel=1e-6)


def test_memory_probe_child_reports_its_peak(capsys):
    from imagesynth.estimator.devices import _memory_probe_main

    _memory_probe_main(json.dumps(["generate", 16, 2]))
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["peak_bytes"] > 0 and out["seconds_per_image"] > 0


def test_peak_rss_reads_a_peak_freed_before_the_window_closes(monkeypatch):
    """The kernel's high-water mark, reset at entry: a short-lived 64 MiB buffer counts even
    though it is gone when the window closes; without /proc/self/clear_refs, a thread samples."""
    import torch

    from imagesynth.estimator import predict

    for allowed in (True, False):
        if not allowed:
            monkeypatch.setattr(predict, "_reset_hwm", lambda: False)
        with predict.PeakRSS(interval=0.001) as rss:
            x = torch.ones(16 * 2**20)  # 64 MiB, every page written
            time.sleep(0.02)
            del x
        assert rss.delta >= 60 * 2**20, (allowed, rss.delta)
        assert (rss._thread is None) == (allowed and predict._hwm_bytes() > 0)


def test_memory_fit_recovers_a_known_overhead_line(monkeypatch):
    """calibrate's fit: residual RSS = c + a x activations per task, from fresh-process probes."""
    import dataclasses

    from imagesynth.estimator import devices
    from imagesynth.estimator.arch import _pixel
    from imagesynth.estimator.predict import estimate as est

    base = devices.load_cpu_profile()
    bare = dataclasses.replace(base, runtime_overhead_bytes=0.0, allocator_overhead=0.0)
    arch = _pixel("memory-probe", dict(devices._MEMORY_PROBE_UNET), "probe")
    true = {"generate": (20e6, 1.3), "train": (30e6, 0.5)}

    family = {"generate": 12e6, "train": 18e6}  # the conv stack's runtime term

    def fake_peaks(runs, tick=None, between=None):
        peaks = []
        for i, (task, size, batch, *net) in enumerate(runs):
            noise = 5e6 if i % 2 else -5e6  # the two runs of a probe straddle the line
            if net:
                counted = devices._probe_net_memory(net[0], task, size, batch)
                act = counted["activations"]
                peaks.append(sum(counted.values()) + family[task] + true[task][1] * act + noise)
                continue
            rep = est(arch, task=task, size=size, steps=2, batch=batch, device=bare)
            c, a = true[task]
            peaks.append(rep.memory["total"] + c + a * rep.memory["activations"] + noise)
        return peaks

    assert devices._MEMORY_RUNS == 2
    monkeypatch.setattr(devices, "_probe_peaks", fake_peaks)
    fit = devices._fit_memory(base)
    for task, (c, a) in true.items():
        assert fit[f"{task}_allocator_overhead"] == pytest.approx(a, rel=1e-6)
        assert fit[f"{task}_runtime_overhead_bytes"] == pytest.approx(c, rel=1e-6)
        assert fit[f"family_{task}_runtime_overhead_bytes"] == pytest.approx(family[task])
    # and estimate() applies the training line to training, the other to generating
    dev = dataclasses.replace(
        base,
        runtime_overhead_bytes=fit["generate_runtime_overhead_bytes"],
        allocator_overhead=fit["generate_allocator_overhead"],
        train_runtime_overhead_bytes=fit["train_runtime_overhead_bytes"],
        train_allocator_overhead=fit["train_allocator_overhead"],
    )
    gen = est("tiny", size=32, steps=2, batch=4, device=dev).memory
    train = est("tiny", task="train", size=32, batch=4, device=dev).memory
    assert gen["runtime"] == pytest.approx(20e6) and train["runtime"] == pytest.approx(30e6)
    # the families take their own runtime term where the profile has one
    fam_dev = dataclasses.replace(
        dev,
        family_runtime_overhead_bytes=fit["family_generate_runtime_overhead_bytes"],
        family_train_runtime_overhead_bytes=fit["family_train_runtime_overhead_bytes"],
    )
    gan = est("gan:dcgan-tiny", size=16, batch=8, device=fam_dev).memory
    gan_train = est("gan:dcgan-tiny", task="train", size=16, batch=8, device=fam_dev).memory
    assert gan["runtime"] == pytest.approx(12e6) and gan_train["runtime"] == pytest.approx(18e6)
    assert est("tiny", size=32, batch=4, device=fam_dev).memory["runtime"] == pytest.approx(20e6)
    assert gen["allocator"] == pytest.approx(1.3 * (gen["activations"] + gen["attention"]))
    assert train["allocator"] == pytest.approx(0.5 * train["activations"])


def test_latent_diffusion_model_dir_is_estimated_with_its_named_text_encoder():
    """Our latent-diffusion layout (unet/, vae/, MiniLM named in model_index.json)."""
    import math

    from safetensors import safe_open

    from imagesynth.bundled import bundled_model_path

    path = bundled_model_path()
    stored = 0
    for f in path.glob("*/*.safetensors"):
        with safe_open(str(f), "pt") as st:
            stored += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())  # noqa: SIM118
    minilm = 22_713_216  # all-MiniLM-L6-v2 without its pooler
    rep = estimate(str(path), size=32, steps=20, cfg=True, device="cpu")
    assert rep.parameters == pytest.approx(stored + minilm, rel=0.02)
    assert set(rep.time_breakdown) >= {"unet", "text_encoder", "vae_decoder"}
    with pytest.raises(ImagesynthError, match="multiple of 4"):
        estimate(str(path), size=30, steps=20)


def test_server_hosts_bound_batch_one_not_large_batches():
    import dataclasses

    from imagesynth.estimator.devices import GPUS, HOST_LAUNCH_US

    server = GPUS["a100-80g"]
    desktop = dataclasses.replace(server, launch_us=HOST_LAUNCH_US["desktop"])
    kw = dict(size=512, steps=10, device=server, cfg=True)
    b1 = estimate("sd15", batch=1, **kw).seconds_per_step
    b1_desk = estimate("sd15", batch=1, **{**kw, "device": desktop}).seconds_per_step
    b16 = estimate("sd15", batch=16, **kw).seconds_per_step
    b16_desk = estimate("sd15", batch=16, **{**kw, "device": desktop}).seconds_per_step
    assert b1 > 1.5 * b1_desk  # batch 1: the host's per-op cost sets the pace
    assert b16 == pytest.approx(b16_desk, rel=0.02)  # batch 16: the GPU does
