"""Devices the estimator knows: vendors' data-sheet figures for GPUs, a measured CPU profile.

Peak figures are dense (no structured sparsity) tensor-core throughput for fp16 / bf16 with
fp32 accumulation, and the plain (non-tensor-core) fp32 rate, since PyTorch does not use TF32
for matmuls by default. `None` means the GPU has no fast path for that dtype (T4 / V100 bf16).
Sources: NVIDIA's data sheets and architecture whitepapers (Ada: RTX 4090, L4; Ampere:
RTX 3090, A100, A10; Hopper: H100 SXM; Turing: T4; Volta: V100 SXM2). "a10g" (AWS) uses
the A10 data sheet: NVIDIA publishes no separate A10G sheet.

The local CPU has no data sheet: `calibrate()` measures it (matmul and convolution throughput
with a per-op latency fitted from several sizes, memory bandwidth, per-op and per-module
overheads), then fits the CPU time model's cost per conv FLOP, conv byte, matmul FLOP,
attention FLOP, elementwise byte and kernel on probe workloads that are none of the
presets (`_TIME_PROBES`), and the resident memory beyond tensors on probe runs in fresh
processes. The profile is stored as JSON under the cache directory (`~/.cache/imagesynth`,
or `$IMAGESYNTH_CACHE`) as `device-<hostname>.json`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ImagesynthError, unknown_name

GIB = 1024**3
DTYPES = ("fp32", "fp16", "bf16")


@dataclass
class Device:
    """Throughput and memory of one device, as the time model reads them."""

    name: str
    kind: str  # "gpu" | "cpu"
    tflops: dict[str, float | None]  # dtype -> peak dense TFLOP/s (matmul / conv units)
    memory_gib: float
    bandwidth_gbs: float  # memory bandwidth, GB/s
    description: str = ""
    # efficiency of layer types at large sizes (fraction of peak); the size dependence is
    # eff(f) = eff_max * f / (f + peak * op_latency_s), i.e. a fixed latency per kernel
    efficiency: dict[str, float] = field(
        default_factory=lambda: {"conv": 0.55, "matmul": 0.65, "attention": 0.45, "memory": 0.75}
    )
    op_latency_us: float = 4.0  # device-side time of an empty kernel
    launch_us: float = 9.0  # host-side cost of one eager op (floor of a step at batch 1)
    module_us: float = 0.0  # Python cost of one nn.Module call (CPU profiles measure it)
    train_launch_us: float | None = None  # per op with autograd recording (None: launch_us)
    runtime_overhead_bytes: float = 0.0  # CUDA context / oneDNN caches etc. not in tensors
    allocator_overhead: float = 0.10  # caching allocator's fragmentation on top of tensors
    # training's own figures where calibrated (autograd, optimizer kernels); None = as above
    train_runtime_overhead_bytes: float | None = None
    train_allocator_overhead: float | None = None
    # the non-diffusion families' runtime term where calibrated (None = as above): plain
    # conv / norm / activation networks page in far fewer kernels than a diffusers UNet
    family_runtime_overhead_bytes: float | None = None
    family_train_runtime_overhead_bytes: float | None = None
    measured: dict[str, float] = field(default_factory=dict)  # calibration raw figures
    # CPU profiles: seconds per unit of each term of `predict.time_terms` (conv FLOP, conv
    # byte, matmul FLOP, attention FLOP, elementwise byte, op), fitted on probe workloads;
    # empty = the roofline model above (data-sheet GPUs, an uncalibrated CPU)
    cpu_time: dict[str, float] = field(default_factory=dict)

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for a dtype; an error names the dtypes this device runs fast."""
        value = self.tflops.get(dtype)
        if not value:
            ok = [d for d in DTYPES if self.tflops.get(d)]
            raise ImagesynthError(
                f"device {self.name!r} has no fast {dtype} path; use one of: {', '.join(ok)}"
            )
        return value * 1e12

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gpu(
    name: str,
    fp16: float,
    bf16: float | None,
    fp32: float,
    mem: float,
    bw: float,
    description: str,
    fit: float = 1.0,
    host: str = "server",
) -> Device:
    eff = {"conv": 0.55 * fit, "matmul": 0.65 * fit, "attention": 0.45 * fit, "memory": 0.75}
    return Device(
        name,
        "gpu",
        {"fp32": fp32, "fp16": fp16, "bf16": bf16},
        mem,
        bw,
        description,
        efficiency=eff,
        op_latency_us=12.0,
        launch_us=HOST_LAUNCH_US[host],
        module_us=0.0,
        runtime_overhead_bytes=0.4 * GIB,  # CUDA context + cuDNN / cuBLAS workspaces
    )


