"""Predict time and memory of generating or training, before running anything.

Time. Every kernel counted on meta (`count.py`) costs
    t = max(FLOPs / (peak x eff_kind(FLOPs)) , bytes / bandwidth)   for conv / matmul / attention
    t = bytes / (bandwidth x eff_memory)                             for elementwise / norms
with eff_kind(f) = eff_max x f / (f + peak x op_latency): small kernels cannot fill a device.
A GPU runs kernels asynchronously, so a step takes max(device time, host time), host time =
kernels x launch cost + module calls x Python cost (what limits batch 1); a CPU adds both.
generate, per image = (steps x UNet(batch x 2 if CFG) + VAE decode + text encoders) / batch
plus the sampler's per-step elementwise work; train, per step = forward + backward of the
UNet + AdamW and EMA updates (memory-bound: 28 + 12 bytes per parameter).

Memory (peak, bytes): weights of every part held on the device + the largest live set of
activations of any part (followed on meta) + attention scores where materialised
("slicing": 2 x slice x Lq x Lk per call; "sdpa" never makes them) + for training fp32
gradients, AdamW's two fp32 states, fp32 master weights under fp16 / bf16, an fp32 EMA copy
+ the runtime (CUDA context / oneDNN caches) + the allocator's overhead on activations.
On a CPU the last two are a line c + a x activations per task (generate / train), fitted by
`--calibrate` on probe runs of a UNet unlike the presets, each in a fresh process: oneDNN's
blocked copies and scratchpads, malloc's arenas and paged-in kernels live there.

Quick mode (the seeds' calculator) maps complexity to real architectures:

| complexity | architecture | parameters | default size |
|---|---|---|---|
| 1 | pixel diffusion preset `tiny` (UNet2DModel) | 1.1 M | 32 |
| 2 | pixel diffusion preset `small` | 6.5 M | 32 |
| 3 | Stable Diffusion 1.5 (UNet + VAE + CLIP-L) | 1.07 B | 512 |
| 4 | SDXL base 1.0 (UNet + VAE + CLIP-L + bigG) | 3.5 B | 1024 |
| 5 | SDXL base + refiner (refiner runs the last 20 % of steps) | 5.8 B | 1024 |

Quick mode is `estimate()` on that architecture with fp16, CFG from level 3 up, sdpa, and
the reference GPU (RTX 4090) scaled by `gpu_speed` (its throughput and bandwidth), so the
two modes agree exactly on the same device.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ImagesynthError
from .arch import Arch, get_arch
from .count import DTYPE_BYTES, KINDS, Counts, count_part, human
from .devices import GIB, GPUS, REFERENCE_GPU, Device, get_device

TASKS = ("generate", "train")
ATTENTION = ("sdpa", "slicing")
SAMPLER_OPS = 30  # elementwise kernels of one sampler step (scheduler math, CFG mix)
COMPLEXITY: dict[int, tuple[str, int]] = {
    1: ("tiny", 32),
    2: ("small", 32),
    3: ("sd15", 512),
    4: ("sdxl", 1024),
    5: ("sdxl-refiner", 1024),
}


@dataclass
class Report:
    """A prediction (and, with `measure`, the measured figures side by side)."""

    model: str
    architecture: str
    task: str
    size: int
    steps: int
    batch: int
    dtype: str
    device: str
    device_memory_bytes: float
    cfg: bool
    attention: str
    parameters: int
    flops_per_step: float  # one denoising step of the batch (generate) or one optimizer step
    flops_per_image: float
    seconds_per_step: float
    seconds_per_image: float
    images_per_hour: float
    time_breakdown: dict[str, float]  # seconds per image by part
    memory: dict[str, float]  # peak bytes by kind; "total" is the peak
    fits: bool
    max_batch: int  # largest batch that fits at this size (0: not even 1)
    max_size: int  # largest size that fits at this batch (0: not even the smallest)
    notes: list[str] = field(default_factory=list)
    measured: dict[str, float] | None = None

    @property
    def peak_bytes(self) -> float:
        return self.memory["total"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A readable multi-line summary (what the CLI prints)."""
        gib = GIB
        m = self.memory
        rows = [
            ("model", f"{self.model} ({self.architecture})"),
            (
                "task",
                f"{self.task} {self.size}x{self.size}, batch {self.batch}, "
                + (f"{self.steps} steps" if self.task == "generate" else "1 optimizer step")
                + f", {self.dtype}"
                + (", CFG" if self.cfg else "")
                + f", {self.attention}",
            ),
            ("device", f"{self.device} ({self.device_memory_bytes / gib:.1f} GiB)"),
            ("parameters", human(self.parameters)),
            (
                "FLOPs",
                f"{human(self.flops_per_step)} per step, {human(self.flops_per_image)} per image",
            ),
            ("time per step", _seconds(self.seconds_per_step)),
            ("time per image", _seconds(self.seconds_per_image)),
            ("images per hour", f"{self.images_per_hour:,.0f}"),
        ]
        parts = ", ".join(f"{k} {_seconds(v)}" for k, v in self.time_breakdown.items() if v)
        rows.append(("time by part", parts + " (per image)"))
        rows.append(("peak memory", f"{m['total'] / gib:.2f} GiB"))
        for k, v in m.items():
            if k != "total" and v:
                rows.append((f"  {k}", f"{v / gib:.3f} GiB"))
        verdict = "fits" if self.fits else "does NOT fit"
        rows.append(
            (
                "verdict",
                f"{verdict} in {self.device_memory_bytes / gib:.1f} GiB; "
                f"largest batch {self.max_batch} at {self.size} px, largest size "
                f"{self.max_size} px at batch {self.batch}",
            )
        )
        if self.measured:
            me = self.measured
            rows.append(("", ""))
            rows.append(("", f"{'predicted':>12} {'measured':>12} {'ratio':>7}"))
            for key, label in (
                ("seconds_per_step", "s / step"),
                ("seconds_per_image", "s / image"),
            ):
                p, v = getattr(self, key), me[key]
                rows.append((label, f"{p:>12.4g} {v:>12.4g} {p / v:>7.2f}"))
            p, v = self.memory["total"] / 2**20, me["peak_bytes"] / 2**20
            rows.append(("peak MiB", f"{p:>12.1f} {v:>12.1f} {p / max(v, 1e-9):>7.2f}"))
        rows += [("note", n) for n in self.notes]
        return "\n".join(f"{k:<16} {v}" for k, v in rows)


