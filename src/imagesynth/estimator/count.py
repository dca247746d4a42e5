"""FLOPs, kernels and memory of one network call, counted on PyTorch's `meta` device.

The network runs on meta tensors (shapes only, nothing allocated) under a TorchDispatchMode
that sees every aten op: FLOPs come from torch's own formulas (`torch.utils.flop_counter`,
the table behind FlopCounterMode), bytes moved from the op's tensor sizes, and the live set
of tensors is followed through weakref finalizers (PyTorch keeps a tensor's Python object
alive exactly as long as the tensor), which gives the peak of activations during the call.
For training, `saved_tensors_hooks` sum the bytes autograd keeps for backward, and the
backward pass is run under the same mode.

Attention runs through `F.scaled_dot_product_attention` in diffusers; on meta that would
decompose into the math path and materialise the score matrix, which fused kernels (flash /
memory-efficient, CPU flash) do not. So during counting that function is replaced by a
stand-in with the same inputs, outputs, FLOPs (torch's sdpa formulas) and saved tensors, and
the shape of each call is recorded; `estimate.py` adds the score matrix for "slicing".
"""

from __future__ import annotations

import hashlib
import json
import math
import weakref
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from .arch import Arch, Part, build_part, part_inputs
from .devices import cache_dir

COUNT_VERSION = 3  # bump when the counting changes, to invalidate cached counts
KINDS = ("conv", "matmul", "attention", "memory")
_MEMORY_CACHE: dict[str, Counts] = {}


@dataclass
class Counts:
    """What one call of a network costs (at one batch, size and dtype)."""

    flops_forward: float = 0.0
    flops_backward: float = 0.0
    param_count: int = 0
    param_bytes: float = 0.0
    input_bytes: float = 0.0
    peak_live_bytes: float = 0.0  # forward without grad: peak of tensors made during the call
    saved_bytes: float = 0.0  # training: tensors autograd saves for backward (not parameters)
    train_peak_live_bytes: float = 0.0  # training: peak over forward + backward (incl. grads)
    module_calls: int = 0
    param_tensors: int = 0
    # phase ("fwd" / "bwd") -> kernels [kind index into KINDS, FLOPs, bytes moved]
    ops: dict[str, list[list[float]]] = field(default_factory=dict)
    views: dict[str, int] = field(default_factory=dict)  # phase -> view ops (dispatch only)
    # per attention call in the forward: [batch * heads, heads, q_len, k_len, head_dim]
    attention: list[list[int]] = field(default_factory=list)


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size()


class _Tracker:
    """Records kernels and follows the live tensor set; used by `_Mode` and the sdpa stand-in."""

    def __init__(self) -> None:
        self.phase = "fwd"
        self.ops: dict[str, list[list[float]]] = {"fwd": [], "bwd": []}
        self.views = {"fwd": 0, "bwd": 0}
        self.attention: list[list[int]] = []
        self.live: dict[int, int] = {}
        self.cur = 0
        self.peak = 0
        self._next = 0

    def record(self, kind: str, flops: float, nbytes: float) -> None:
        self.ops[self.phase].append([KINDS.index(kind), float(flops), float(nbytes)])

    def track(self, t: Any) -> None:
        key = self._next
        self._next += 1
        n = t.untyped_storage().nbytes()
        self.live[key] = n
        self.cur += n
        self.peak = max(self.peak, self.cur)
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.cur -= self.live.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.cur


def _mode_class() -> Any:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    aten = torch.ops.aten
    kinds = {
        aten.convolution: "conv",
        aten.convolution_backward: "conv",
        aten.mm: "matmul",
        aten.addmm: "matmul",
        aten.bmm: "matmul",
        aten.baddbmm: "matmul",
    }
    allocs = {aten.empty, aten.empty_like, aten.new_empty, aten.empty_strided, aten.zeros}

    class _Mode(TorchDispatchMode):
        def __init__(self, tracker: _Tracker) -> None:
            super().__init__()
            self.tracker = tracker

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            tr = self.tracker
            packet = func.overloadpacket
            if func.is_view:
                tr.views[tr.phase] += 1
                return out
            outs = out if isinstance(out, (tuple, list)) else (out,)
            returns = func._schema.returns
            new = [
                t
                for i, t in enumerate(outs)
                if isinstance(t, torch.Tensor)
                and not (i < len(returns) and returns[i].alias_info is not None)
            ]
            if packet in allocs:
                nbytes = 0.0
            else:
                flat, _ = tree_flatten((args, kwargs))
                nbytes = sum(_nbytes(t) for t in flat if isinstance(t, torch.Tensor))
                nbytes += sum(_nbytes(t) for t in new)
            flops = 0.0
            if packet in flop_registry:
                flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
            tr.record(kinds.get(packet, "memory"), flops, nbytes)
            for t in new:
                tr.track(t)
            return out

    return _Mode