# Host-side cost of one eager op (dispatch, Python in the model's forward, the CUDA launch),
# which bounds a step from below when the GPU is fast and the batch small. It belongs to the
# machine around the card: consumer cards sit in desktops with fast single-thread CPUs;
# data-centre cards in servers. "server" is calibrated on the one host-bound figure of
# diffusers' table: A100, SD 1.5, batch 1, eager (21.66 it/s), which the same table's
# CUDA-graph column (torch.compile "reduce-overhead", no host launches: 44.03 it/s) shows to
# be host-bound; V100 batch 1 (server, device-bound) checks it is not too large.
HOST_LAUNCH_US = {"desktop": 9.0, "server": 38.0}


# name -> data-sheet figures: dense fp16 / bf16 tensor TFLOP/s (fp32 accumulate), fp32
# TFLOP/s, memory GiB (as sold, GB), bandwidth GB/s; `fit` scales the default compute
# efficiencies so that SD 1.5 txt2img (512 px, fp16, CFG, batch 4) matches the it/s that
# diffusers' "Accelerated PyTorch 2.0" page reports for torch 2.0 without compile
# (docs/source/en/optimization/torch2.0.mdx); GPUs without a published figure keep 1.0
# (not validated).
GPUS: dict[str, Device] = {
    d.name: d
    for d in (
        _gpu(
            "rtx4090",
            165.2,
            165.2,
            82.6,
            24,
            1008,
            "NVIDIA GeForce RTX 4090 (Ada)",
            1.285,
            "desktop",
        ),
        _gpu(
            "rtx3090",
            71.0,
            71.0,
            35.6,
            24,
            936,
            "NVIDIA GeForce RTX 3090 (Ampere)",
            1.268,
            "desktop",
        ),
        _gpu("a100-40g", 312.0, 312.0, 19.5, 40, 1555, "NVIDIA A100 40GB SXM", 0.515),
        _gpu("a100-80g", 312.0, 312.0, 19.5, 80, 2039, "NVIDIA A100 80GB SXM", 0.515),
        _gpu("h100", 989.4, 989.4, 66.9, 80, 3350, "NVIDIA H100 SXM5 80GB (not validated)"),
        _gpu("l4", 121.0, 121.0, 30.3, 24, 300, "NVIDIA L4 (not validated)"),
        _gpu("t4", 65.0, None, 8.1, 16, 320, "NVIDIA T4 (no bf16)", 0.364),
        _gpu(
            "a10g", 125.0, 125.0, 31.2, 24, 600, "NVIDIA A10 data sheet (AWS A10G; not validated)"
        ),
        _gpu("v100", 125.0, None, 15.7, 32, 900, "NVIDIA V100 SXM2 32GB (no bf16)", 0.658),
    )
}
REFERENCE_GPU = "rtx4090"  # quick mode's --gpu-speed 1.0


