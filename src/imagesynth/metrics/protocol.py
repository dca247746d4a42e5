"""Metric registry and score protocols: every number is stored with how it was measured.

A score is `{"metric", "value", "protocol"}`; the protocol names the metric's settings,
sample counts, extractor and its weights' sha256, resize filter and size, reference set and
seed, and the library version. `protocol_id` hashes everything but the sample's own
identity, so two scores are comparable exactly when their protocol ids are equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ImagesynthError, unknown_name

PROTOCOL_VERSION = 1  # bump when a metric's computation changes


@dataclass(frozen=True)
class MetricInfo:
    name: str
    kind: str  # "set" (samples vs references) or "paired" (image i of A vs image i of B)
    lower_is_better: bool
    description: str
    needs_logits: bool = False
    needs_labels: bool = False


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("fid", "set", True, "Frechet distance of extractor features (Heusel 2017)"),
        MetricInfo("kid", "set", True, "unbiased polynomial-kernel MMD^2 (Binkowski 2018)"),
        MetricInfo("is", "set", False, "Inception Score of extractor logits (Salimans 2016)", True),
        MetricInfo("precision", "set", False, "k-NN precision (Kynkaanniemi 2019)"),
        MetricInfo("recall", "set", False, "k-NN recall (Kynkaanniemi 2019)"),
        MetricInfo("acc", "set", False, "class accuracy of conditional samples", True, True),
        MetricInfo("ssim", "paired", False, "SSIM, Gaussian 11x11 sigma 1.5 (Wang 2004)"),
        MetricInfo("ms-ssim", "paired", False, "multi-scale SSIM (Wang 2003)"),
        MetricInfo("psnr", "paired", False, "peak signal-to-noise ratio in dB, 8-bit range"),
        MetricInfo("lpips", "paired", True, "published LPIPS (Zhang 2018), weights from files"),
        MetricInfo(
            "domain-perceptual",
            "paired",
            True,
            "NOT LPIPS: unit-normalised feature distance on our domain extractor, uncalibrated",
        ),
    )
}
ALIASES = {"pr": ("precision", "recall"), "prec": ("precision",), "accuracy": ("acc",)}


def parse_metrics(spec: str | Sequence[str], kind: str | None = None) -> list[str]:
    """`"fid,kid,pr"` -> ["fid", "kid", "precision", "recall"], checked against the registry."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        for m in ALIASES.get(name, (name,)):
            if m not in METRICS:
                raise unknown_name("metric", name, [*METRICS, *ALIASES])
            if kind is not None and METRICS[m].kind != kind:
                valid = [k for k, v in METRICS.items() if v.kind == kind]
                raise ImagesynthError(
                    f"metric {m!r} is a {METRICS[m].kind} metric; here expected one of: "
                    f"{', '.join(valid)}"
                )
            if m not in out:
                out.append(m)
    if not out:
        raise ImagesynthError(f"no metrics given in {spec!r}")
    return out


def lower_is_better(metric: str) -> bool:
    base = metric.removesuffix("_floor")
    if base not in METRICS:
        raise unknown_name("metric", base, list(METRICS))
    return METRICS[base].lower_is_better


def protocol_id(protocol: Mapping[str, Any]) -> str:
    """12 hex digits identifying a protocol (ignoring fields that describe the sample only)."""
    core = {k: v for k, v in protocol.items() if k not in SAMPLE_FIELDS}
    text = json.dumps(core, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# fields that say which samples were measured, not how: they do not change comparability
SAMPLE_FIELDS = ("source", "protocol_id", "sample_size_px", "sample_channels", "sampling")


def make_score(metric: str, value: float, protocol: Mapping[str, Any], **extra: Any) -> dict:
    """One score record: metric, value, its protocol (with protocol_id) and extras (std, ...)."""
    proto = {**protocol, "metric": metric, "protocol_version": PROTOCOL_VERSION}
    proto["protocol_id"] = protocol_id(proto)
    return {"metric": metric, "value": float(value), **extra, "protocol": proto}


def comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two score records were measured the same way."""
    return (
        a["metric"] == b["metric"] and a["protocol"]["protocol_id"] == b["protocol"]["protocol_id"]
    )


def protocol_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The protocol fields on which two score records differ (`key: x != y`)."""
    pa, pb = a["protocol"], b["protocol"]
    keys = sorted((set(pa) | set(pb)) - set(SAMPLE_FIELDS))
    return [f"{k}: {pa.get(k)!r} != {pb.get(k)!r}" for k in keys if pa.get(k) != pb.get(k)]


def group_comparable(scores: Iterable[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Score records grouped so that each group shares metric and protocol."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in scores:
        groups.setdefault((s["metric"], s["protocol"]["protocol_id"]), []).append(s)
    return list(groups.values())


def format_value(metric: str, value: float) -> str:
    if metric == "kid":
        return f"{value:.5f}"
    if metric in ("psnr", "fid", "is"):
        return f"{value:.3f}"
    return f"{value:.4f}"


def format_scores(scores: Sequence[Mapping[str, Any]]) -> str:
    """A text table: one line per score with its floor, then each protocol once."""
    if not scores:
        return "(no scores)"
    lines = [f"{'metric':<18} {'value':>12} {'real floor':>12}  n / n_ref   protocol"]
    protos: dict[str, Mapping[str, Any]] = {}
    for s in scores:
        p = s["protocol"]
        floor = s.get("floor")
        floor_txt = format_value(s["metric"], floor) if floor is not None else "-"
        counts = f"{p.get('n_samples', p.get('n_pairs', '-'))} / {p.get('n_refs', '-')}"
        value = format_value(s["metric"], s["value"])
        if s.get("std") is not None:
            value += f" +-{format_value(s['metric'], s['std'])}"
        lines.append(
            f"{s['metric']:<18} {value:>12} {floor_txt:>12}  {counts:<11} {p['protocol_id']}"
        )
        protos.setdefault(p["protocol_id"], p)
    skip = ("protocol_id", "metric")
    shared = {
        k: v
        for k, v in next(iter(protos.values())).items()
        if k not in skip and all(q.get(k) == v for q in protos.values())
    }
    lines.append(f"protocol (all rows): {json.dumps(shared, sort_keys=True, default=str)}")
    for pid, p in protos.items():
        own = {k: v for k, v in p.items() if k not in skip and k not in shared}
        if own:
            lines.append(f"protocol {pid} also: {json.dumps(own, sort_keys=True, default=str)}")
    floors = [s for s in scores if s.get("floor_n") not in (None, s["protocol"].get("n_samples"))]
    for s in floors[:1]:
        lines.append(
            f"note: the real floor uses {s['floor_n']} held-out real images (fewer than "
            f"n={s['protocol'].get('n_samples')}): compare it with caution"
        )
    return "\n".join(lines)


def check_known(metric: str) -> MetricInfo:
    if metric not in METRICS:
        raise unknown_name("metric", metric, list(METRICS))
    return METRICS[metric]


def require_comparable(scores: Sequence[Mapping[str, Any]]) -> None:
    """Raise when scores of one metric were measured under different protocols."""
    for group in _by_metric(scores).values():
        first = group[0]
        for other in group[1:]:
            if not comparable(first, other):
                diff = "; ".join(protocol_differences(first, other)[:3])
                raise ImagesynthError(
                    f"{first['metric']} scores were measured under different protocols "
                    f"({diff}); they are not comparable"
                )


def _by_metric(scores: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for s in scores:
        out.setdefault(s["metric"], []).append(s)
    return out