def _attention_standin(tracker: _Tracker) -> Any:
    """A stand-in for F.scaled_dot_product_attention that never makes the (Lq, Lk) scores."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    class _Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: Any, k: Any, v: Any) -> Any:
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            ctx.save_for_backward(q, k, v, out)
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            q, k, v, out = ctx.saved_tensors
            flops = sdpa_backward_flop_count(grad.shape, q.shape, k.shape, v.shape)
            moved = 2 * (_nbytes(q) + _nbytes(k) + _nbytes(v) + _nbytes(out))
            tracker.record("attention", flops, moved)
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        q4, k4, v4 = (t if t.dim() == 4 else t.unsqueeze(1) for t in (query, key, value))
        flops = sdpa_flop_count(q4.shape, k4.shape, v4.shape)
        moved = _nbytes(query) + _nbytes(key) + _nbytes(value) + _nbytes(query)
        tracker.record("attention", flops, moved)
        if tracker.phase == "fwd":
            b, h, lq, d = q4.shape
            tracker.attention.append([b * h, h, lq, k4.shape[2], d])
        return _Attention.apply(query, key, value)

    return sdpa


def _text_counts(cfg: dict[str, Any], batch: int, dtype_bytes: int) -> Counts:
    """A CLIP-style text transformer, analytically: per layer 24 T h^2 + 4 T^2 h FLOPs."""
    h, n_layers, tokens, vocab = cfg["hidden"], cfg["layers"], cfg["tokens"], cfg["vocab"]
    params = n_layers * (12 * h * h + 13 * h) + vocab * h + tokens * h + 2 * h
    ops: list[list[float]] = []
    act = batch * tokens * h * dtype_bytes
    for _ in range(n_layers):
        for f in (6, 2, 8, 8):  # qkv, out projection, fc1, fc2 (x B T h^2)
            ops.append([1, f * batch * tokens * h * h, act * (1 + f / 2)])
        ops.append([2, 4 * batch * tokens * tokens * h, 4 * act])
        ops.extend([3, 0.0, 2 * act] for _ in range(8))  # norms, adds, activation, reshapes
    fwd = sum(o[1] for o in ops)
    return Counts(
        flops_forward=fwd,
        flops_backward=2 * fwd,
        param_count=params,
        param_bytes=params * dtype_bytes,
        input_bytes=batch * tokens * 8,
        peak_live_bytes=6 * act + batch * tokens * tokens * 4,
        saved_bytes=n_layers * 10 * act,
        train_peak_live_bytes=n_layers * 10 * act + 6 * act,
        module_calls=n_layers * 10,
        ops={"fwd": ops, "bwd": [[k, 2 * f, 2 * b] for k, f, b in ops]},
        views={"fwd": n_layers * 10, "bwd": n_layers * 10},
    )


def _run_meta(part: Part, arch: Arch, batch: int, size: int, dtype: Any, train: bool) -> Counts:
    model = build_part(part, dtype)
    method, kwargs = part_inputs(part, arch, batch, size, dtype)
    return count_call(model, kwargs, train=train, method=method)


def count_call(
    model: Any, kwargs: dict[str, Any], *, train: bool = False, method: str = "forward"
) -> Counts:
    """Counts of `getattr(model, method)(**kwargs)` (meta tensors; any module and inputs).

    With `train`, also the backward of mean(out^2) (out: the first output, or `.sample`).
    """
    import torch
    import torch.nn.functional as F

    model.train(train)
    params = list(model.parameters())
    fn = getattr(model, method)
    counts = Counts(
        param_count=sum(p.numel() for p in params),
        param_bytes=float(sum(_nbytes(p) for p in params)),
        input_bytes=float(sum(_nbytes(v) for v in kwargs.values() if isinstance(v, torch.Tensor))),
        param_tensors=len(params),
    )
    calls = [0]

    def on_call(*_: Any) -> None:
        calls[0] += 1

    def out_tensor(out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return out
        return out.sample if hasattr(out, "sample") else out[0]

    # inference: forward without grad
    tracker = _Tracker()
    real_sdpa = F.scaled_dot_product_attention
    hook = torch.nn.modules.module.register_module_forward_pre_hook(on_call)
    F.scaled_dot_product_attention = _attention_standin(tracker)
    try:
        with torch.no_grad(), _mode_class()(tracker):
            out = out_tensor(fn(**kwargs))
            del out
        counts.peak_live_bytes = float(tracker.peak)
        counts.module_calls = calls[0]
        counts.ops["fwd"] = tracker.ops["fwd"]
        counts.views["fwd"] = tracker.views["fwd"]
        counts.attention = tracker.attention
        counts.flops_forward = sum(o[1] for o in tracker.ops["fwd"])
        if train:
            hook.remove()
            tracker = _Tracker()
            F.scaled_dot_product_attention = _attention_standin(tracker)
            saved: dict[int, int] = {}
            keep: list[Any] = []
            param_storages = {p.untyped_storage()._cdata for p in params}

            def pack(t: Any) -> Any:
                st = t.untyped_storage()
                if st._cdata not in param_storages and st._cdata not in saved:
                    saved[st._cdata] = st.nbytes()
                    keep.append(t)
                return t

            for p in params:
                p.requires_grad_(True)
            with _mode_class()(tracker):
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = out_tensor(fn(**kwargs)).float().pow(2).mean()
                counts.saved_bytes = float(sum(saved.values()))
                keep.clear()
                tracker.phase = "bwd"
                loss.backward()
                del loss
            counts.train_peak_live_bytes = float(tracker.peak)
            counts.ops["bwd"] = tracker.ops["bwd"]
            counts.views["bwd"] = tracker.views["bwd"]
            counts.flops_backward = sum(o[1] for o in tracker.ops["bwd"])
    finally:
        F.scaled_dot_product_attention = real_sdpa
        hook.remove()
    return counts


DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def part_key(part: Part, arch: Arch, dtype: str, train: bool) -> str:
    """The key of a part's entry in the shipped count table (`table.py`)."""
    from .table import key_of

    what = [part.role, part.cls, part.config, part.cond, arch.latent_factor, arch.latent_channels]
    return key_of(*what, dtype, train)