def cache_dir() -> Path:
    """Where profiles and FLOP-count caches live: $IMAGESYNTH_CACHE or ~/.cache/imagesynth."""
    env = os.environ.get("IMAGESYNTH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imagesynth"


def profile_path() -> Path:
    return cache_dir() / f"device-{socket.gethostname()}.json"


def device_names() -> list[str]:
    return [*GPUS, "cpu"]


def get_device(name: str) -> Device:
    """A device by name: a GPU from the table, or "cpu" (the calibrated local CPU)."""
    key = name.lower().strip()
    if key in GPUS:
        return GPUS[key]
    if key == "cpu":
        return load_cpu_profile()
    raise unknown_name("device", name, device_names())


def load_cpu_profile() -> Device:
    """The stored profile of this machine's CPU, or a rough default (run `--calibrate`)."""
    path = profile_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return Device(**data)
        except (ValueError, TypeError) as exc:
            raise ImagesynthError(
                f"device profile {path} is unreadable ({exc}); run `imagesynth estimate "
                "--calibrate` again"
            ) from None
    return _default_cpu()


def _default_cpu() -> Device:
    from ..env import memory_info

    total = memory_info()["total_bytes"] or 8 * GIB
    cores = os.cpu_count() or 1
    return Device(
        "cpu",
        "cpu",
        {"fp32": 0.05 * cores, "fp16": 0.005 * cores, "bf16": 0.005 * cores},
        total / GIB,
        10.0,
        f"uncalibrated {cores}-core CPU (run `imagesynth estimate --calibrate`)",
        efficiency={"conv": 1.0, "matmul": 1.0, "attention": 0.5, "memory": 1.0},
        op_latency_us=20.0,
        launch_us=6.0,
        module_us=8.0,
        runtime_overhead_bytes=60e6,
        allocator_overhead=0.0,
    )


def _fit_latency(points: list[tuple[float, float]]) -> tuple[float, float]:
    """t = x / rate + t0 over (x, seconds) points, sorted by x; returns (rate, t0 >= 0).

    The rate comes from the largest point's increment over the smallest (robust to noise
    that can make a least-squares slope negative), t0 from the smallest point.
    """
    pts = sorted(points)
    (x0, t0), (x1, t1) = pts[0], pts[-1]
    rate = (x1 - x0) / (t1 - t0) if t1 > t0 else x1 / t1
    return rate, max(t0 - x0 / rate, 0.0)


def _time(fn: Any, reps: int) -> float:
    """Median-of-3 seconds per call of fn, after one warm-up call."""
    fn()
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        runs.append((time.perf_counter() - t) / reps)
    return sorted(runs)[1]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


# a minimal diffusers UNet (not one of the presets) whose run time at 8 px is almost all
# dispatch: it calibrates the host cost per op of diffusers-style eager code
_OVERHEAD_UNET = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [8, 8],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}


# the time probes' UNet: unlike the presets (48 channels, attention at the lowest level)
_TIME_PROBE_UNET = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [24, 48, 48],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}
# the memory probes' UNet: unlike the presets (other widths and depth) but built as real models are:
# channels in multiples of 16 (oneDNN's blocked layouts, whose reorders and scratch buffers
# make much of the resident memory beyond the tensors) and attention at the middle level,
# as in DDPM; the fitted overheads are not fitted on the benchmark's workloads
_MEMORY_PROBE_UNET = {
    **_TIME_PROBE_UNET,
    "block_out_channels": [16, 48, 96],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
# (task, size, batch). Generating has three activation sizes: its resident growth is noisy
# (glibc's heap fragments differently from run to run, by tens of MB at the largest size),
# so each probe runs `_MEMORY_RUNS` times and the line is a least-squares fit through all
_MEMORY_PROBES = (
    ("generate", 32, 2),
    ("generate", 48, 4),
    ("generate", 64, 8),
    ("train", 16, 4),
    ("train", 32, 16),
)
_MEMORY_RUNS = 2
# (task, size, batch, network): the families' runtime term, from the GAN-like conv stack of
# the time probes (strided and transposed convolutions, batch norm), at small activations
_FAMILY_MEMORY_PROBES = (("generate", 32, 8, "conv-stack"), ("train", 32, 8, "conv-stack"))


def _memory_probe_main(spec: str) -> None:
    """Child process of `calibrate`: run one probe workload, print its figures as JSON."""
    from .arch import _pixel
    from .predict import measure

    task, size, batch, *net = json.loads(spec)
    if net:
        print(json.dumps({"peak_bytes": _measure_probe_net(net[0], task, size, batch)}))
        return
    arch = _pixel("memory-probe", dict(_MEMORY_PROBE_UNET), "calibration probe")
    print(json.dumps(measure(arch, task=task, size=size, steps=2, batch=batch, repeats=1)))


def _measure_probe_net(kind: str, task: str, size: int, batch: int) -> float:
    """Resident growth of two generating calls or two AdamW training steps of a time probe
    network (built as `families.measure_family` builds its models: imports outside)."""
    import gc

    import torch

    from .predict import PeakRSS

    cpu = torch.device("cpu")
    _probe_net(kind, size, batch, cpu)  # imports outside the measurement
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])  # (imports torch._dynamo)
    gc.collect()
    with PeakRSS() as rss:
        torch.manual_seed(0)
        net, kwargs = _probe_net(kind, size, batch, cpu)
        if task == "generate":
            with torch.no_grad():
                for _ in range(2):
                    net(**kwargs)
        else:
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, foreach=True)
            for _ in range(2):
                loss = net(**kwargs).float().pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return float(rss.delta)


