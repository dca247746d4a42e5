"""Samplers: diffusers' schedulers behind one call, and classifier-free guidance as a model wrapper.

Every pipeline (unconditional, class-conditional, text-to-image, img2img, inpainting) calls
`sample(model_fn, noise, scheduler, steps)`. A model function maps the scheduler-scaled input
`x_in` (always VP form, x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps) and a batch of
timesteps to the output the network was trained to predict (eps, v or x0). Guidance, img2img
and inpainting wrap the model function or the starting point; they never copy the loop.

Model functions whose output depends on the step (CFG schedules) expose
`set_step(i, total)`; `sample` calls it before each evaluation with the index of the step
being run and the number of steps run, the same numbers as in `StepInfo`.

diffusers is imported inside the functions that need it: importing it takes seconds.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ImagesynthError, unknown_name

log = logging.getLogger(__name__)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator]


@dataclass(frozen=True)
class SamplerInfo:
    name: str  # CLI name
    label: str  # AUTOMATIC1111 display name
    scheduler_class: str  # diffusers class name
    options: dict = field(default_factory=dict, hash=False)  # extra scheduler config
    stochastic: bool = False  # draws fresh noise inside the steps
    model_evals_per_step: int = 1  # 2 for Heun (the last step is a single Euler step)
    prediction_types: tuple[str, ...] = PREDICTION_TYPES  # model outputs the scheduler handles


SAMPLERS: dict[str, SamplerInfo] = {
    s.name: s
    for s in [
        # Ho et al. 2020, ancestral sampling with the posterior variance
        SamplerInfo("ddpm", "DDPM", "DDPMScheduler", stochastic=True),
        # Song et al. 2021 (DDIM), eta = 0: deterministic
        SamplerInfo("ddim", "DDIM", "DDIMScheduler"),
        # Lu et al. 2022 (DPM-Solver++), second-order multistep
        SamplerInfo(
            "dpmpp-2m",
            "DPM++ 2M",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2},
        ),
        # Karras et al. 2022, Algorithm 1 without churn
        SamplerInfo("euler", "Euler", "EulerDiscreteScheduler"),
        # k-diffusion's sample_euler_ancestral; diffusers has no x0 prediction for it
        SamplerInfo(
            "euler-a",
            "Euler a",
            "EulerAncestralDiscreteScheduler",
            stochastic=True,
            prediction_types=("epsilon", "v_prediction"),
        ),
        # Karras et al. 2022, Algorithm 1 (second order)
        SamplerInfo("heun", "Heun", "HeunDiscreteScheduler", model_evals_per_step=2),
        # Zhao et al. 2023 (UniPC), bh2 predictor-corrector of order 2
        SamplerInfo("unipc", "UniPC", "UniPCMultistepScheduler"),
    ]
}


def sampler_names() -> list[str]:
    """The CLI names of the registered samplers, in registry order."""
    return list(SAMPLERS)


def resolve_sampler(name: str) -> SamplerInfo:
    """A sampler by CLI name or AUTOMATIC1111 label, case-insensitively ("Euler a", "dpmpp-2m")."""
    key = str(name).strip().lower()
    for info in SAMPLERS.values():
        if key in (info.name, info.label.lower()):
            return info
    raise unknown_name("sampler", str(name), sampler_names())


def make_scheduler(sampler: str, train_config: Mapping[str, Any]):
    """A diffusers scheduler for `sampler` from the training noise schedule config.

    `train_config` is a DDPMScheduler config; keys the sampler's class does not take are dropped.
    Timesteps are "trailing" so the first step starts at the last training timestep (Lin et al.
    2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed").
    """
    import diffusers

    info = resolve_sampler(sampler)
    cls = getattr(diffusers, info.scheduler_class)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(train_config).items() if k in accepted}
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ImagesynthError(
            f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}"
        )
    if prediction_type not in info.prediction_types:
        able = [n for n, s in SAMPLERS.items() if prediction_type in s.prediction_types]
        raise ImagesynthError(
            f"sampler {info.name!r} does not support prediction_type {prediction_type!r}; "
            f"use one of: {', '.join(able)}"
        )
    extra = {k: v for k, v in info.options.items() if k in accepted}
    if "timestep_spacing" in accepted:
        extra["timestep_spacing"] = "trailing"
    try:
        scheduler = cls.from_config(config, **extra)
    except (ValueError, NotImplementedError) as e:  # e.g. an unknown beta_schedule
        raise ImagesynthError(f"cannot build the {info.label} sampler from this config: {e}") from e
    if info.model_evals_per_step == 2:
        # Heun's trapezoid over the first interval is unstable when the last training step jumps
        # to near-zero SNR (cosine's capped beta = 0.999: sigma 640 -> 20000); Euler and the
        # log-SNR solvers (DPM++, UniPC) are not affected.
        sigma2 = (1 - scheduler.alphas_cumprod[-2:].double()) / scheduler.alphas_cumprod[-2:]
        if sigma2[1] > 100 * sigma2[0]:
            log.warning(
                "%s is unstable on this noise schedule below ~100 steps (its last timestep has "
                "near-zero SNR); prefer dpmpp-2m, unipc or euler",
                info.label,
            )
    return scheduler


# ---------------------------------------------------------------------------------------------
# x0 prediction, shared by every scheduler


def alpha_bar_at(scheduler, t: float | torch.Tensor) -> float:
    """alpha_bar at a (possibly fractional) timestep, interpolating log sigma as diffusers does.

    sigma = sqrt((1 - alpha_bar) / alpha_bar) (Karras et al. 2022); at integer t this is
    `scheduler.alphas_cumprod[t]`.
    """
    ac = scheduler.alphas_cumprod.detach().to("cpu", torch.float64)  # (N,)
    t = float(t)
    if not 0 <= t <= len(ac) - 1:
        raise ImagesynthError(f"timestep must be in 0..{len(ac) - 1}, got {t}")
    lo = min(math.floor(t), len(ac) - 2)
    w = t - lo
    log_sigma = 0.5 * torch.log((1 - ac[lo : lo + 2]) / ac[lo : lo + 2])  # (2,)
    sigma2 = math.exp(2 * ((1 - w) * log_sigma[0].item() + w * log_sigma[1].item()))
    return 1.0 / (1.0 + sigma2)


def predict_x0(
    x_in: torch.Tensor, out: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """x0 from a VP-form input and the model output (Ho et al. 2020 eq. 15; Salimans & Ho 2022)."""
    a, b = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
    if prediction_type == "epsilon":
        return (x_in - b * out) / a
    if prediction_type == "v_prediction":
        return a * x_in - b * out
    if prediction_type == "sample":
        return out
    raise ImagesynthError(
        f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}"
    )


# ---------------------------------------------------------------------------------------------
# the sampling loop


@dataclass
class StepInfo:
    i: int  # 0-based index among the steps run
    total: int  # number of steps run (= number of callbacks)
    t: float  # timestep the step started from
    x: torch.Tensor  # sample after the step, (B, C, H, W), in the scheduler's space
    x0: torch.Tensor  # predicted clean image from the step's last model call, (B, C, H, W)


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    scheduler,
    steps: int,
    *,
    generator: Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    start_step: int = 0,
    init: torch.Tensor | None = None,
    progress: bool = False,
    blend: Callable[[torch.Tensor, Any, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the reverse process from `noise` (standard normal, (B,C,H,W)); returns x0 in model space.

    With `init` (a clean image in model space) the run starts at step `start_step` from `init`
    noised to that step's timestep (SDEdit, Meng et al. 2022). Noise inside stochastic steps comes
    from `generator` (one CPU generator, or one per image). Runs under `torch.no_grad()`.

    `blend(x, scheduler, t_next)` runs after every completed step and returns the new x: the
    hook for inpainting, which puts the known region back at the noise level of `t_next`
    (None after the last step, when x is clean).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ImagesynthError(f"steps must be an integer >= 1, got {steps!r}")
    if not isinstance(noise, torch.Tensor) or noise.ndim != 4:
        shape = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ImagesynthError(f"noise must be a 4-D tensor (B, C, H, W), got {shape}")
    if not noise.is_floating_point():
        raise ImagesynthError(f"noise must be a float tensor, got dtype {noise.dtype}")
    bad = int((~torch.isfinite(noise)).sum())
    if bad:
        raise ImagesynthError(f"noise has {bad} NaN or infinite values; expected standard normal")
    if isinstance(start_step, bool) or not isinstance(start_step, int):
        raise ImagesynthError(f"start_step must be an integer, got {start_step!r}")
    if not 0 <= start_step < steps:
        raise ImagesynthError(
            f"start_step must be in 0..{steps - 1} ({steps} steps), got {start_step}"
        )
    if start_step > 0 and init is None:
        raise ImagesynthError(f"start_step={start_step} needs an init image to start from")
    if init is not None and tuple(init.shape) != tuple(noise.shape):
        raise ImagesynthError(
            f"init must have the shape of noise {tuple(noise.shape)}, got {tuple(init.shape)}"
        )
    batch = noise.shape[0]
    if isinstance(generator, Sequence) and len(generator) != batch:
        raise ImagesynthError(f"got {len(generator)} generators for a batch of {batch}")

    n_train = scheduler.config.num_train_timesteps
    if steps > n_train:
        raise ImagesynthError(f"steps must be at most {n_train} (training timesteps), got {steps}")

    scheduler.set_timesteps(steps, device=noise.device)
    timesteps = scheduler.timesteps
    order = getattr(scheduler, "order", 1)  # Heun: 2, timesteps [t0, t1, t1, t2, t2, ..., t_n-1]
    begin = start_step * order
    if begin >= len(timesteps):
        raise ImagesynthError(
            f"start_step {start_step} is past the {len(timesteps)} timesteps of this scheduler"
        )
    if hasattr(scheduler, "set_begin_index"):  # sigma-based schedulers index from here
        scheduler.set_begin_index(begin)
    if init is not None:
        # VP schedulers give sqrt(ab) x0 + sqrt(1-ab) eps, sigma-based ones x0 + sigma eps:
        # either is the scheduler's own space, so no init_noise_sigma here.
        t_start = timesteps[begin].reshape(1).repeat(batch)  # (B,)
        x = scheduler.add_noise(init.to(noise), noise, t_start)
    else:
        x = noise * scheduler.init_noise_sigma

    run = timesteps[begin:]
    total = math.ceil(len(run) / order)
    step_kwargs = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    prediction_type = scheduler.config.prediction_type
    set_step = getattr(model_fn, "set_step", None)

    from tqdm.auto import tqdm

    i, first = 0, 0  # user step, and its first index into `run`
    with tqdm(total=total, unit="step", disable=None if progress else True) as bar:
        for k, t in enumerate(run):
            if set_step is not None:
                set_step(i, total)
            x_in = scheduler.scale_model_input(x, t)  # VP form for every scheduler
            t_batch = t.to(device=x.device, dtype=torch.float32).reshape(1).expand(batch)  # (B,)
            out = model_fn(x_in, t_batch)
            if out.shape != x_in.shape:
                raise ImagesynthError(
                    f"model output has shape {tuple(out.shape)}, expected {tuple(x_in.shape)}"
                )
            x = scheduler.step(out, t, x, return_dict=True, **step_kwargs).prev_sample
            # Heun's first call of a step only predicts; the step is done when the next one corrects
            if getattr(scheduler, "state_in_first_order", True) or k == len(run) - 1:
                if blend is not None:
                    x = blend(x, scheduler, run[k + 1] if k + 1 < len(run) else None)
                if callback is not None:
                    ab = alpha_bar_at(scheduler, t)
                    x0 = predict_x0(x_in, out, ab, prediction_type)
                    callback(StepInfo(i=i, total=total, t=float(run[first]), x=x, x0=x0))
                i, first = i + 1, k + 1
                bar.update(1)
    return x


# ---------------------------------------------------------------------------------------------
# classifier-free guidance

CFG_SCHEDULES = ("constant", "linear", "cosine")


def cfg_schedule(name: str, scale: float) -> Callable[[int, int], float]:
    """Guidance scale per step (i, total): "constant", or "linear"/"cosine" decay from `scale` to 1.

    The decays end at 1 (the conditional model alone), not 0 (the unconditional one). Any other
    schedule is a plain function (i, total) -> scale.
    """
    scale = float(scale)
    if not math.isfinite(scale):
        raise ImagesynthError(f"guidance scale must be finite, got {scale}")
    if name not in CFG_SCHEDULES:
        raise unknown_name("CFG schedule", name, CFG_SCHEDULES)

    def progress(i: int, total: int) -> float:  # 0 at the first step, 1 at the last
        return i / (total - 1) if total > 1 else 0.0

    if name == "constant":
        return lambda i, total: scale
    if name == "linear":
        return lambda i, total: 1.0 + (scale - 1.0) * (1.0 - progress(i, total))
    return lambda i, total: 1.0 + (scale - 1.0) * (1.0 + math.cos(math.pi * progress(i, total))) / 2


def _concat(uncond: Any, cond: Any) -> Any:
    """Stack two conditioning batches along the batch dimension (tensors, dicts, tuples, None)."""
    if uncond is None and cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return torch.cat([uncond, cond])
    if isinstance(cond, Mapping):
        return {k: _concat(uncond[k], cond[k]) for k in cond}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_concat(u, c) for u, c in zip(uncond, cond, strict=True))
    raise ImagesynthError(f"cannot batch conditioning of type {type(cond).__name__}; pass concat=")


class CFGModelFn:
    """Classifier-free guidance (Ho & Salimans 2022) around a conditional model function.

    Holds the current step (set by `sample` through `set_step`) for scheduled scales, so use one
    instance per `sample` call.
    """

    def __init__(
        self,
        model_fn_cond: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        cond: Any,
        uncond: Any,
        scale: float | Callable[[int, int], float],
        concat: Callable[[Any, Any], Any] | None = None,
    ):
        if not callable(scale):
            scale = float(scale)
            if not math.isfinite(scale):
                raise ImagesynthError(f"guidance scale must be finite, got {scale}")
        self.model_fn_cond = model_fn_cond
        self.cond, self.uncond = cond, uncond
        self.scale = scale
        self.concat = concat or _concat
        self.i, self.total = 0, 1

    def set_step(self, i: int, total: int) -> None:
        self.i, self.total = i, total

    def current_scale(self) -> float:
        return float(self.scale(self.i, self.total)) if callable(self.scale) else self.scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = self.current_scale()
        if s == 1.0:  # conditional only: one call of B
            return self.model_fn_cond(x, t, self.cond)
        if s == 0.0:  # unconditional only
            return self.model_fn_cond(x, t, self.uncond)
        out = self.model_fn_cond(
            torch.cat([x, x]), torch.cat([t, t]), self.concat(self.uncond, self.cond)
        )  # (2B, C, H, W)
        if out.shape[0] != 2 * x.shape[0]:
            raise ImagesynthError(
                f"guided model output has batch {out.shape[0]}, expected {2 * x.shape[0]}"
            )
        u, c = out.chunk(2)
        return u + s * (c - u)


def cfg_model_fn(
    model_fn_cond: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    cond: Any,
    uncond: Any,
    scale: float | Callable[[int, int], float],
    concat: Callable[[Any, Any], Any] | None = None,
) -> CFGModelFn:
    """Classifier-free guidance (Ho & Salimans 2022): out = u + s (c - u), one batched call (2B)."""
    return CFGModelFn(model_fn_cond, cond, uncond, scale, concat)