def _seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1000:.1f} ms"


# --- the time model ------------------------------------------------------------------------


TIME_TERMS = ("conv_flop", "conv_byte", "matmul_flop", "attention_flop", "memory_byte", "op")


def time_terms(counts: Counts, phase: str) -> dict[str, float]:
    """What a CPU profile's fitted cost per unit multiplies: FLOPs and bytes by kernel kind,
    and kernels (each costs dispatch, oneDNN's primitive lookup, the thread pool's wake-up)."""
    terms = dict.fromkeys(TIME_TERMS, 0.0)
    for kind, flops, nbytes in counts.ops.get(phase, []):
        name = KINDS[int(kind)]
        if name == "memory":
            terms["memory_byte"] += nbytes
        else:
            terms[f"{name}_flop"] += flops
            if name == "conv":  # layout reorders and im2col-like traffic of small convs
                terms["conv_byte"] += nbytes
            else:
                terms["memory_byte"] += nbytes
        terms["op"] += 1
    return terms


def kernels_time(
    counts: Counts, phase: str, device: Device, dtype: str, train: bool = False
) -> float:
    """Seconds for one phase ("fwd" / "bwd") of a counted call on a device.

    A calibrated CPU adds its fitted cost of every term (`time_terms`): a CPU runs one
    kernel after another, so compute, traffic and per-kernel costs add up. A GPU overlaps
    them: each kernel takes the longer of its compute and its memory time (a roofline), and
    the host's launches bound the whole from below.
    """
    if device.cpu_time and dtype == "fp32":
        terms = time_terms(counts, phase)
        return sum(device.cpu_time.get(k, 0.0) * v for k, v in terms.items())
    peak = device.peak_flops(dtype)
    bw = device.bandwidth_gbs * 1e9 * device.efficiency.get("memory", 1.0)
    latency = device.op_latency_us * 1e-6
    launch = device.launch_us * 1e-6
    if train and device.train_launch_us is not None:
        launch = device.train_launch_us * 1e-6
    gpu = device.kind == "gpu"
    dev_t = 0.0
    host_t = 0.0
    for kind, flops, nbytes in counts.ops.get(phase, []):
        name = KINDS[int(kind)]
        if name == "memory":
            t = nbytes / bw
        else:
            eff = device.efficiency.get(name, 0.5)
            t = max(flops / (peak * eff) + latency, nbytes / bw)
        dev_t += t
        host_t += launch
    host_t += counts.views.get(phase, 0) * launch * 0.3  # views: dispatch only, no kernel
    if phase == "fwd":  # backward runs in autograd's C++ engine: no module calls
        host_t += counts.module_calls * device.module_us * 1e-6
    return max(dev_t, host_t) if gpu else dev_t + host_t