def run_json_processes(
    cmds: list[list[str]], what: str, tick: Any = None, between: Any = None
) -> list[dict[str, Any]]:
    """The JSON each command prints last, running them two at a time (each in a fresh
    process: resident memory is per process). `tick` after each, `between` after each pair."""
    import subprocess

    results: list[dict[str, Any]] = []
    for i in range(0, len(cmds), 2):
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for cmd in cmds[i : i + 2]
        ]
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise ImagesynthError(f"{what} failed: " + (err.strip().splitlines() or ["?"])[-1])
            results.append(json.loads(out.strip().splitlines()[-1]))
            if tick is not None:
                tick()
        if between is not None:
            between()
    return results


def _probe_peaks(runs: list[tuple[Any, ...]], tick: Any = None, between: Any = None) -> list[float]:
    """Resident-memory growth of each probe workload, each in a fresh process."""
    import sys

    code = (
        "import sys; from imagesynth.estimator.devices import _memory_probe_main as m; "
        "m(sys.argv[1])"
    )
    cmds = [[sys.executable, "-c", code, json.dumps(list(probe))] for probe in runs]
    # between pairs: the time probes' next round, on an idle machine
    out = run_json_processes(cmds, "memory calibration probe", tick, between)
    return [float(r["peak_bytes"]) for r in out]


def _fit_memory(base: Device, tick: Any = None, between: Any = None) -> dict[str, float]:
    """Resident memory beyond the counted tensors, as c + a x activations per task.

    Each probe runs in a fresh process (its RSS growth is its own); the counted tensors come
    from `estimate` with zero overheads. What the line absorbs on a CPU: oneDNN's blocked
    copies of activations and scratchpads, malloc's arenas, code and kernels paged in.
    """
    import dataclasses

    from .arch import _pixel
    from .predict import estimate

    bare = dataclasses.replace(
        base,
        runtime_overhead_bytes=0.0,
        allocator_overhead=0.0,
        train_runtime_overhead_bytes=None,
        train_allocator_overhead=None,
    )
    arch = _pixel("memory-probe", dict(_MEMORY_PROBE_UNET), "calibration probe")
    runs = [probe for probe in _MEMORY_PROBES for _ in range(_MEMORY_RUNS)]
    peaks = _probe_peaks(runs, tick, between)
    points: dict[str, list[tuple[float, float]]] = {"generate": [], "train": []}
    for (task, size, batch), peak in zip(runs, peaks, strict=True):
        rep = estimate(arch, task=task, size=size, steps=2, batch=batch, device=bare)
        act = rep.memory["activations"] + rep.memory.get("attention", 0.0)
        points[task].append((act, peak - rep.memory["total"]))
    out = {}
    for task, pts in points.items():
        slope, intercept = _line(pts)
        out[f"{task}_allocator_overhead"] = slope
        out[f"{task}_runtime_overhead_bytes"] = intercept
    # the families' runtime term: the conv stack's resident growth beyond its counted
    # tensors and the task's allocator line, averaged over its runs
    net_runs = [probe for probe in _FAMILY_MEMORY_PROBES for _ in range(_MEMORY_RUNS)]
    net_peaks = _probe_peaks(net_runs, tick, between)
    for (task, size, batch, kind), peak in zip(net_runs, net_peaks, strict=True):
        counted = _probe_net_memory(kind, task, size, batch)
        act = counted["activations"]
        rest = peak - sum(counted.values()) - out[f"{task}_allocator_overhead"] * act
        key = f"family_{task}_runtime_overhead_bytes"
        out[key] = out.get(key, 0.0) + max(rest, 0.0) / _MEMORY_RUNS
    return out


