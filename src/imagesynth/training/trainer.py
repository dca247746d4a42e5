"""The one trainer: any model family, any dataset, CPU to many GPUs through accelerate.

Every source of randomness in a step is drawn from a generator seeded by
(seed, rank, step, micro-step, phase) and the batch order is a function of (seed, step), so
`--resume latest` continues exactly: 4 steps straight and 2 + resume + 2 give the same
weights. Checkpoints hold networks, EMA copies and optimizer states as safetensors + JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import get_dataset
from ..errors import ImagesynthError
from ..io import rundir
from ..io.atomic import write_json_atomic
from ..io.images import make_grid, tensor_to_pil
from ..io.pngmeta import save_png
from .config import TrainConfig, config_diff
from .data import BatchOrder, load_tensor_data, make_batch, step_seed
from .ema import EMA
from .family import DataInfo, Family
from .state import load_optimizer, load_tensors, save_optimizer, save_tensors

log = logging.getLogger("imagesynth")


EVAL_CHUNK = 250  # images per family.sample call during evaluation
EVAL_SEED = 10_000  # evaluation samples use seeds EVAL_SEED + i (grids use 1234)


class TrainingDiverged(ImagesynthError):
    """Too many non-finite losses or gradients in a row."""


@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path | None
    step: int
    stats: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "done"  # done | time | interrupted | stopped (or request_stop's reason)


FAMILIES: dict[str, tuple[str, str, str]] = {
    # name: (module, options dataclass, family class)
    "diffusion": ("..models.diffusion", "DiffusionOptions", "DiffusionFamily"),
    "autoencoder": ("..models.autoencoder", "AutoencoderOptions", "AutoencoderFamily"),
    "latent-diffusion": (
        "..models.latent_diffusion",
        "LatentDiffusionOptions",
        "LatentDiffusionFamily",
    ),
    "upscaler": ("..models.superres", "SuperResOptions", "SuperResFamily"),
    "restorer": ("..models.superres", "RestorerOptions", "RestorerFamily"),
    "pixelcnn": ("..models.pixelcnn", "PixelCNNOptions", "PixelCNNFamily"),
    "vqvae": ("..models.vqvae", "VQVAEOptions", "VQVAEFamily"),
    "transformer": ("..models.token_transformer", "TransformerOptions", "TransformerFamily"),
    "gan": ("..models.gan", "GanOptions", "GanFamily"),
    "vae": ("..models.vae", "VaeOptions", "VaeFamily"),
}


def build_family(cfg: TrainConfig, data: DataInfo) -> Family:
    """The family object for `cfg.family` (families are imported only when used)."""
    import importlib

    from ..errors import unknown_name

    if cfg.family not in FAMILIES:
        raise unknown_name("model family", cfg.family, list(FAMILIES))
    module, opts_name, cls_name = FAMILIES[cfg.family]
    mod = importlib.import_module(module, __package__)
    try:
        opts = getattr(mod, opts_name)(**cfg.family_options)
    except TypeError as exc:
        raise ImagesynthError(f"bad {cfg.family} option: {exc}") from None
    return getattr(mod, cls_name)(opts, data)


def load_data(cfg: TrainConfig, progress: bool):
    """The dataset as tensors and the facts a family needs about it."""
    options = dict(cfg.data_options)
    options.setdefault("size", cfg.size)
    ds = get_dataset(cfg.data, **options)
    if cfg.cond == "class" and not ds.num_classes:
        raise ImagesynthError(f"dataset {cfg.data!r} has no class labels; use --cond none")
    data = load_tensor_data(ds, progress=progress, captions=cfg.cond == "text")
    if cfg.cond != "class":
        data.labels = None
    num_classes = ds.num_classes if cfg.cond == "class" else 0
    info = DataInfo(
        ds.name, ds.size, ds.channels, num_classes, list(ds.class_names) if num_classes else []
    )
    return data, info, ds.describe()


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine to 0 over `steps` (or constant)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant" or cfg.steps is None:
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, betas, device):
    kw = {"lr": cfg.lr, "betas": betas, "weight_decay": cfg.weight_decay}
    try:  # fused AdamW runs on CPU and CUDA in recent torch: one kernel for all tensors
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, foreach=True, **kw)


class Trainer:
    """Runs a family's phases over a dataset; see module docstring for what it guarantees."""

    def __init__(
        self,
        cfg: TrainConfig,
        resume: str | None = None,
        *,
        on_step: Callable[[Trainer, int, float], bool | None] | None = None,
    ) -> None:
        """`on_step(trainer, step, loss)` runs after every optimizer step; True stops the run
        (as `request_stop()` does) with a checkpoint, samples and the model saved."""
        from accelerate import Accelerator

        self.cfg = cfg.validate()
        self.on_step = on_step
        if cfg.mixed_precision != "no" and not torch.cuda.is_available():
            raise ImagesynthError(
                f"mixed precision {cfg.mixed_precision!r} needs a GPU; on CPU bf16/fp16 run "
                "~100x slower than fp32 here: use --mixed-precision no"
            )
        mps = getattr(torch.backends, "mps", None)
        on_cpu = not torch.cuda.is_available() and not (mps and mps.is_available())
        # cpu=True is what makes accelerate set up gloo for several CPU processes
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, cpu=on_cpu)
        self.main = self.acc.is_main_process
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device
        if cfg.channels_last is None:
            self.channels_last = self.device.type == "cuda"
        else:
            self.channels_last = cfg.channels_last
        self.run_dir, self.start_step = self._setup_run(resume)
        self.data, self.data_info, self.data_desc = load_data(cfg, progress=self.main)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.family = build_family(cfg, self.data_info)
        self.family.prepare(self.data, self.device)
        self.phases = self.family.phases()
        self.raw_nets = dict(self.family.nets)
        for net in self.raw_nets.values():
            net.to(self.device)
            if self.channels_last:
                net.to(memory_format=torch.channels_last)
        self.emas = {k: EMA(self.raw_nets[k], cfg.ema_decay) for k in self.family.ema_nets}
        self.opts = {}
        for ph in self.phases:
            params = [p for k in ph.nets for p in self.raw_nets[k].parameters() if p.requires_grad]
            self.opts[ph.name] = _make_optimizer(params, cfg, ph.betas, self.device)
        self.bad_total = 0
        self.elapsed_before = 0.0
        self.cpu_before = 0.0
        self.t_start, self.c_start = time.perf_counter(), time.process_time()
        self.stop_reason: str | None = None
        if self.start_step:
            self._load_checkpoint()
        names = list(self.raw_nets)
        prepared = self.acc.prepare(*self.raw_nets.values(), *self.opts.values())
        self.nets = dict(zip(names, prepared[: len(names)], strict=True))
        self.opts = dict(zip(self.opts, prepared[len(names) :], strict=True))
        self.order = BatchOrder(len(self.data), cfg.batch, self.world, self.rank, cfg.seed)
        self.evaluator = self._make_evaluator()
        self.tb = None
        if cfg.tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImagesynthError("--tensorboard needs: pip install tensorboard") from None
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    # ----- run directory and checkpoints -------------------------------------------------
    def _setup_run(self, resume: str | None) -> tuple[Path, int]:
        from accelerate.utils import broadcast_object_list

        cfg = self.cfg
        payload: list[Any] = [None, 0, None]
        if self.main:
            try:
                if resume:
                    run = rundir.find_run(cfg.runs_dir, resume)
                    old = json.loads((run / "config.json").read_text())
                    diff = config_diff(old, cfg.to_dict())
                    if diff:
                        raise ImagesynthError(
                            f"cannot resume {run.name}: its config differs in " + "; ".join(diff)
                        )
                    ckpt = rundir.latest_checkpoint(run)
                    step = (
                        int(json.loads((ckpt / "checkpoint.json").read_text())["step"])
                        if ckpt
                        else 0
                    )
                    write_json_atomic(run / "config.json", cfg.to_dict())
                    payload = [str(run), step, None]
                else:
                    tag = cfg.tag or str(cfg.family_options.get("preset", "tiny"))
                    run = rundir.create_run_dir(
                        cfg.runs_dir,
                        data=cfg.data,
                        family=cfg.family,
                        tag=tag,
                        config=cfg.to_dict(),
                    )
                    payload = [str(run), 0, None]
            except ImagesynthError as exc:
                payload = [None, 0, str(exc)]
        if self.world > 1:
            broadcast_object_list(payload)
        if payload[2]:
            raise ImagesynthError(payload[2])
        return Path(payload[0]), int(payload[1])

    def _save_checkpoint(self, step: int) -> None:
        for k, net in self.raw_nets.items():
            for name, t in net.state_dict().items():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise TrainingDiverged(
                        f"network {k!r} has non-finite weights ({name}) at step {step}; "
                        "not writing a checkpoint"
                    )
        if not self.main:
            return

        def write(folder: Path) -> None:
            for k, net in self.raw_nets.items():
                save_tensors(folder / f"net-{k}.safetensors", net.state_dict())
            for k, ema in self.emas.items():
                save_tensors(folder / f"ema-{k}.safetensors", ema.state_dict())
            for name, opt in self.opts.items():
                save_optimizer(opt, folder, f"optim-{name}")
            state = {
                "step": step,
                "ema_updates": {k: e.updates for k, e in self.emas.items()},
                "bad_total": self.bad_total,
                "elapsed_s": self.elapsed_before + time.perf_counter() - self.t_start,
                "cpu_s": self.cpu_before + time.process_time() - self.c_start,
            }
            (folder / "trainer.json").write_text(json.dumps(state))

        rundir.save_checkpoint(self.run_dir, step, write, keep=self.cfg.keep, extra={"step": step})

    def _load_checkpoint(self) -> None:
        ckpt = rundir.latest_checkpoint(self.run_dir)
        if ckpt is None:
            return
        state = json.loads((ckpt / "trainer.json").read_text())
        for k, net in self.raw_nets.items():
            net.load_state_dict(load_tensors(ckpt / f"net-{k}.safetensors"))
        for k, ema in self.emas.items():
            ema.load_state_dict(
                load_tensors(ckpt / f"ema-{k}.safetensors"), state["ema_updates"][k]
            )
        for name, opt in self.opts.items():
            load_optimizer(opt, ckpt, f"optim-{name}")
        self.bad_total = state["bad_total"]
        self.elapsed_before = state["elapsed_s"]
        self.cpu_before = state.get("cpu_s", 0.0)
        self.start_step = state["step"]

    # ----- the loop ---------------------------------------------------------------------
    def request_stop(self, reason: str = "stopped") -> None:
        """Stop before the next step; the run saves a checkpoint, samples and the model.

        Safe to call from another thread (a server's cancel button) or from `on_step`.
        """
        self.stop_reason = reason

    def budget_elapsed(self) -> float:
        """Seconds spent so far on the clock the time budget counts (`budget_clock`)."""
        if self.cfg.budget_clock == "cpu":
            return self.cpu_before + time.process_time() - self.c_start
        return self.elapsed_before + time.perf_counter() - self.t_start

    def _stop_check(self) -> str | None:
        """Why the run stops before this step (a request or the time budget), or None."""
        over = self.cfg.minutes is not None and self.budget_elapsed() >= self.cfg.minutes * 60
        code = 2.0 if self.stop_reason is not None else 1.0 if over else 0.0
        if self.world > 1:  # every rank stops at the same step, as rank 0 decides
            from accelerate.utils import broadcast

            code = float(broadcast(torch.tensor([code], device=self.device)).item())
        if code == 2.0:
            return self.stop_reason or "stopped"
        return "time" if code == 1.0 else None

    def _train_step(self, step: int) -> tuple[float, float, bool, dict[str, float]]:
        cfg, acc = self.cfg, self.acc
        loss_sum, extras = 0.0, {}
        all_finite = True
        norm_val = 0.0
        for p_i, ph in enumerate(self.phases):
            if step % ph.every:
                continue
            opt = self.opts[ph.name]
            factor = lr_factor(cfg, step) * ph.lr_scale
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor
            nets = [self.nets[k] for k in ph.nets]
            params = [p for k in ph.nets for p in self.raw_nets[k].parameters()]
            for micro in range(cfg.grad_accum):
                gen = torch.Generator().manual_seed(
                    step_seed(cfg.seed, self.rank, step, micro, p_i)
                )
                torch.manual_seed(step_seed(cfg.seed, self.rank, step, micro, p_i, 1))
                idx = self.order.indices(step * cfg.grad_accum + micro)
                batch = make_batch(
                    self.data,
                    idx,
                    flip=cfg.flip,
                    generator=gen,
                    device=self.device,
                    channels_last=self.channels_last,
                )
                batch["step"] = step
                with contextlib.ExitStack() as stack:
                    if micro < cfg.grad_accum - 1:
                        for net in nets:
                            stack.enter_context(acc.no_sync(net))
                    with acc.autocast():
                        loss, logs = ph.loss(self.nets, batch, gen)
                    acc.backward(loss / cfg.grad_accum)
                loss_sum += float(loss.detach()) / cfg.grad_accum
                for k, v in logs.items():
                    extras[f"{ph.name}/{k}"] = (
                        extras.get(f"{ph.name}/{k}", 0.0) + v / cfg.grad_accum
                    )
            max_norm = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
            norm = acc.clip_grad_norm_(params, max_norm)
            norm_val = float(norm) if norm is not None else 0.0
            # after the all-reduce every rank sees the same norm, so all skip together
            finite = math.isfinite(norm_val) and math.isfinite(loss_sum)
            if finite or cfg.mixed_precision == "fp16":  # fp16: the grad scaler skips infs
                opt.step()
            all_finite &= finite
            opt.zero_grad(set_to_none=True)
        if all_finite:
            for k, ema in self.emas.items():
                ema.update(self.raw_nets[k])
        return loss_sum, norm_val, all_finite, extras

    def _write_samples(self, step: int) -> None:
        if not self.main:
            return
        nets = {
            k: (self.emas[k].module if k in self.emas else self.raw_nets[k]) for k in self.raw_nets
        }
        x = self.family.sample(nets, self.cfg.sample_n, seed=1234)
        grid = make_grid(tensor_to_pil(x), nrow=math.ceil(math.sqrt(self.cfg.sample_n)))
        params = {
            "prompt": f"training samples at step {step}",
            "seed": 1234,
            "step": step,
            "run": self.run_dir.name,
            **self.family.sample_params(),
        }
        save_png(grid, self.run_dir / "samples" / f"step-{step:08d}.png", params)

    # ----- evaluation during training ----------------------------------------------------
    def _make_evaluator(self) -> Any:
        """A TrainingEvaluator on the main process when --eval-every is on (reference cached)."""
        cfg = self.cfg
        if not cfg.eval_every or not self.main:
            return None
        from ..metrics.training import TrainingEvaluator

        ref_options = None
        if cfg.eval_ref is None:  # the training data itself, with its options (label mode, ...)
            ref_options = {k: v for k, v in cfg.data_options.items() if k != "size"} or None
        return TrainingEvaluator(
            cfg.eval_ref or cfg.data,
            self.data_info.size,
            cfg.eval_metrics,
            n=cfg.eval_n,
            extractor=cfg.eval_extractor,
            best_metric=cfg.eval_best,
            seed=cfg.seed,
            ref_options=ref_options,
            convert_channels=True,
            progress=cfg.progress,
        )

    def _sample_for_eval(self, n: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """n samples from the EMA networks in chunks; image i of a conditional run has label
        i % num_classes (the families' sampling convention)."""
        nets = {
            k: (self.emas[k].module if k in self.emas else self.raw_nets[k]) for k in self.raw_nets
        }
        chunks, labels, k = [], [], self.data_info.num_classes
        for start in range(0, n, EVAL_CHUNK):
            m = min(EVAL_CHUNK, n - start)
            chunks.append(self.family.sample(nets, m, seed=EVAL_SEED + start).float().cpu())
            if k:
                labels.append(torch.arange(m) % k)
        images = torch.cat(chunks)
        return (images, torch.cat(labels)) if k else images

    def _evaluate(self, step: int) -> None:
        """Append to metrics.jsonl, redraw plots/metrics.png, keep best/ by the chosen metric."""
        if self.evaluator is not None:
            from ..metrics.training import plot_metrics

            ev = self.evaluator
            values = ev(self._sample_for_eval, step)
            rundir.append_jsonl(self.run_dir / "metrics.jsonl", ev.row(step, values))
            rows = rundir.read_jsonl(self.run_dir / "metrics.jsonl")
            plot_metrics(rows, self.run_dir / "plots" / "metrics.png", title=self.run_dir.name)
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            log.info(f"eval at step {step}: {shown}")
            best_path = self.run_dir / "best.json"
            best = json.loads(best_path.read_text()) if best_path.is_file() else None
            if ev.is_better(values, best["values"] if best else None):
                record = {
                    "dataset": self.data_desc,
                    "recipe": {**self.cfg.to_dict(), "trained_steps": step},
                    "metrics": {**values, "step": step, "extractor": ev.extractor.spec},
                }
                nets = {
                    k: (self.emas[k].module if k in self.emas else self.raw_nets[k])
                    for k in self.raw_nets
                }
                self.family.save(self.run_dir / "best", nets, record)
                write_json_atomic(
                    best_path, {"step": step, "metric": ev.best_metric, "values": values}
                )
        self.acc.wait_for_everyone()

    def _plot(self) -> None:
        if self.main:
            from .plots import plot_stats

            plot_stats(self.run_dir)

    def train(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.t_start, self.c_start = time.perf_counter(), time.process_time()
        step = self.start_step
        total = cfg.steps
        bar = tqdm(
            total=total,
            initial=step,
            desc=f"train {cfg.family}",
            unit="step",
            disable=not (self.main and cfg.progress),
            dynamic_ncols=True,
        )
        stats_path = self.run_dir / "stats.jsonl"
        bad_run, losses, extras_acc, t_log, n_log = 0, [], {}, time.perf_counter(), 0
        stopped = "done"
        last_ckpt = last_eval = step
        try:
            while total is None or step < total:
                why = self._stop_check()
                if why is not None:
                    stopped = why
                    break
                loss, norm, ok, extras = self._train_step(step)
                step += 1
                n_log += 1
                if self.on_step is not None and self.on_step(self, step, loss):
                    self.request_stop()
                if ok:
                    bad_run = 0
                    losses.append(loss)
                    for k, v in extras.items():
                        extras_acc[k] = extras_acc.get(k, 0.0) + v
                else:
                    bad_run += 1
                    self.bad_total += 1
                    if bad_run >= cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"loss or gradients were non-finite for {bad_run} steps in a row "
                            f"(at step {step}); stopped without saving them. Last good "
                            f"checkpoint: {rundir.latest_checkpoint(self.run_dir) or 'none'}. "
                            "Try a lower --lr or --clip-grad"
                        )
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    now = time.perf_counter()
                    mean = torch.tensor([sum(losses) / max(1, len(losses))], device=self.device)
                    mean = float(self.acc.reduce(mean, "mean")) if self.world > 1 else float(mean)
                    images = n_log * cfg.batch * cfg.grad_accum * self.world
                    rec = {
                        "step": step,
                        "loss": mean,
                        "lr": cfg.lr * lr_factor(cfg, step - 1),
                        "grad_norm": norm,
                        "images_per_s": images / max(now - t_log, 1e-9),
                        "epoch": self.order.epoch(step * cfg.grad_accum),
                        "nonfinite_skipped": self.bad_total,
                        "elapsed_s": self.elapsed_before + now - self.t_start,
                        "cpu_s": self.cpu_before + time.process_time() - self.c_start,
                        **{k: v / max(1, len(losses)) for k, v in extras_acc.items()},
                    }
                    if self.main:
                        rundir.append_jsonl(stats_path, rec)
                        if self.tb is not None:
                            for k, v in rec.items():
                                if k != "step":
                                    self.tb.add_scalar(k, v, step)
                    post = {"loss": f"{mean:.4f}", "img_s": f"{rec['images_per_s']:.0f}"}
                    if cfg.minutes is not None:  # the time budget's ETA when it binds
                        left = max(0.0, cfg.minutes * 60 - self.budget_elapsed())
                        post["left"] = time.strftime("%H:%M:%S", time.gmtime(left))
                    bar.set_postfix(post)
                    losses, extras_acc, t_log, n_log = [], {}, now, 0
                if step % cfg.sample_every == 0:
                    self._write_samples(step)
                    self._plot()
                if step % cfg.ckpt_every == 0:
                    self._save_checkpoint(step)
                    last_ckpt = step
                if cfg.eval_every and step % cfg.eval_every == 0:
                    self._evaluate(step)
                    last_eval = step
        except KeyboardInterrupt:
            stopped = "interrupted"
            log.warning(f"interrupted at step {step}; saving a checkpoint")
        finally:
            bar.close()
        if step != last_ckpt:
            self._save_checkpoint(step)
        self._write_samples(step)
        self._plot()
        if cfg.eval_every and step != last_eval:
            self._evaluate(step)
        model_dir = None
        if self.main:
            nets = {
                k: (self.emas[k].module if k in self.emas else self.raw_nets[k])
                for k in self.raw_nets
            }
            record = {
                "dataset": self.data_desc,
                "recipe": {**self.cfg.to_dict(), "trained_steps": step, "run": self.run_dir.name},
            }
            model_dir = self.family.save(self.run_dir / "model", nets, record)
        if self.tb is not None:
            self.tb.close()
        self.acc.wait_for_everyone()
        return TrainResult(self.run_dir, model_dir, step, rundir.read_jsonl(stats_path), stopped)


def train(
    cfg: TrainConfig | None = None, *, resume: str | None = None, **options: Any
) -> TrainResult:
    """Train a model: `train(family="diffusion", data="digits", cond="class", steps=2000)`."""
    if cfg is None:
        try:
            cfg = TrainConfig(**options)
        except TypeError as exc:
            raise ImagesynthError(f"bad training option: {exc}") from None
    elif options:
        raise ImagesynthError("pass either a TrainConfig or keyword options, not both")
    return Trainer(cfg, resume=resume).train()