def _cache_key(part: Part, arch: Arch, batch: int, size: int, dtype: str, train: bool) -> str:
    try:
        versions = [metadata.version("torch"), metadata.version("diffusers")]
    except metadata.PackageNotFoundError:
        versions = []
    text = json.dumps(
        [
            COUNT_VERSION,
            versions,
            part.role,
            part.cls,
            part.config,
            part.cond,
            arch.latent_factor,
            arch.latent_channels,
            batch,
            size,
            dtype,
            train,
        ],
        sort_keys=True,
        default=list,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def count_part(
    part: Part,
    arch: Arch,
    batch: int,
    size: int,
    dtype: str = "fp32",
    train: bool = False,
    use_cache: bool = True,
) -> Counts:
    """Counts of one call of `part` at (batch, image size, dtype); cached in memory and on disk."""
    if part.cls == "text-transformer":
        return _text_counts(part.config, batch, DTYPE_BYTES[dtype])
    if use_cache:
        from .table import lookup

        hit = lookup(part_key(part, arch, dtype, train), batch, size)
        if hit is not None:
            return hit[0]
    path = cache_dir() / "counts" / f"{_cache_key(part, arch, batch, size, dtype, train)}.json"
    key = str(path)  # per cache folder, so a new folder gets its files written
    if use_cache and key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key]
    if use_cache and path.is_file():
        try:
            counts = Counts(**json.loads(path.read_text()))
            _MEMORY_CACHE[key] = counts
            return counts
        except (ValueError, TypeError):
            pass
    import torch

    tdtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    counts = _run_meta(part, arch, batch, size, tdtype, train)
    _MEMORY_CACHE[key] = counts
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{id(counts)}")
            tmp.write_text(json.dumps(asdict(counts), separators=(",", ":")))
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only costs speed
    return counts


def total_flops(counts: Counts, train: bool) -> float:
    return counts.flops_forward + (counts.flops_backward if train else 0.0)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes)."""
    if n == 0 or not math.isfinite(n):
        return f"{n:g} {unit}".strip()
    prefixes = ["", "k", "M", "G", "T", "P", "E"]
    i = min(int(math.log10(abs(n)) // 3), len(prefixes) - 1) if abs(n) >= 1 else 0
    return f"{n / 1000**i:.3g} {prefixes[i]}{unit}".strip()