def _probe_net_memory(kind: str, task: str, size: int, batch: int) -> dict[str, float]:
    """The counted tensors of `_measure_probe_net`'s workload (as a family model's)."""
    import torch

    from .count import count_call
    from .predict import family_memory

    net, kwargs = _probe_net(kind, size, batch, torch.device("meta"))
    n = sum(p.numel() for p in net.parameters())
    counts = count_call(net, kwargs, train=task == "train")
    params = {"held": n, "trained": n, "ema": 0, "phases": 1}
    return family_memory(counts, params, task == "train", "fp32")


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (slope, intercept) through (x, y) points, both kept >= 0."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    slope = max(slope, 0.0)
    return slope, max(my - slope * mx, 0.0)


# time probes: (name, network, size, batch, train). None of them is a preset or a benchmark
# workload; together they span what the time terms separate: dispatch-bound tiny UNets,
# compute-bound convolutions, a GAN-like stack of narrow strided / transposed convolutions
# with batch norm at a large batch (conv traffic), an MLP (matmuls), group norms and SiLUs
# (elementwise traffic) and a transformer block (attention)
_TIME_PROBES = (
    ("unet-8ch", "overhead-unet", 8, 1, False),
    ("unet-8ch", "overhead-unet", 8, 1, True),
    ("unet-48ch", "probe-unet", 32, 4, False),
    ("unet-48ch", "probe-unet", 64, 2, False),
    ("unet-48ch", "probe-unet", 32, 8, True),
    ("conv-stack", "conv-stack", 32, 64, False),
    ("conv-stack", "conv-stack", 32, 32, True),
    ("conv-stack", "conv-stack", 16, 128, True),
    ("mlp", "mlp", 512, 4, False),
    ("mlp", "mlp", 512, 4, True),
    ("norm-act", "norm-act", 32, 16, False),
    ("transformer-block", "transformer-block", 256, 4, False),
    ("transformer-block", "transformer-block", 256, 4, True),
)


def _probe_net(kind: str, size: int, batch: int, device: Any) -> tuple[Any, dict[str, Any]]:
    """(module, forward kwargs) of one time probe, built on `device` (meta or cpu)."""
    import torch
    from torch import nn

    def tensor(*shape: int, dtype: Any = torch.float32) -> Any:
        if device.type == "meta":
            return torch.empty(*shape, device=device, dtype=dtype)
        if dtype == torch.long:
            return torch.randint(0, 1000, shape)
        return torch.randn(*shape)

    with torch.device(device):
        if kind in ("overhead-unet", "probe-unet"):
            from diffusers import UNet2DModel

            cfg = _OVERHEAD_UNET if kind == "overhead-unet" else _TIME_PROBE_UNET
            net = UNet2DModel(**{**cfg, "sample_size": size})
            return net, {
                "sample": tensor(batch, 3, size, size),
                "timestep": tensor(batch, dtype=torch.long),
            }
        if kind == "conv-stack":
            net = nn.Sequential(
                nn.Conv2d(3, 24, 4, 2, 1), nn.BatchNorm2d(24), nn.LeakyReLU(0.2),
                nn.Conv2d(24, 48, 4, 2, 1), nn.BatchNorm2d(48), nn.LeakyReLU(0.2),
                nn.Conv2d(48, 48, 3, 1, 1), nn.BatchNorm2d(48), nn.LeakyReLU(0.2),
                nn.ConvTranspose2d(48, 24, 4, 2, 1), nn.BatchNorm2d(24), nn.ReLU(),
                nn.ConvTranspose2d(24, 3, 4, 2, 1), nn.Tanh(),
            )  # fmt: skip
            return net, {"input": tensor(batch, 3, size, size)}
        if kind == "mlp":
            net = nn.Sequential(nn.Linear(192, 768), nn.GELU(), nn.Linear(768, 192))
            return net, {"input": tensor(batch, size, 192)}
        if kind == "norm-act":  # elementwise only: memory traffic and per-op cost
            layers = [m for _ in range(4) for m in (nn.GroupNorm(8, 64), nn.SiLU())]
            net = nn.Sequential(*layers)
            return net, {"input": tensor(batch, 64, size, size)}
        net = _transformer_block_class()(96, 4)
        return net, {"x": tensor(batch, size, 96)}


def _transformer_block_class() -> Any:
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x: Any) -> Any:
            b, n, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
            x = x + self.proj(a)
            return x + self.mlp(self.norm2(x))

    return Block


