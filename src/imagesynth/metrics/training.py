"""Evaluation during training: `TrainingEvaluator` and the metrics plot of a run."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ImagesynthError
from .protocol import lower_is_better, parse_metrics

SampleFn = Callable[[int], "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"]


class TrainingEvaluator:
    """Set metrics of a model's samples at training time, against cached real features.

    Contract for the trainer:
      ev = TrainingEvaluator(ref="digits", size=16, metrics="fid,kid", n=2000)  # once; caches
      values = ev(sample_fn, step)   # sample_fn(n) -> images (n, C, H, W) in [-1, 1], or
                                     # (images, labels) for class-conditional models ("acc")
      values == {"fid": .., "fid_floor": .., "kid": .., "kid_floor": ..}  (floats)
      row = ev.row(step, values)     # one metrics.jsonl line: step, values, protocol ids
      ev.is_better(new, best)        # by `best_metric` (default: the first metric)
    Reference and held-out features are computed once (and cached on disk); each call
    extracts features of n fresh samples only. `last_scores` holds the full score records.
    """

    def __init__(
        self,
        ref: str,
        size: int,
        metrics: str | Sequence[str] = ("fid",),
        n: int = 2000,
        extractor: str | None = None,
        *,
        best_metric: str | None = None,
        seed: int = 0,
        n_ref: int | None = None,
        ref_options: dict[str, Any] | None = None,
        convert_channels: bool = False,
        progress: bool = False,
        device: str | None = None,
    ) -> None:
        from .evaluate import default_extractor, held_out, make_reference, reference_features
        from .extractors import load_extractor

        self.metrics = parse_metrics(metrics, kind="set")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ImagesynthError(f"--eval-n must be an integer >= 2, got {n!r}")
        self.best_metric = best_metric or self.metrics[0]
        if self.best_metric not in self.metrics:
            raise ImagesynthError(
                f"best metric {self.best_metric!r} is not among the evaluated metrics "
                f"{', '.join(self.metrics)}"
            )
        self.ref, self.size, self.n, self.seed = ref, size, n, seed
        self.progress, self.convert_channels = progress, convert_channels
        self.extractor = load_extractor(
            extractor or default_extractor(ref), device=device, progress=progress
        )
        from ..data.base import parse_data_spec

        infinite = parse_data_spec(ref)[0] == "shapes"
        self.reference = make_reference(
            ref, size, n=n_ref or (n if infinite else None), seed=seed, options=ref_options
        )
        self.ref_options, self.n_ref = ref_options, n_ref or (n if infinite else None)
        # computed now so that the first evaluation costs only the samples' features
        reference_features(self.reference, self.extractor, progress=progress)
        with contextlib.suppress(ImagesynthError):  # no held-out split: values without floor
            reference_features(held_out(self.reference, n), self.extractor, progress=progress)
        self.last_scores: list[dict[str, Any]] = []
        self.protocol_ids: dict[str, str] = {}

    def __call__(self, sample_fn: SampleFn, step: int) -> dict[str, float]:
        """Sample n images with `sample_fn(n)` and return the metric values (and floors)."""
        from .evaluate import evaluate_samples

        out = sample_fn(self.n)
        images, labels = out if isinstance(out, tuple) else (out, None)
        if not isinstance(images, torch.Tensor) or images.shape[0] != self.n:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ImagesynthError(f"sample_fn({self.n}) must return {self.n} images, got {got}")
        result = evaluate_samples(
            images,
            self.ref,
            self.metrics,
            extractor=self.extractor,
            labels=None if labels is None else labels.tolist(),
            class_names=self.extractor.class_names if labels is not None else None,
            n_ref=self.n_ref,
            ref_size=self.size,
            ref_options=self.ref_options,
            seed=self.seed,
            convert_channels=self.convert_channels,
            progress=self.progress,
            source=f"step {step}",
        )
        self.last_scores = result["scores"]
        self.protocol_ids = {s["metric"]: s["protocol"]["protocol_id"] for s in self.last_scores}
        return {k: float(v) for k, v in result["values"].items()}

    def row(self, step: int, values: dict[str, float]) -> dict[str, Any]:
        """The metrics.jsonl line for one evaluation."""
        return {
            "step": int(step),
            **values,
            "n": self.n,
            "extractor": self.extractor.spec,
            "protocol": dict(self.protocol_ids),
        }

    def is_better(self, new: dict[str, float], best: dict[str, float] | None) -> bool:
        """Whether `new` beats `best` on `best_metric` (lower FID / KID, higher IS / ...)."""
        if best is None or self.best_metric not in best:
            return True
        a, b = new[self.best_metric], best[self.best_metric]
        if math.isnan(a):
            return False
        return a < b if lower_is_better(self.best_metric) else a > b


def plot_metrics(rows: Sequence[dict[str, Any]], out: str | Path, title: str = "") -> Path | None:
    """One panel per metric against the step, its real floor dashed; written as PNG."""
    names = [k for k in (rows[0] if rows else {}) if _is_metric(k)]
    if not rows or not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), dpi=100, squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes[0], names, strict=True):
        ax.plot(steps, [r.get(name, math.nan) for r in rows], marker="o", ms=3, label=name)
        floor = [r.get(f"{name}_floor") for r in rows]
        if any(f is not None for f in floor):
            ax.plot(steps, [math.nan if f is None else f for f in floor], "--", label="real floor")
        ax.set_xlabel("step")
        ax.set_title(
            f"{name} ({'lower' if lower_is_better(name) else 'higher'} is better)", fontsize=9
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out


def _is_metric(key: str) -> bool:
    from .protocol import METRICS

    return key in METRICS
