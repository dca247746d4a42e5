"""Estimator accuracy: predicted against measured time and peak memory on this machine.

The grid: pixel diffusion's `tiny` and `small` presets at 16-64 px, generating (DDIM, 10
steps) and training (AdamW + EMA, one step), at several batch sizes; then a GAN, a VAE, a
PixelCNN (one network call per pixel), a VQ-VAE and the x2 upscaler. The CPU is
calibrated first (`imagesynth estimate --calibrate`); each workload then runs in a fresh
process (so its resident-memory growth is its own), timed after a warm-up, median of
repeats; its peak memory is the median of three fresh processes (one growth varies by up to
a third between runs at the larger workloads: glibc's heap fragments differently).
This VM's speed drifts (up to 2x over minutes, other tenants), so each workload's process
also times the calibration's 48-channel UNet probe, and a second time count sets each
measured time at the speed the VM had while calibrating. Targets (issue 7): time within
+-25 % and peak memory within +-15 % for at least 10 of 12 workloads. A second table sets
the predictions for SD 1.5 (512 px, fp16, CFG) beside the it/s diffusers published for
torch 2.0 without compile (docs/source/en/optimization/torch2.0.mdx); batch 4 of each
card fitted its compute efficiency and A100 batch 1 the server hosts' per-op cost
(`FITTED`), the rest are held out.

    python bench/estimator_accuracy.py             # calibrate, measure, both tables
    python bench/estimator_accuracy.py --gpu-only  # the SD 1.5 table alone, no writes
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import command_line, write_result

# (preset, task, size, batch, cfg)
GRID = [
    ("tiny", "generate", 16, 1, False),
    ("tiny", "generate", 32, 1, False),
    ("tiny", "generate", 32, 8, False),
    ("tiny", "generate", 64, 4, False),
    ("tiny", "generate", 32, 4, True),
    ("small", "generate", 16, 1, False),
    ("small", "generate", 32, 4, False),
    ("small", "generate", 64, 1, False),
    ("tiny", "train", 16, 32, False),
    ("tiny", "train", 32, 16, False),
    ("tiny", "train", 64, 8, False),
    ("small", "train", 16, 16, False),
    ("small", "train", 32, 8, False),
    ("small", "train", 64, 4, False),
    # the other families, counted by running their own loops on meta (estimator/families.py)
    ("gan:dcgan-tiny", "train", 16, 64, False),
    ("gan:resnet-tiny", "generate", 32, 64, False),
    ("vae:tiny", "train", 32, 32, False),
    ("pixelcnn", "generate", 16, 4, False),
    ("vqvae", "train", 32, 16, False),
    ("upscaler:tiny", "generate", 128, 1, False),
]
# it/s of SD 1.5 txt2img, fp16, 512 px, CFG, torch 2.0 without compile (diffusers docs,
# docs/source/en/optimization/torch2.0.mdx; T4 batch 16 is given there as 2.34 s per it)
PUBLISHED = {
    ("rtx4090", 1): 40.5,
    ("rtx4090", 4): 12.62,
    ("rtx4090", 16): 3.17,
    ("a100-80g", 1): 21.66,
    ("a100-80g", 4): 11.6,
    ("a100-80g", 16): 3.04,
    ("rtx3090", 1): 22.56,
    ("rtx3090", 4): 6.46,
    ("rtx3090", 16): 1.7,
    ("v100", 1): 18.99,
    ("v100", 4): 5.96,
    ("v100", 16): 1.66,
    ("t4", 1): 6.9,
    ("t4", 4): 1.79,
    ("t4", 16): 1 / 2.34,
}
# what each published figure was used for: batch 4 fits each card's compute efficiency,
# A100 batch 1 the server hosts' per-op cost (devices.HOST_LAUNCH_US); the rest are held out
FITTED = {(gpu, 4) for gpu in ("rtx4090", "a100-80g", "rtx3090", "v100", "t4")} | {("a100-80g", 1)}
STEPS = 10
MEMORY_RUNS = 3  # fresh processes per workload; measured memory is their median


def measure_one(spec: str, memory_only: bool = False) -> None:
    """Child process: run one workload and print its measured figures as JSON
    (`memory_only`: one short repeat, for its resident-memory peak alone)."""
    import torch

    from imagesynth.estimator.predict import measure

    preset, task, size, batch, cfg = json.loads(spec)
    torch.manual_seed(0)
    repeats = 1 if memory_only else 3 if task == "generate" else 8
    steps = 2 if memory_only else STEPS
    out = measure(preset, task=task, size=size, steps=steps, batch=batch, cfg=cfg, repeats=repeats)
    if not memory_only:
        out["reference_ms"] = reference_ms()
    print(json.dumps(out))


def reference_ms() -> float:
    """Milliseconds of the calibration's 48-channel UNet probe (generating, 32 px, batch 4)
    now: beside the same figure from calibration, how fast this shared VM runs at the moment."""
    import statistics
    import time

    import torch

    from imagesynth.estimator.devices import _probe_net, _probe_step

    step = _probe_step(*_probe_net("probe-unet", 32, 4, torch.device("cpu")), False)
    runs = []
    step()
    for _ in range(7):
        step()  # a warm call before each timing, as calibration times it
        t = time.perf_counter()
        step()
        runs.append(time.perf_counter() - t)
    return 1e3 * statistics.median(runs)


def run_children(spec: str) -> tuple[dict, list[float]]:
    """Measured figures of one workload, and its peaks from `MEMORY_RUNS` fresh processes.

    The first run (alone on the machine) gives the time; the other processes run two at a
    time, for memory only. A process's resident growth varies from run to run (glibc's heap
    fragments differently, by tens of MB at the largest workloads), so memory is their median.
    """
    from imagesynth.estimator.devices import run_json_processes

    cmd = [sys.executable, __file__, "--one", spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    meas = json.loads(proc.stdout.strip().splitlines()[-1])
    memory_cmds = [[*cmd, "--memory-only"]] * (MEMORY_RUNS - 1)
    rest = run_json_processes(memory_cmds, f"memory run of {spec}")
    return meas, [meas["peak_bytes"]] + [r["peak_bytes"] for r in rest]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-calibrate", action="store_true", help="use the stored CPU profile")
    ap.add_argument("--gpu-only", action="store_true", help="only the SD 1.5 table (no writes)")
    args = ap.parse_args()
    if args.one:
        measure_one(args.one, args.memory_only)
        return
    if args.gpu_only:
        gpu_table({})
        return

    from imagesynth.estimator import calibrate, estimate, get_device

    dev = get_device("cpu") if args.no_calibrate else calibrate()
    print(f"device: {dev.description}; measured {dev.measured}")
    ref_cal = dev.measured["probe_unet-48ch_generate_32_b4_ms"]
    rows = []
    header = (
        f"{'workload':<28} {'pred s/img':>10} {'meas s/img':>10} {'ratio':>6} "
        f"{'pred MiB':>9} {'meas MiB':>9} {'ratio':>6} {'runs MiB':>13} {'VM speed':>8}"
    )
    print(header)
    for preset, task, size, batch, cfg in GRID:
        name = f"{preset}_{task}_{size}px_b{batch}" + ("_cfg" if cfg else "")
        spec = json.dumps([preset, task, size, batch, cfg])
        meas, peaks = run_children(spec)
        meas["peak_bytes"] = statistics.median(peaks)
        meas["peak_range"] = (min(peaks), max(peaks))
        rep = estimate(preset, task=task, size=size, steps=STEPS, batch=batch, cfg=cfg)
        t_ratio = rep.seconds_per_image / meas["seconds_per_image"]
        m_ratio = rep.memory["total"] / max(meas["peak_bytes"], 1.0)
        meas["speed"] = ref_cal / meas["reference_ms"]  # > 1: the VM runs faster than it did
        rows.append((name, rep, meas, t_ratio, m_ratio))
        print(
            f"{name:<28} {rep.seconds_per_image:>10.4g} {meas['seconds_per_image']:>10.4g} "
            f"{t_ratio:>6.2f} {rep.memory['total'] / 2**20:>9.1f} "
            f"{meas['peak_bytes'] / 2**20:>9.1f} {m_ratio:>6.2f} "
            f"{meas['peak_range'][0] / 2**20:>6.1f}-{meas['peak_range'][1] / 2**20:<6.1f} "
            f"{meas['speed']:>8.2f}"
        )
    time_ok = sum(abs(r[3] - 1) <= 0.25 for r in rows)
    mem_ok = sum(abs(r[4] - 1) <= 0.15 for r in rows)
    # the same with each measured time scaled to the VM's speed at calibration (the
    # reference probe timed beside each workload): what remains is the model's error
    adjusted = [r[3] / r[2]["speed"] for r in rows]
    adj_ok = sum(abs(a - 1) <= 0.25 for a in adjusted)
    speeds = [r[2]["speed"] for r in rows]
    print(f"time within 25 %: {time_ok} of {len(rows)}; memory within 15 %: {mem_ok}")
    print(
        f"VM speed beside each workload vs at calibration: {min(speeds):.2f}-{max(speeds):.2f}x;"
        f" time within 25 % at calibration speed: {adj_ok} of {len(rows)}"
    )
    figures: dict[str, float | int | str] = {
        "estimator_time_within_25pct_count": time_ok,
        "estimator_time_within_25pct_at_calibration_speed_count": adj_ok,
        "estimator_memory_within_15pct_count": mem_ok,
        "estimator_workloads": len(rows),
        "cpu_matmul_gflops": dev.measured.get("matmul_gflops", 0.0),
        "cpu_conv_gflops": dev.measured.get("conv_gflops", 0.0),
        "cpu_bandwidth_gbs": dev.measured.get("bandwidth_gbs", 0.0),
        "cpu_time_probe_fit_worst_ratio": dev.measured.get("time_fit_worst_ratio", 0.0),
        **{f"cpu_time_cost_{k}": v for k, v in dev.cpu_time.items()},
    }
    for name, rep, meas, t_ratio, m_ratio in rows:
        figures[f"{name}_predicted_s_per_image"] = rep.seconds_per_image
        figures[f"{name}_measured_s_per_image"] = meas["seconds_per_image"]
        figures[f"{name}_time_ratio"] = t_ratio
        figures[f"{name}_vm_speed_vs_calibration"] = meas["speed"]
        figures[f"{name}_time_ratio_at_calibration_speed"] = t_ratio / meas["speed"]
        figures[f"{name}_predicted_peak_mib"] = rep.memory["total"] / 2**20
        figures[f"{name}_measured_peak_mib"] = meas["peak_bytes"] / 2**20
        figures[f"{name}_measured_peak_min_mib"] = meas["peak_range"][0] / 2**20
        figures[f"{name}_measured_peak_max_mib"] = meas["peak_range"][1] / 2**20
        figures[f"{name}_memory_ratio"] = m_ratio
    gpu_table(figures)
    first_estimates(figures)
    write_result("estimator_accuracy", figures, command_line())


def first_estimates(figures: dict) -> None:
    """Wall time of a whole `imagesynth estimate` command with an empty count cache."""
    import os
    import shutil
    import tempfile
    import time

    print(f"\n{'first estimate (empty cache)':<44} {'seconds':>8}")
    for args in (
        ["--model", "sd15", "--size", "512", "--cfg", "--device", "rtx4090"],
        ["--model", "sdxl", "--size", "1024", "--batch", "4", "--device", "a100-80g"],
        ["--model", "tiny", "--size", "32", "--batch", "8"],
        ["--model", "gan:dcgan-small", "--task", "train", "--batch", "64"],
        ["--model", "pixelcnn"],
        ["--model", "sd15", "--size", "520"],  # not a multiple of 64: counted on meta
    ):
        cache = tempfile.mkdtemp()
        env = {**os.environ, "IMAGESYNTH_CACHE": cache}
        t = time.perf_counter()
        exe = shutil.which("imagesynth") or "imagesynth"
        subprocess.run([exe, "estimate", *args], env=env, capture_output=True, check=True)
        secs = time.perf_counter() - t
        shutil.rmtree(cache, ignore_errors=True)
        label = " ".join(a for a in args if not a.startswith("--"))
        print(f"{label:<44} {secs:>8.2f}")
        figures[f"first_estimate_s_{label.replace(' ', '_').replace(':', '_')}"] = secs


def gpu_table(figures: dict) -> None:
    """SD 1.5 predictions beside diffusers' published it/s (no measurement: runs anywhere)."""
    from imagesynth.estimator import estimate

    head = f"{'SD 1.5 512 px fp16 CFG':<24} {'predicted it/s':>14} {'published':>10} {'ratio':>6}"
    print("\n" + head + "  role")
    held = []
    for (gpu, batch), published in PUBLISHED.items():
        rep = estimate("sd15", size=512, steps=50, batch=batch, device=gpu, cfg=True)
        its = 1.0 / rep.seconds_per_step
        role = "fitted" if (gpu, batch) in FITTED else "held out"
        print(
            f"{gpu + ' batch ' + str(batch):<24} {its:>14.2f} {published:>10.2f} "
            f"{its / published:>6.2f}  {role}"
        )
        key = f"sd15_{gpu.replace('-', '_')}_b{batch}"
        figures[f"{key}_predicted_it_s"] = its
        figures[f"{key}_published_it_s"] = published
        if role == "held out":
            held.append(its / published)
    ok = sum(abs(r - 1) <= 0.35 for r in held)
    print(f"held out within +-35 %: {ok} of {len(held)}")
    figures["sd15_gpu_held_out_within_35pct_count"] = ok
    figures["sd15_gpu_held_out_count"] = len(held)


if __name__ == "__main__":
    main()