def _nnls_relative(
    rows: list[dict[str, float]],
    seconds: list[float],
    keys: tuple[str, ...],
    prior: dict[str, float],
    prior_weight: float = 1.0,
) -> dict[str, float]:
    """Non-negative least squares of seconds ~ sum(c_k x_k) in relative error (every probe
    weighs the same however long it runs), by trying every subset of terms (exact for a
    handful). Each term with a prior (a microbenchmark's figure) adds a row pulling it
    towards it, as much as one probe: probes whose terms move together (wide convolutions'
    FLOPs and bytes) then split their time as the microbenchmarks say, not as noise says."""
    import itertools

    import numpy as np

    a = np.array([[r[k] for k in keys] for r in rows]) / np.array(seconds)[:, None]
    b = np.ones(len(rows))
    for i, k in enumerate(keys):
        if prior.get(k, 0.0) > 0:
            row = np.zeros(len(keys))
            row[i] = prior_weight / prior[k]
            a = np.vstack([a, row])
            b = np.append(b, prior_weight)
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    a = a / scale
    best: tuple[float, Any] | None = None
    for m in range(1, len(keys) + 1):
        for sub in itertools.combinations(range(len(keys)), m):
            coef, *_ = np.linalg.lstsq(a[:, sub], b, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(len(keys))
            full[list(sub)] = coef
            err = float(((a @ full - b) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, full)
    assert best is not None
    return dict(zip(keys, (best[1] / scale).tolist(), strict=True))


class _TimeProbes:
    """The CPU time terms' probes: counted on meta, built for real, timed round by round.

    Each probe is counted on meta (the same counts an estimate reads) and timed for real:
    forward without grad, or forward + backward of mean(out^2) for training. The probes are
    timed in turn, round after round (one untimed call first, as the other probes evicted
    its data from the caches), and each keeps its median over the rounds, so that a shared
    machine slowing down for a while slows every probe alike instead of a few. `calibrate`
    spreads the rounds over the memory probes' minute and a half, since this VM's speed
    drifts from minute to minute.
    """

    def __init__(self, tick: Any = None) -> None:
        import torch

        from .count import count_call
        from .predict import time_terms

        self.tick = tick
        self.rows: list[dict[str, float]] = []
        self.names: list[str] = []
        self.steps: list[Any] = []
        meta, cpu = torch.device("meta"), torch.device("cpu")
        for name, kind, size, batch, train in _TIME_PROBES:
            net, kwargs = _probe_net(kind, size, batch, meta)
            c = count_call(net, kwargs, train=train, method="forward")
            terms = time_terms(c, "fwd")
            if train:
                for k, v in time_terms(c, "bwd").items():
                    terms[k] += v
            self.rows.append(terms)
            self.names.append(f"probe_{name}_{'train' if train else 'generate'}_{size}_b{batch}")
            torch.manual_seed(0)
            net, kwargs = _probe_net(kind, size, batch, cpu)
            net.train(train)
            step = _probe_step(net, kwargs, train)
            step()  # warm-up: oneDNN primitives, allocator
            self.steps.append(step)
            self._tick()
        self.runs: list[list[float]] = [[] for _ in self.steps]

    def _tick(self) -> None:
        if self.tick is not None:
            self.tick()

    def round(self) -> None:
        """Time every probe once more."""
        for i, step in enumerate(self.steps):
            step()  # caches and oneDNN primitives warm again after the other probes
            t = time.perf_counter()
            step()
            step()
            self.runs[i].append((time.perf_counter() - t) / 2)
            self._tick()

    def fit(self, prior: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """(seconds per unit of each term, figures) from the rounds timed so far."""
        import statistics

        from .predict import TIME_TERMS

        secs = [statistics.median(r) for r in self.runs]
        coef = _nnls_relative(self.rows, secs, TIME_TERMS, prior, prior_weight=0.3)
        fit = [
            sum(coef[k] * r[k] for k in TIME_TERMS) / s
            for r, s in zip(self.rows, secs, strict=True)
        ]
        figures: dict[str, float] = {}
        for name, t, f in zip(self.names, secs, fit, strict=True):
            figures[f"{name}_ms"] = 1e3 * t
            figures[f"{name}_fit"] = f
        figures["time_fit_worst_ratio"] = max(fit, key=lambda f: abs(f - 1.0))
        return coef, figures


def _probe_step(net: Any, kwargs: dict[str, Any], train: bool) -> Any:
    """One call of a time probe: a forward without grad, or forward + backward."""
    import torch

    def out() -> Any:
        o = net(**kwargs)
        return o if isinstance(o, torch.Tensor) else o.sample

    def step() -> None:
        if train:
            for p in net.parameters():
                p.grad = None
            out().float().pow(2).mean().backward()
        else:
            with torch.no_grad():
                out()

    return step


def calibrate(quick: bool = False, save: bool = True) -> Device:
    """Measure this machine's CPU (throughput, bandwidth, overheads) and store the profile.

    `quick=True` uses fewer and smaller sizes (about a second; for tests).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from ..env import memory_info

    memory_runs = 0 if quick else (len(_MEMORY_PROBES) + len(_FAMILY_MEMORY_PROBES)) * _MEMORY_RUNS
    rounds = 1 if quick else (memory_runs + 1) // 2  # one after each pair of memory runs
    bar = tqdm(
        total=1 + len(_TIME_PROBES) * (rounds + 1) + memory_runs,
        desc="calibrate",
        unit="probe",
        disable=quick or None,
    )
    # runtime memory: what the first small conv / linear / backward leave resident
    # (oneDNN primitives, thread pools), measured before anything large is allocated
    rss0 = _rss_bytes()
    xs = torch.randn(2, 8, 8, 8, requires_grad=True)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    lin = torch.nn.Linear(8, 8)
    lin(conv(xs).permute(0, 2, 3, 1)).sum().backward()
    runtime = max(_rss_bytes() - rss0, 0)
    del xs, conv, lin
    scale = 1 if quick else 2
    reps = 2 if quick else 5
    # matmul: (n x n) @ (n x n), 2 n^3 FLOPs
    mm_pts = []
    for n in (64, 256, 512 * scale):
        a, b = torch.randn(n, n), torch.randn(n, n)
        mm_pts.append((2.0 * n**3, _time(lambda a=a, b=b: a @ b, reps)))
    mm_rate, mm_t0 = _fit_latency(mm_pts)
    # convolution 3x3, c -> c channels, at several sizes (2 * 9 c^2 H W B FLOPs)
    conv_pts = []
    for c, hw, bsz in ((16, 8, 1), (32, 16, 4), (64, 16 * scale, 8)):
        x, w = torch.randn(bsz, c, hw, hw), torch.randn(c, c, 3, 3)
        flops = 2.0 * 9 * c * c * hw * hw * bsz
        conv_pts.append((flops, _time(lambda x=x, w=w: F.conv2d(x, w, padding=1), reps)))
    conv_rate, conv_t0 = _fit_latency(conv_pts)
    # bandwidth: elementwise add reads 2 and writes 1 tensor
    bw_pts = []
    for n in (1 << 12, 1 << 20, (1 << 22) * scale):
        x, y = torch.randn(n), torch.randn(n)
        bw_pts.append((3.0 * 4 * n, _time(lambda x=x, y=y: torch.add(x, y), reps)))
    bw_rate, mem_t0 = _fit_latency(bw_pts)
    del a, b, x, y, w
    # Python cost of an nn.Module call, beyond the op it wraps

    class _Empty(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    v = torch.randn(4, 4)
    empty = _Empty()
    view = _time(lambda: v.view(16), 200)
    module = max(_time(lambda: empty(v), 200) - view, 0.0)
    # bf16 matmul (often no fast path on CPUs)
    a16, b16 = torch.randn(256, 256).bfloat16(), torch.randn(256, 256).bfloat16()
    bf16_rate = 2.0 * 256**3 / _time(lambda: a16 @ b16, reps)
    launch, train_launch = _dispatch_overhead(module, 2 if quick else 20)
    total = memory_info()["total_bytes"] or 8 * GIB
    peak = max(mm_rate, conv_rate)
    dev = Device(
        name="cpu",
        kind="cpu",
        tflops={"fp32": peak / 1e12, "fp16": bf16_rate / 1e12, "bf16": bf16_rate / 1e12},
        memory_gib=total / GIB,
        bandwidth_gbs=bw_rate / 1e9,
        description=f"{os.cpu_count()}-core CPU of {socket.gethostname()}, "
        f"{torch.get_num_threads()} torch threads (calibrated {time.strftime('%Y-%m-%d')})",
        efficiency={
            "conv": conv_rate / peak,
            "matmul": mm_rate / peak,
            "attention": 0.5 * mm_rate / peak,
            "memory": 1.0,
        },
        op_latency_us=1e6 * max((mm_t0 + conv_t0) / 2 - launch, 0.0),
        launch_us=1e6 * launch,
        module_us=1e6 * module,
        train_launch_us=1e6 * train_launch,
        runtime_overhead_bytes=float(runtime),
        allocator_overhead=0.0,
        measured={
            "matmul_gflops": mm_rate / 1e9,
            "conv_gflops": conv_rate / 1e9,
            "bandwidth_gbs": bw_rate / 1e9,
            "bf16_matmul_gflops": bf16_rate / 1e9,
            "matmul_latency_us": 1e6 * mm_t0,
            "conv_latency_us": 1e6 * conv_t0,
            "elementwise_latency_us": 1e6 * mem_t0,
            "view_op_us": 1e6 * view,
            "module_call_us": 1e6 * module,
            "dispatch_per_op_us": 1e6 * launch,
            "train_dispatch_per_op_us": 1e6 * train_launch,
            "quick": float(quick),
        },
    )
    prior = {  # what the microbenchmarks above say each unit costs
        "conv_flop": 1.0 / conv_rate,
        "matmul_flop": 1.0 / mm_rate,
        "attention_flop": 2.0 / mm_rate,
        "memory_byte": 1.0 / bw_rate,
        "op": launch,
    }
    bar.update()  # the microbenchmarks
    probes = _TimeProbes(bar.update)
    if quick:
        probes.round()
    else:  # 14 short runs in fresh processes, two at a time, a time round after each pair
        fit = _fit_memory(dev, bar.update, between=probes.round)
        dev.runtime_overhead_bytes = fit["generate_runtime_overhead_bytes"]
        dev.allocator_overhead = fit["generate_allocator_overhead"]
        dev.train_runtime_overhead_bytes = fit["train_runtime_overhead_bytes"]
        dev.train_allocator_overhead = fit["train_allocator_overhead"]
        dev.family_runtime_overhead_bytes = fit["family_generate_runtime_overhead_bytes"]
        dev.family_train_runtime_overhead_bytes = fit["family_train_runtime_overhead_bytes"]
        dev.measured.update({f"memory_{k}": v for k, v in fit.items()})
    coef, figures = probes.fit(prior)
    dev.cpu_time = coef
    dev.measured.update(figures)
    dev.measured.update({f"time_{k}": v for k, v in coef.items()})
    bar.close()
    if save:
        path = profile_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dev.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
    return dev


def _dispatch_overhead(module_s: float, reps: int) -> tuple[float, float]:
    """Host seconds per op of eager diffusers code (inference, training), from a minimal UNet.

    At 8 px its kernels are tiny, so time less module calls, over (ops + 0.3 views), is
    dispatch; training runs forward with autograd recording plus backward.
    """
    import torch
    from diffusers import UNet2DModel

    from .count import count_call

    torch.manual_seed(0)
    net = UNet2DModel(**_OVERHEAD_UNET)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([10])
    with torch.no_grad():
        secs = _time(lambda: net(x, t), reps)
    train_secs = _time(lambda: net(x, t).sample.pow(2).mean().backward(), reps)
    with torch.device("meta"):
        meta_net = UNet2DModel(**_OVERHEAD_UNET)
        mx, mt = torch.empty(1, 3, 8, 8), torch.empty(1, dtype=torch.long)
    c = count_call(meta_net, {"sample": mx, "timestep": mt}, train=True)
    ops = len(c.ops["fwd"]) + 0.3 * c.views["fwd"]
    train_ops = ops + len(c.ops["bwd"]) + 0.3 * c.views["bwd"]
    modules = c.module_calls * module_s
    return max(secs - modules, 0.0) / ops, max(train_secs - modules, 0.0) / train_ops