def _elementwise_time(device: Device, n_ops: int, nbytes: float) -> float:
    if device.cpu_time:
        return n_ops * device.cpu_time.get("op", 0.0) + nbytes * device.cpu_time["memory_byte"]
    bw = device.bandwidth_gbs * 1e9 * device.efficiency.get("memory", 1.0)
    launch = device.launch_us * 1e-6
    if device.kind == "gpu":
        return max(nbytes / bw, n_ops * launch)
    return nbytes / bw + n_ops * launch


def _slicing_extra(counts: Counts, dtype_bytes: int) -> tuple[float, float]:
    """(peak score bytes, bytes moved) of attention slicing: scores + probs per head slice."""
    peak = moved = 0.0
    for bh, heads, lq, lk, _d in counts.attention:
        rows = min(bh, max(1, heads // 2))  # diffusers' "auto" slice: half the heads
        peak = max(peak, 2.0 * rows * lq * lk * dtype_bytes)
        moved += 4.0 * bh * lq * lk * dtype_bytes  # write scores, softmax read+write, read
    return peak, moved


# --- the estimate ----------------------------------------------------------------------------


def _validate(task: str, size: int, steps: int, batch: int, dtype: str, attention: str) -> None:
    if task not in TASKS:
        raise ImagesynthError(f"unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    if dtype not in DTYPE_BYTES:
        raise ImagesynthError(f"unknown dtype {dtype!r}; expected one of: fp16, bf16, fp32")
    if attention not in ATTENTION:
        raise ImagesynthError(
            f"unknown attention {attention!r}; expected one of: {', '.join(ATTENTION)}"
        )
    for name, value in (("size", size), ("steps", steps), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ImagesynthError(f"{name} must be a positive integer, got {value!r}")


def estimate(
    model: str | Arch = "tiny",
    *,
    task: str = "generate",
    size: int | None = None,
    steps: int = 30,
    batch: int = 1,
    dtype: str | None = None,
    device: str | Device = "cpu",
    cfg: bool = False,
    attention: str = "sdpa",
    ema: bool = True,
) -> Report:
    """Predicted time, throughput and peak memory of a generate or train workload."""
    from .families import FamilyModel, family_model

    fm = model if isinstance(model, FamilyModel) else None
    if isinstance(model, str):
        fm = family_model(model, size)
    if fm is not None:
        dev = device if isinstance(device, Device) else get_device(device)
        return _estimate_family(fm, task, size, batch, dtype, dev, ema)
    arch = model if isinstance(model, Arch) else get_arch(model)
    dev = device if isinstance(device, Device) else get_device(device)
    if dtype is None:
        dtype = "fp32" if dev.kind == "cpu" else "fp16"
    size = arch.default_size if size is None else size
    _validate(task, size, steps, batch, dtype, attention)
    arch.check_size(size)
    dev.peak_flops(dtype)  # refuses dtypes the device has no fast path for
    train = task == "train"
    nbytes = DTYPE_BYTES[dtype]
    unet_batch = batch * (2 if cfg and not train else 1)
    notes: list[str] = []
    times: dict[str, float] = {}
    weights = 0.0
    activations = 0.0
    attn_peak = 0.0
    params = 0
    flops_step = 0.0
    flops_image = 0.0
    unet_counts: list[tuple[Counts, float]] = []
    for part in arch.parts:
        if train and part.role != "unet":
            continue  # latents and text embeddings are taken as precomputed for training
        b = unet_batch if part.role == "unet" else batch
        if part.role == "text_encoder":
            b = batch * (2 if cfg else 1)
        pdtype = "fp32" if part.cond.get("upcast") and dtype == "fp16" else dtype
        c = count_part(part, arch, b, size, pdtype, train)
        params += c.param_count
        weights += c.param_bytes if part.role != "vae_decoder" else _vae_weights(c)
        if part.role == "unet":
            unet_counts.append((c, part.steps_fraction))
            t = kernels_time(c, "fwd", dev, dtype, train)
            if train:
                t += kernels_time(c, "bwd", dev, dtype, train)
                flops_step += c.flops_forward + c.flops_backward
                act = max(c.train_peak_live_bytes - c.param_bytes, c.saved_bytes)
            else:
                if attention == "slicing":
                    extra_peak, moved = _slicing_extra(c, nbytes)
                    attn_peak = max(attn_peak, extra_peak)
                    t += _elementwise_time(dev, 3 * len(c.attention), moved)
                flops_step += c.flops_forward * part.steps_fraction
                act = c.peak_live_bytes
            times["unet"] = times.get("unet", 0.0) + t * (1 if train else part.steps_fraction)
        else:
            t = kernels_time(c, "fwd", dev, pdtype)
            times[part.role] = times.get(part.role, 0.0) + t
            flops_image += c.flops_forward / batch
            act = c.peak_live_bytes
        activations = max(activations, act + c.input_bytes)
    latent = size // arch.latent_factor
    latent_bytes = unet_batch * arch.latent_channels * latent * latent * 4
    if train:
        p_unet = sum(c.param_count for c, _ in unet_counts)
        opt_t = _elementwise_time(dev, 40, p_unet * (28 + (12 if ema else 0)))
        opt_t += _elementwise_time(dev, 20, 10 * latent_bytes)  # noise, loss
        seconds_step = times["unet"] + opt_t
        times = {"forward+backward": times["unet"] / batch, "optimizer+ema": opt_t / batch}
        seconds_image = seconds_step / batch
        flops_image = flops_step / batch
        grads = 4.0 * p_unet
        memory = {
            "weights": weights,
            "activations": activations,
            "attention": 0.0,
            "gradients": grads,
            "optimizer": 8.0 * p_unet,
            "master_weights": 4.0 * p_unet if nbytes < 4 else 0.0,
            "ema": 4.0 * p_unet if ema else 0.0,
        }
        if attention == "slicing":
            notes.append("attention slicing is an inference option; training uses sdpa here")
        if any(p.role != "unet" for p in arch.parts):
            notes.append("training covers the UNet; latents and text embeddings precomputed")
    else:
        sampler_t = _elementwise_time(dev, SAMPLER_OPS, SAMPLER_OPS * 3 * latent_bytes)
        seconds_step = times.get("unet", 0.0) + sampler_t
        per_batch = steps * seconds_step + sum(v for k, v in times.items() if k != "unet")
        seconds_image = per_batch / batch
        flops_image += steps * flops_step / batch
        times = {
            "unet": steps * times.get("unet", 0.0) / batch,
            "sampler": steps * sampler_t / batch,
            **{k: v / batch for k, v in times.items() if k != "unet"},
        }
        memory = {
            "weights": weights,
            "activations": activations + latent_bytes,
            "attention": attn_peak,
        }
    tensors = sum(memory.values())
    alloc = _add_overheads(memory, dev, train)
    capacity = dev.memory_gib * GIB
    max_batch, max_size = _largest(memory, tensors, capacity, batch, size, arch, alloc)
    if dev.kind == "gpu" and batch == 1:
        notes.append("batch 1 on a GPU is often limited by kernel launches, not FLOPs")
    if dev.kind == "cpu" and dev.description.startswith("uncalibrated"):
        notes.append("CPU figures are rough until `imagesynth estimate --calibrate` is run")
    return _report(
        dev,
        model=model.name if isinstance(model, Arch) else str(model),
        architecture=arch.description,
        task=task,
        size=size,
        steps=steps if not train else 1,
        batch=batch,
        dtype=dtype,
        cfg=cfg and not train,
        attention=attention,
        parameters=params,
        flops_per_step=flops_step,
        flops_per_image=flops_image,
        seconds_per_step=seconds_step,
        seconds_per_image=seconds_image,
        time_breakdown=times,
        memory=memory,
        max_batch=max_batch,
        max_size=max_size,
        notes=notes,
    )


def _estimate_family(
    fm: Any, task: str, size: int | None, batch: int, dtype: str | None, dev: Device, ema: bool
) -> Report:
    """`estimate` for the GAN / VAE / autoregressive / super-resolution families: their own
    sampling loop or training phases counted on meta (`families.py`), same time and memory
    model as the diffusion parts."""
    from .families import count_family

    if dtype is None:
        dtype = "fp32" if dev.kind == "cpu" else "fp16"
    size = fm.size if size is None else size
    _validate(task, size, 1, batch, dtype, "sdpa")
    fm.check_size(size)
    dev.peak_flops(dtype)
    train = task == "train"
    c, steps, params = count_family(fm, task, batch, size)
    half = DTYPE_BYTES[dtype] / 4.0  # counted at fp32; fp16 / bf16 move half the bytes
    if half != 1.0:
        c = _scaled_bytes(c, half)
    notes: list[str] = []
    if train:
        trained, n_ema = params["trained"], params["ema"] if ema else 0
        t_fb = kernels_time(c, "fwd", dev, dtype, True) + kernels_time(c, "bwd", dev, dtype, True)
        opt_t = _elementwise_time(dev, 40 * params["phases"], trained * 28 + n_ema * 12)
        seconds_step = t_fb + opt_t
        times = {"forward+backward": t_fb / batch, "optimizer+ema": opt_t / batch}
        flops_step = c.flops_forward + c.flops_backward
        memory = family_memory(c, params, True, dtype, ema)
        seconds_image = seconds_step / batch
        if params["phases"] > 1:
            notes.append(f"one training step = {params['phases']} phases (e.g. D then G)")
    else:
        t = kernels_time(c, "fwd", dev, dtype)
        seconds_step = t / steps
        seconds_image = t / batch
        flops_step = c.flops_forward / steps
        times = {fm.family: seconds_image}
        memory = family_memory(c, params, False, dtype, ema)
        if steps > 1:
            what = "pixel" if fm.family == "pixelcnn" else "token"
            notes.append(f"{steps} sequential network calls per image, one per {what}")
        if fm.family == "vqvae":
            notes.append("a VQ-VAE alone reconstructs: generate = encode + decode")
    tensors = sum(memory.values())
    alloc = _add_overheads(memory, dev, train, family=True)
    capacity = dev.memory_gib * GIB
    max_batch, max_size = _largest(memory, tensors, capacity, batch, size, fm, alloc)
    if fm.family not in ("upscaler", "restorer"):  # networks built for one size
        max_size = size if memory["total"] <= capacity else 0
    if dev.kind == "cpu" and dev.description.startswith("uncalibrated"):
        notes.append("CPU figures are rough until `imagesynth estimate --calibrate` is run")
    return _report(
        dev,
        model=fm.name,
        architecture=fm.description,
        task=task,
        size=size,
        steps=steps if not train else 1,
        batch=batch,
        dtype=dtype,
        cfg=False,
        attention="sdpa",
        parameters=params["held"],
        flops_per_step=flops_step,
        flops_per_image=(flops_step * (1 if train else steps)) / batch,
        seconds_per_step=seconds_step,
        seconds_per_image=seconds_image,
        time_breakdown=times,
        memory=memory,
        max_batch=max_batch,
        max_size=max_size,
        notes=notes,
    )


def _report(dev: Device, **fields: Any) -> Report:
    """The Report, with what follows from the device and the figures."""
    capacity = dev.memory_gib * GIB
    return Report(
        device=dev.name,
        device_memory_bytes=capacity,
        images_per_hour=3600.0 / fields["seconds_per_image"],
        fits=fields["memory"]["total"] <= capacity,
        **fields,
    )


def family_memory(
    c: Counts, params: dict[str, int], train: bool, dtype: str, ema: bool = True
) -> dict[str, float]:
    """The tensors of a non-diffusion family's workload (or any network counted with
    `count_call`): weights, activations, and when training gradients, AdamW's two moments
    and the EMA copy (kept in fp32)."""
    if not train:
        return {
            "weights": DTYPE_BYTES[dtype] * params["held"],
            "activations": c.peak_live_bytes + c.input_bytes,
            "attention": 0.0,
        }
    trained, n_ema = params["trained"], params["ema"] if ema else 0
    half = DTYPE_BYTES[dtype] / 4.0
    act = max(c.train_peak_live_bytes - 4.0 * trained * half, c.saved_bytes)
    return {
        "weights": 4.0 * params["held"],
        "activations": act + c.input_bytes,
        "attention": 0.0,
        "gradients": 4.0 * trained,
        "optimizer": 8.0 * trained,
        "ema": 4.0 * n_ema,
    }


def _add_overheads(
    memory: dict[str, float], dev: Device, train: bool, family: bool = False
) -> float:
    """Add the runtime and allocator terms (per task, and for the non-diffusion families,
    where the profile has them) and the total to `memory`; returns the allocator's overhead
    per byte of activations."""
    alloc, runtime = dev.allocator_overhead, dev.runtime_overhead_bytes
    if train and dev.train_allocator_overhead is not None:
        alloc = dev.train_allocator_overhead
    if train and dev.train_runtime_overhead_bytes is not None:
        runtime = dev.train_runtime_overhead_bytes
    if family:
        fam = dev.family_runtime_overhead_bytes
        if train:
            fam = dev.family_train_runtime_overhead_bytes
        runtime = runtime if fam is None else fam
    memory["allocator"] = alloc * (memory["activations"] + memory["attention"])
    memory["runtime"] = runtime
    memory["total"] = sum(memory.values())
    return alloc


def _scaled_bytes(c: Counts, f: float) -> Counts:
    """A copy of counts whose tensors are f times the size (fp32 counted, half-precision run)."""
    ops = {k: [[kind, fl, b * f] for kind, fl, b in v] for k, v in c.ops.items()}
    return Counts(
        **{
            **asdict(c),
            "ops": ops,
            "peak_live_bytes": c.peak_live_bytes * f,
            "saved_bytes": c.saved_bytes * f,
            "train_peak_live_bytes": c.train_peak_live_bytes * f,
            "input_bytes": c.input_bytes * f,
        }
    )


def _vae_weights(c: Counts) -> float:
    return c.param_bytes  # the pipeline holds the whole AutoencoderKL (encoder + decoder)


def _largest(
    memory: dict[str, float],
    tensors: float,
    capacity: float,
    batch: int,
    size: int,
    arch: Arch,
    allocator_overhead: float,
) -> tuple[int, int]:
    """Largest batch at this size and largest size at this batch (activations ~ batch x size^2,
    sliced attention scores ~ size^4), extrapolated from this estimate."""
    alloc = 1.0 + allocator_overhead
    act = memory["activations"] * alloc
    att = memory["attention"] * alloc
    fixed = memory["total"] - act - att
    room = capacity - fixed
    if room <= 0:
        return 0, 0
    per_image = (act + att) / batch
    max_batch = int(room // per_image) if per_image > 0 else 1 << 16
    # size: act x u + att x u^2 <= room, u = (s / size)^2
    if att > 0:
        u = (-act + math.sqrt(act * act + 4 * att * room)) / (2 * att)
    else:
        u = room / act if act > 0 else 1e6
    s = int(size * math.sqrt(u))
    max_size = min(s // arch.multiple * arch.multiple, 1 << 16)
    return max(min(max_batch, 1 << 16), 0), max(max_size, 0)


def quick_estimate(
    resolution: int = 512,
    steps: int = 30,
    complexity: int = 3,
    gpu_speed: float = 1.0,
    *,
    batch: int = 1,
) -> Report:
    """The seeds' calculator: resolution, steps, complexity 1..5, GPU speed vs an RTX 4090."""
    if isinstance(complexity, bool) or complexity not in COMPLEXITY:
        raise ImagesynthError(f"complexity must be an integer in 1..5, got {complexity!r}")
    if not isinstance(gpu_speed, (int, float)) or not gpu_speed > 0 or math.isinf(gpu_speed):
        raise ImagesynthError(f"gpu speed must be a number > 0 (1.0 = RTX 4090), got {gpu_speed!r}")
    name, _ = COMPLEXITY[complexity]
    dev = scaled_gpu(gpu_speed)
    report = estimate(
        name,
        task="generate",
        size=resolution,
        steps=steps,
        batch=batch,
        dtype="fp16",
        device=dev,
        cfg=complexity >= 3,
        attention="sdpa",
    )
    report.notes.insert(0, f"complexity {complexity} = {name}: {report.architecture}")
    return report


def scaled_gpu(speed: float) -> Device:
    """The reference GPU (RTX 4090) with throughput, bandwidth and launch rate x speed."""
    ref = GPUS[REFERENCE_GPU]
    if speed == 1.0:
        return ref
    return Device(
        name=f"{speed:g}x {REFERENCE_GPU}",
        kind="gpu",
        tflops={k: v * speed if v else None for k, v in ref.tflops.items()},
        memory_gib=ref.memory_gib,
        bandwidth_gbs=ref.bandwidth_gbs * speed,
        description=f"{speed:g} x the speed of an {ref.description}",
        efficiency=dict(ref.efficiency),
        op_latency_us=ref.op_latency_us / speed,
        launch_us=ref.launch_us / speed,
        module_us=ref.module_us / speed,
        runtime_overhead_bytes=ref.runtime_overhead_bytes,
        allocator_overhead=ref.allocator_overhead,
    )


# --- measuring the real workload -------------------------------------------------------------


class PeakRSS:
    """Peak resident memory above the level at entry.

    Linux keeps the exact peak (VmHWM); writing 5 to /proc/self/clear_refs resets it to the
    current RSS, so the peak of the window is read, not sampled. Where that is refused, a
    thread samples RSS every ~5 ms (which misses peaks shorter than that).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.base = 0
        self.peak = 0
        self._stop = False
        self._thread: Any = None

    def _loop(self) -> None:
        from .devices import _rss_bytes

        while not self._stop:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        import threading

        from .devices import _rss_bytes

        self.base = self.peak = _rss_bytes()
        if _reset_hwm():
            return self
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        from .devices import _rss_bytes

        if self._thread is not None:
            self._stop = True
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes(), _hwm_bytes() if self._thread is None else 0)

    @property
    def delta(self) -> int:
        return self.peak - self.base


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _hwm_bytes() > 0
    except OSError:
        return False


def _hwm_bytes() -> int:
    """The kernel's peak resident set of this process (VmHWM), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def median_seconds(fn: Any, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of fn (warm it up first)."""
    import statistics

    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def measure(
    model: str | Arch = "tiny",
    *,
    task: str = "generate",
    size: int | None = None,
    steps: int = 30,
    batch: int = 1,
    cfg: bool = False,
    repeats: int = 3,
) -> dict[str, float]:
    """Run the real workload on this CPU (pixel diffusion and the non-diffusion families).

    Peak memory is the process's resident-set growth from before the model is built.
    """
    import torch

    from .families import FamilyModel, family_model, measure_family

    fm = model if isinstance(model, FamilyModel) else None
    if isinstance(model, str):
        fm = family_model(model, size)
    if fm is not None:
        size = fm.size if size is None else size
        _validate(task, size, 1, batch, "fp32", "sdpa")
        fm.check_size(size)
        return measure_family(fm, task, size, batch, repeats)
    arch = model if isinstance(model, Arch) else get_arch(model)
    size = arch.default_size if size is None else size
    _validate(task, size, steps, batch, "fp32", "sdpa")
    arch.check_size(size)
    unets = [p for p in arch.parts if p.role == "unet"]
    if len(arch.parts) != 1 or unets[0].cls != "UNet2DModel":
        raise ImagesynthError(
            f"--measure runs pixel diffusion models (presets or model directories) on this "
            f"machine; {arch.name!r} is a latent pipeline, estimate it without --measure"
        )
    from diffusers import UNet2DModel

    cfg_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in unets[0].config.items()}
    cfg_dict["sample_size"] = size
    n_classes = int(cfg_dict.get("num_class_embeds") or 0)
    if cfg and not n_classes:
        cfg_dict["num_class_embeds"] = 11  # a class-conditional twin, so CFG can run
        n_classes = 11
    gen = torch.Generator().manual_seed(0)
    with PeakRSS() as rss:
        torch.manual_seed(0)
        unet = UNet2DModel(**cfg_dict)
        ch = unet.config.in_channels
        if task == "generate":
            from ..models.diffusion import DiffusionOptions, scheduler_config
            from ..pipelines.diffusion import generate

            sched = scheduler_config(DiffusionOptions())
            unet.eval()
            kw: dict[str, Any] = {"n": batch, "sampler": "ddim", "steps": steps}
            if n_classes:
                kw["class_labels"] = [0] * batch
                kw["guidance_scale"] = 3.0 if cfg else None
            generate(unet, sched, **{**kw, "steps": 1})  # warm-up
            per_batch = median_seconds(lambda: generate(unet, sched, **kw), repeats)
            per_step = per_batch / steps
            per_image = per_batch / batch
        else:
            try:  # as the trainer: fused AdamW where torch has it
                opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=True)
            except (RuntimeError, TypeError):
                opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, foreach=True)
            ema = [p.detach().clone() for p in unet.parameters()]
            x = torch.randn(batch, ch, size, size, generator=gen)
            labels = torch.zeros(batch, dtype=torch.long) if n_classes else None

            def step() -> None:
                t = torch.randint(0, 1000, (batch,), generator=gen)
                noise = torch.randn(x.shape, generator=gen)
                out = unet(x + noise, t, class_labels=labels).sample
                loss = torch.nn.functional.mse_loss(out, noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    torch._foreach_lerp_(ema, list(unet.parameters()), 1 - 0.999)

            step()  # warm-up: optimizer states are made on the first step
            per_step = median_seconds(step, repeats)
            per_image = per_step / batch
    return {
        "seconds_per_step": per_step,
        "seconds_per_image": per_image,
        "images_per_hour": 3600.0 / per_image,
        "peak_bytes": float(rss.delta),
    }
