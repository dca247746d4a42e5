"""The trainer's options: one dataclass, saved resolved in every run's config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ImagesynthError

# keys that may change when resuming a run; any other difference is refused
RESUMABLE_KEYS = frozenset(
    {
        "steps",
        "minutes",
        "budget_clock",
        "log_every",
        "sample_every",
        "ckpt_every",
        "keep",
        "tensorboard",
        "runs_dir",
        "max_bad_steps",
        "progress",
        "eval_every",
        "eval_n",
        "eval_metrics",
        "eval_ref",
        "eval_extractor",
        "eval_best",
    }
)


@dataclass
class TrainConfig:
    family: str = "diffusion"
    data: str = "shapes"  # dataset spec: shapes | digits | photos | textures | folder:PATH
    size: int = 32
    cond: str = "none"  # none | class | text
    data_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"label_mode": "color"}
    family_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"objective": "v"}
    steps: int | None = None  # optimizer steps; None with `minutes` = until time is up
    minutes: float | None = None  # time budget, measured by `budget_clock`
    budget_clock: str = "wall"  # wall | cpu (process CPU time: fair on a shared machine)
    batch: int = 32  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine | constant (after linear warmup)
    warmup_steps: int = 100
    weight_decay: float = 0.0
    clip_grad: float = 1.0  # max gradient norm; 0 disables clipping
    ema_decay: float = 0.999
    mixed_precision: str = "no"  # no | fp16 | bf16 (GPU only)
    channels_last: bool | None = None  # None: on for CUDA (tensor cores), off on CPU (no gain)
    flip: bool = True  # random horizontal flips where the dataset allows them
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    sample_n: int = 16
    ckpt_every: int = 500
    keep: int = 3
    max_bad_steps: int = 5  # non-finite steps in a row that stop the run
    tensorboard: bool = False
    runs_dir: str = "runs"
    tag: str = ""
    progress: bool = True
    # evaluation during training (metrics.jsonl, plots/metrics.png, best/ model by eval_best)
    eval_every: int = 0  # steps between evaluations; 0 = off
    eval_n: int = 2000  # samples per evaluation
    eval_metrics: str = "fid,kid"  # any set metrics: fid, kid, is, precision, recall, acc
    eval_ref: str | None = None  # reference dataset spec; None = the training data
    eval_extractor: str | None = None  # domain:NAME | inception:PATH | random; None = default
    eval_best: str | None = None  # metric that picks best/; None = the first of eval_metrics

    def validate(self) -> TrainConfig:
        def positive(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ImagesynthError(f"{name} must be > 0, got {v!r}")

        for name in (
            "batch",
            "grad_accum",
            "log_every",
            "sample_every",
            "ckpt_every",
            "keep",
            "max_bad_steps",
            "sample_n",
        ):
            positive(name)
        positive("steps", allow_none=True)
        positive("minutes", allow_none=True)
        if self.steps is None and self.minutes is None:
            raise ImagesynthError("give --steps N or --minutes M (or both)")
        if self.budget_clock not in ("wall", "cpu"):
            raise ImagesynthError(f"budget_clock must be wall or cpu, got {self.budget_clock!r}")
        if not 0 < self.lr < 1:
            raise ImagesynthError(f"lr must be in (0, 1), got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ImagesynthError(
                f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}"
            )
        if self.warmup_steps < 0 or self.clip_grad < 0 or self.weight_decay < 0:
            raise ImagesynthError("warmup_steps, clip_grad and weight_decay must be >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ImagesynthError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ImagesynthError(
                f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}"
            )
        if (
            isinstance(self.eval_every, bool)
            or not isinstance(self.eval_every, int)
            or (self.eval_every < 0)
        ):
            raise ImagesynthError(f"eval_every must be an integer >= 0, got {self.eval_every!r}")
        if isinstance(self.eval_n, bool) or not isinstance(self.eval_n, int) or self.eval_n < 2:
            raise ImagesynthError(f"eval_n must be an integer >= 2, got {self.eval_n!r}")
        if self.eval_every:
            from ..metrics.protocol import parse_metrics

            names = parse_metrics(self.eval_metrics, kind="set")
            if "acc" in names and self.cond != "class":
                raise ImagesynthError("eval metric acc needs --cond class")
            if self.eval_best is not None and self.eval_best not in names:
                raise ImagesynthError(
                    f"eval_best {self.eval_best!r} is not among eval_metrics {', '.join(names)}"
                )
        if self.cond not in ("none", "class", "text"):
            raise ImagesynthError(f"cond must be none, class or text, got {self.cond!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (other than RESUMABLE_KEYS) whose values differ, as 'key: old -> new'."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE_KEYS:
            continue
        if old.get(key) != new.get(key):
            out.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return out
