"""Counts of the built-in architectures, shipped with the package: estimates without torch.

Counting on meta is quick once torch and diffusers are imported, but importing them takes
most of ten seconds on a small CPU, far more than the count. So the build step
(`python -m imagesynth.estimator.table`) counts every built-in architecture (the pixel
presets, SD 1.5, SDXL and its refiner, each family's presets at their default size) at a
few batches and sizes and stores, for every kernel, its FLOPs and bytes as an exact
polynomial in batch B and pixel count p:

    c0 + c1 p + c2 p^2 + B (a0 + a1 p + a2 p^2)

Weights give the terms without B, activations those with B; convolutions and linear layers
are linear in p, self-attention quadratic, cross-attention linear. Six counts (B = 2, 3 at
three sizes; batch 1 has an entry of its own, since some kernels are views there) fix the
six coefficients, and a count at another batch and size must be reproduced (kernels to
1e-5, round-off of the p^2 terms; peaks of the live set within 3 %) or the entry is not
stored. Kernels
that cost the same at every point are stored once with their multiplicity. Models built for
one size (GAN, VAE, PixelCNN presets) vary in B only. Sizes that are not a multiple of the
architecture's full down-sampling factor are counted on meta as before.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from .count import COUNT_VERSION, Counts

TABLE_PATH = Path(__file__).with_name("counts_table.json.gz")
_SCALARS = (
    "flops_forward",
    "flops_backward",
    "param_count",
    "param_bytes",
    "input_bytes",
    "peak_live_bytes",
    "saved_bytes",
    "train_peak_live_bytes",
    "module_calls",
    "param_tensors",
)
_PEAKS = ("peak_live_bytes", "saved_bytes", "train_peak_live_bytes")


def key_of(*parts: Any) -> str:
    text = json.dumps([COUNT_VERSION, *parts], sort_keys=True, default=list)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


@cache
def _load() -> dict[str, Any]:
    if not TABLE_PATH.is_file():
        return {"entries": {}, "archs": {}, "families": {}}
    with gzip.open(TABLE_PATH, "rt") as f:
        return json.load(f)


def archs() -> dict[str, Any]:
    """Preset name -> its Arch as a dict (so a preset's estimate needs no torch)."""
    return _load()["archs"]


def families() -> dict[str, Any]:
    """Family preset name -> its FamilyModel fields at the default size."""
    return _load()["families"]


def _basis(kind: str, batch: int, size: int, base: int) -> list[float]:
    p = (size / base) ** 2
    return {
        "bp": [1.0, p, p * p, float(batch), batch * p, batch * p * p],
        "p": [1.0, p, p * p],
        "b": [1.0, float(batch)],
        "1": [1.0],
    }[kind]


def lookup(key: str, batch: int, size: int) -> tuple[Counts, dict[str, Any]] | None:
    """(counts, extra) from the table, or None where the table has no exact answer.

    Batch 1 has its own entry: some kernels (broadcasts, expands) are views at batch 1.
    """
    entry = _load()["entries"].get(key + "|b1" if batch == 1 else key)
    if entry is None:
        return None
    base = entry["base"]
    if entry["basis"] in ("b", "1"):
        if size != entry["size"]:
            return None
    elif size % base or size < entry["min_size"]:
        return None  # tiny feature maps move the peak of the live set: counted on meta
    return evaluate(entry, batch, size), entry.get("extra", {})


def evaluate(entry: dict[str, Any], batch: int, size: int) -> Counts:
    x = _basis(entry["basis"], batch, size, entry["base"])

    def val(coef: list[float]) -> float:
        return sum(c * b for c, b in zip(coef, x, strict=True))

    c = Counts()
    for name in _SCALARS:
        v = val(entry["scalars"][name])
        setattr(
            c, name, round(v) if name in ("param_count", "module_calls", "param_tensors") else v
        )
    c.views = {ph: round(val(v)) for ph, v in entry["views"].items()}
    c.ops = {}
    for ph, groups in entry["ops"].items():
        ops: list[list[float]] = []
        for kind, mult, fc, bc in groups:
            ops.extend([[kind, val(fc), val(bc)]] * mult)
        c.ops[ph] = ops
    c.attention = [[round(val(f)) for f in row] for row in entry["attention"]]
    return c


# --- building --------------------------------------------------------------------------------


def fit(points: dict[tuple[int, int], Counts], basis: str, base: int) -> dict[str, Any]:
    """The table entry reproducing `points` ((batch, size) -> counts) exactly."""
    import numpy as np

    keys = sorted(points)
    a = np.array([_basis(basis, b, s, base) for b, s in keys])
    inv = np.linalg.inv(a)
    cs = [points[k] for k in keys]

    def solve(values: list[float]) -> list[float]:
        return (inv @ np.array(values, dtype=float)).tolist()

    entry: dict[str, Any] = {"basis": basis, "base": base}
    entry["scalars"] = {n: solve([float(getattr(c, n)) for c in cs]) for n in _SCALARS}
    entry["views"] = {ph: solve([c.views.get(ph, 0) for c in cs]) for ph in cs[0].views}
    entry["ops"] = {}
    for ph in cs[0].ops:
        lists = [c.ops.get(ph, []) for c in cs]
        if len({len(o) for o in lists}) != 1:
            raise ValueError(f"{ph}: the number of kernels changes with batch or size")
        groups: dict[tuple[float, ...], int] = {}
        for i in range(len(lists[0])):
            kinds = {int(o[i][0]) for o in lists}
            if len(kinds) != 1:
                raise ValueError(f"{ph}: kernel {i} changes kind with batch or size")
            sig = (kinds.pop(), *(o[i][1] for o in lists), *(o[i][2] for o in lists))
            groups[sig] = groups.get(sig, 0) + 1
        n = len(keys)
        entry["ops"][ph] = [
            [sig[0], mult, solve(list(sig[1 : 1 + n])), solve(list(sig[1 + n :]))]
            for sig, mult in groups.items()
        ]
    n_att = {len(c.attention) for c in cs}
    if len(n_att) != 1:
        raise ValueError("the number of attention calls changes with batch or size")
    entry["attention"] = [
        [solve([float(c.attention[i][j]) for c in cs]) for j in range(5)]
        for i in range(n_att.pop())
    ]
    return entry


def check(entry: dict[str, Any], batch: int, size: int, counts: Counts) -> None:
    """Raise unless the entry reproduces a count it was not fitted on."""
    got = evaluate(entry, batch, size)

    def close(a: float, b: float, rel: float) -> bool:
        return abs(a - b) <= rel * max(abs(a), abs(b), 1.0)

    for name in _SCALARS:
        rel = 0.03 if name in _PEAKS else 1e-5
        if not close(getattr(got, name), getattr(counts, name), rel):
            raise ValueError(f"{name}: {getattr(got, name)} vs counted {getattr(counts, name)}")
    for ph, ops in counts.ops.items():
        want = sorted((int(k), f, b) for k, f, b in ops)
        have = sorted((int(k), f, b) for k, f, b in got.ops.get(ph, []))
        if len(want) != len(have) or not all(
            w[0] == h[0] and close(w[1], h[1], 1e-5) and close(w[2], h[2], 1e-5)
            for w, h in zip(want, have, strict=True)
        ):
            raise ValueError(f"{ph} kernels differ from the count")
    if sorted(map(tuple, got.attention)) != sorted(map(tuple, counts.attention)):
        raise ValueError("attention calls differ from the count")


def _store(
    out: dict[str, Any],
    key: str,
    count: Any,
    sized: bool,
    base: int,
    size: int,
    what: str,
    min_size: int = 16,
) -> None:
    """Fit and check the batch >= 2 entry and the batch-1 entry of one network call.

    `count(batch, size)` counts on meta; `sized` networks take any multiple of `base` from
    `min_size` up (below it, feature maps of a few pixels move the live set's peak), the
    others only `size`.
    """
    if key in out["entries"] or key + "|b1" in out["entries"]:
        return  # a network shared by two architectures (SDXL's UNet in the refiner's, the VAE)
    k0 = max(2, -(-min_size // base))  # fitted from min_size and 2 x base up
    ks = (k0, k0 + k0 // 2, 2 * k0)
    for b1 in (False, True):
        batches = (1,) if b1 else (2, 3)
        pts = (
            [(b, k * base) for b in batches for k in ks] if sized else [(b, size) for b in batches]
        )
        counted = {p: count(*p) for p in pts}
        basis = ("p" if b1 else "bp") if sized else ("1" if b1 else "b")
        entry = fit({p: c[0] for p, c in counted.items()}, basis, base)
        if not sized:
            entry["size"] = size
        entry["min_size"] = k0 * base
        extras = {json.dumps(c[1], sort_keys=True) for c in counted.values()}
        if len(extras) != 1:
            raise ValueError(f"{what}: steps or parameters change with batch or size")
        entry["extra"] = next(iter(counted.values()))[1]
        vb = 1 if b1 else 4
        vs = (5 * k0 // 2) * base if sized else size
        try:
            check(entry, vb, vs, count(vb, vs)[0])
        except ValueError as exc:  # left to counting on meta at estimate time
            print(f"{what}{' batch 1' if b1 else ''}: not stored ({exc})", flush=True)
            continue
        out["entries"][key + ("|b1" if b1 else "")] = entry
        print(f"{what}{' batch 1' if b1 else ''}: ok", flush=True)


def _diffusion_entries(out: dict[str, Any]) -> None:
    import torch

    from ..models.diffusion import PRESETS
    from .arch import NAMED, preset_arch
    from .count import _run_meta, part_key

    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    archs = {name: preset_arch(name) for name in PRESETS}
    out["archs"] = {
        name: {**a.__dict__, "parts": [p.__dict__ for p in a.parts]} for name, a in archs.items()
    }
    archs.update({name: fn() for name, fn in NAMED.items()})
    for name, arch in archs.items():
        base = table_base(arch)
        for part in arch.parts:
            if part.cls == "text-transformer":
                continue
            tasks = (False, True) if part.role == "unet" else (False,)
            for dtype in ("fp32", "fp16") if name in NAMED else ("fp32",):
                for train in tasks:

                    def count(
                        b: int,
                        s: int,
                        part: Any = part,
                        arch: Any = arch,
                        dt: str = dtype,
                        tr: bool = train,
                    ) -> Any:
                        return _run_meta(part, arch, b, s, dtypes[dt], tr), {}

                    what = f"{name} {part.role} {dtype} {'train' if train else 'generate'}"
                    key = part_key(part, arch, dtype, train)
                    low = max(16, arch.default_size // 4)  # SDXL at 64 px is not its regime
                    _store(out, key, count, True, base, 0, what, low)


def table_base(arch: Any) -> int:
    """Image sizes whose every feature map is whole: latent factor x the UNet's down-sampling."""
    unet = next(p for p in arch.parts if p.role == "unet")
    return arch.latent_factor * 2 ** (len(unet.config["block_out_channels"]) - 1)


def _family_entries(out: dict[str, Any]) -> None:
    from .families import count_family, family_key, family_model, preset_names

    for spec in preset_names():
        fm = family_model(spec)
        out["families"][spec] = dict(fm.__dict__)
        conv = fm.family in ("upscaler", "restorer")
        for task in ("generate", "train"):

            def count(b: int, s: int, fm: Any = fm, task: str = task) -> Any:
                c, steps, params = count_family(fm, task, b, s, use_cache=False)
                return c, {"steps": steps, "params": params}

            base = 8 * max(fm.multiple, 1)
            _store(out, family_key(fm, task), count, conv, base, fm.size, f"{spec} {task}")


def build(path: Path = TABLE_PATH) -> None:
    out: dict[str, Any] = {"entries": {}, "archs": {}, "families": {}}
    _diffusion_entries(out)
    _family_entries(out)
    data = json.dumps(out, separators=(",", ":")).encode()
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wb", compresslevel=9) as f:
        f.write(data)
    tmp.replace(path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(out['entries'])} entries)")


if __name__ == "__main__":
    build()
