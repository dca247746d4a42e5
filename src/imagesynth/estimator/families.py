"""The trainer's other families (GAN, VAE, PixelCNN, VQ-VAE, transformer prior, upscaler,
restorer), counted by running their own code on PyTorch's `meta` device.

Pixel diffusion and latent diffusion are described as diffusers parts (`arch.py`); the other
families have their own networks and, above all, their own loops: a GAN step is a D phase
and a G phase, a PixelCNN draws one pixel per network call, the transformer one token per
call with a key/value cache. So instead of a table of parts, the family object is built from
its options (a preset such as `gan:resnet-small`, or a model directory's recorded recipe),
its networks are moved to meta, and then

- generate: the family's sampling core runs as it does for real (`sample_pixelcnn`,
  `sample_tokens` + `decode_codes`, `G(z, y)`, `vae.decode`, the super-resolution net);
- train: every phase's loss from `family.phases()` runs forward, then backward, as one
  optimizer step of the trainer does.

Every aten op is seen by the same dispatch mode as in `count.py` (FLOPs, bytes, the live
set), so the time and memory model of `predict.py` applies unchanged. `measure_family` runs
the very same calls on real tensors for `--measure`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ImagesynthError
from .count import COUNT_VERSION, Counts, _mode_class, _Tracker
from .devices import cache_dir

FAMILIES = ("gan", "vae", "pixelcnn", "vqvae", "transformer", "upscaler", "restorer")
# recipe keys that do not change the networks or the step (left out of the cache key)
_NOT_ARCH = {"data", "data_options", "steps", "minutes", "runs_dir", "tag", "seed", "lr"}


@dataclass
class FamilyModel:
    """A non-diffusion model to estimate: the family, its options and its data's shape."""

    name: str
    family: str
    family_options: dict[str, Any]
    size: int  # the size it was built for (fixed for GAN / VAE / autoregressive models)
    channels: int
    num_classes: int
    description: str
    path: str | None = None  # model directory, if it came from one
    fixed_size: bool = True  # upscaler / restorer are fully convolutional: any size
    multiple: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self, with_size: bool = True) -> str:
        opts = {k: v for k, v in self.family_options.items() if k not in _NOT_ARCH}
        size = self.size if with_size else None
        return json.dumps(
            [self.family, opts, self.channels, self.num_classes, size], sort_keys=True
        )

    def check_size(self, size: int) -> None:
        if self.fixed_size and size != self.size:
            raise ImagesynthError(
                f"{self.name!r} makes {self.size} px images ({self.family} networks are built "
                f"for one size): use --size {self.size}"
            )
        if size < self.multiple or size % self.multiple:
            raise ImagesynthError(
                f"size {size} does not fit the {self.name!r} {self.family} model: use a "
                f"multiple of {self.multiple}"
            )


def preset_names() -> list[str]:
    """`family` or `family:preset` names the estimator takes (transformer: model dirs only)."""
    import importlib

    out = []
    for fam, mod in (("gan", "gan"), ("vae", "vae"), ("upscaler", "superres")):
        presets = importlib.import_module(f"..models.{mod}", __package__).PRESETS
        out += [f"{fam}:{p}" for p in presets]
    return [*out, "restorer", "pixelcnn", "vqvae"]


def family_model(spec: str, size: int | None = None, channels: int = 3) -> FamilyModel | None:
    """The FamilyModel a name or directory stands for, or None if it is not one of these."""
    path = Path(spec).expanduser()
    if (path / "imagesynth.json").is_file() or (path / "model" / "imagesynth.json").is_file():
        return _from_dir(path)
    fam, _, preset = spec.partition(":")
    if fam not in FAMILIES:
        return None
    if fam == "transformer":
        raise ImagesynthError(
            "the transformer prior is estimated from a model directory (it needs its VQ-VAE): "
            "--model RUN/model"
        )
    shipped = _shipped_model(spec, size, channels)
    if shipped is not None:
        return shipped
    opts: dict[str, Any] = {"preset": preset} if preset else {}
    if fam in ("pixelcnn", "vqvae", "restorer") and preset:
        raise ImagesynthError(f"{fam} has no presets; use --model {fam} (and --fopt-like sizes)")
    s = size or (64 if fam in ("upscaler", "restorer") else 32)
    fm = FamilyModel(
        name=spec,
        family=fam,
        family_options=opts,
        size=s,
        channels=channels,
        num_classes=0,
        description=f"{fam} preset {preset or 'default'} (imagesynth)",
        fixed_size=False,
    )
    build_family(fm)  # refuses an unknown preset or a size the family cannot take, here
    return fm


def _shipped_model(spec: str, size: int | None, channels: int) -> FamilyModel | None:
    """A preset as the count table stored it (no torch import), where it is that model."""
    from .table import families

    stored = families().get(spec)
    if stored is None or channels != stored["channels"]:
        return None
    if size is not None and size != stored["size"]:
        if stored["family"] not in ("upscaler", "restorer"):
            return None  # GAN / VAE presets build other networks for other sizes
        return FamilyModel(**{**stored, "size": size})
    return FamilyModel(**stored)


def _from_dir(path: Path) -> FamilyModel | None:
    from ..api import resolve_model_dir
    from ..io.model_dir import load_model

    path = resolve_model_dir(path)
    files = load_model(path)
    if files.family not in FAMILIES:
        return None
    recipe = files.info.get("recipe") or {}
    data = (files.info.get("dataset") or {}).get("main") or files.info.get("dataset") or {}
    if not recipe or "size" not in data:
        raise ImagesynthError(f"{path}: its imagesynth.json has no training recipe to rebuild from")
    opts = dict(recipe.get("family_options") or {})
    if files.family == "transformer":
        opts["vqvae"] = str(path)  # the prior's directory holds its VQ-VAE too
    num_classes = int(data.get("num_classes") or 0) if recipe.get("cond") == "class" else 0
    fam_conv = files.family in ("upscaler", "restorer")
    return FamilyModel(
        name=path.name,
        family=files.family,
        family_options=opts,
        size=int(recipe.get("size") or data["size"]),
        channels=int(data.get("channels", 3)),
        num_classes=num_classes,
        description=f"model directory {path} ({files.family})",
        path=str(path),
        fixed_size=not fam_conv,
        multiple=int(opts.get("scale", 1)) if fam_conv else 1,
    )


def build_family(fm: FamilyModel, size: int | None = None) -> Any:
    """The family object (real, tiny CPU weights; callers move the networks)."""
    from ..training.config import TrainConfig
    from ..training.family import DataInfo
    from ..training.trainer import build_family as build

    cfg = TrainConfig(
        family=fm.family,
        data="shapes",
        size=size or fm.size,
        cond="class" if fm.num_classes else "none",
        steps=1,
        family_options=dict(fm.family_options),
        progress=False,
    )
    data = DataInfo("estimate", size or fm.size, fm.channels, fm.num_classes)
    return build(cfg, data)


# ----- the calls, shared by counting (meta) and measuring (real tensors) ---------------------
def generate_call(fam: Any, fm: FamilyModel, batch: int, size: int, device: Any) -> tuple[Any, int]:
    """(a function running one generation of `batch` images, its sequential steps)."""
    import math

    import torch

    def empty(*shape: int, dtype: Any = torch.float32) -> Any:
        if device.type == "meta":
            return torch.empty(*shape, device=device, dtype=dtype)
        if dtype == torch.long:
            return torch.zeros(*shape, dtype=dtype, device=device)
        return torch.rand(*shape, device=device, dtype=dtype)

    labels = empty(batch, dtype=torch.long) if fm.num_classes else None
    nets = fam.nets
    if fm.family == "gan":
        g = nets["G"].eval()
        return (lambda: g(empty(batch, g.z_dim), labels)), 1
    if fm.family == "vae":
        v = nets["vae"].eval()
        return (lambda: v.decode(empty(batch, v.z_dim), labels)), 1
    if fm.family == "pixelcnn":
        from ..models.pixelcnn import sample_pixelcnn

        net = nets["pixelcnn"].eval()

        def pixels() -> Any:
            return sample_pixelcnn(net, labels, empty(batch, size * size))

        pixels.batch = batch  # type: ignore[attr-defined]
        return pixels, size * size
    if fm.family == "transformer":
        from ..models.token_transformer import sample_tokens

        net = nets["transformer"].eval()
        vq = fam.vqvae.eval()
        grid = math.isqrt(net.cfg.tokens)

        def run() -> Any:
            codes, _ = sample_tokens(net, labels, empty(batch, net.cfg.tokens))
            return vq.decode_codes(codes.view(batch, grid, grid))

        return run, net.cfg.tokens
    if fm.family == "vqvae":
        net = next(iter(nets.values())).eval()
        return (
            lambda: net.decode_codes(net.encode_codes(empty(batch, fm.channels, size, size)))
        ), 1
    net = nets["net"].eval()  # upscaler / restorer: input at size / scale
    low = size // net.scale
    return (lambda: net(empty(batch, fm.channels, low, low))), 1


def train_call(fam: Any, fm: FamilyModel, batch: int, size: int, device: Any) -> Any:
    """A function running one optimizer step's forward + backward of every phase."""
    import torch

    meta = device.type == "meta"
    x = torch.empty if meta else torch.rand
    images = x(batch, fm.channels, size, size, device=device)
    if not meta:
        images = images * 2 - 1
    labels = (
        torch.zeros(batch, dtype=torch.long, device=device) if fm.num_classes else None
    )  # meta: zeros is shape-only too
    data = {"images": images, "labels": labels, "index": torch.arange(batch)}
    for net in fam.nets.values():
        net.train()
    phases = fam.phases()

    def run(on_phase: Any = None, step_fn: Any = None) -> None:
        gen = torch.Generator().manual_seed(0)
        for i, ph in enumerate(phases):
            if on_phase:
                on_phase("fwd")
            loss, _ = ph.loss(fam.nets, data, gen)
            if on_phase:
                on_phase("bwd")
            loss.backward()
            if step_fn:
                step_fn(i)
            for k in ph.nets:
                for p in fam.nets[k].parameters():
                    p.grad = None

    return run, phases


# ----- counting on meta ------------------------------------------------------------------------
def _lenient_mode() -> Any:
    """The counting mode, plus answers for the few ops meta cannot run: `.item()` (logging
    inside losses) and `bincount` (codebook usage)."""
    import torch

    aten = torch.ops.aten
    base = _mode_class()

    class Lenient(base):  # type: ignore[misc, valid-type]
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is aten._local_scalar_dense.default:
                return 1.0 if args[0].dtype.is_floating_point else 1
            if func.overloadpacket is aten.bincount:
                n = int((kwargs or {}).get("minlength", args[2] if len(args) > 2 else 1))
                return torch.empty(max(n, 1), device="meta", dtype=torch.long)
            return super().__torch_dispatch__(func, types, args, kwargs)

    return Lenient


def family_key(fm: FamilyModel, task: str) -> str:
    """The key of a family model's entry in the shipped count table (`table.py`); the
    fully convolutional families' networks do not depend on the size they were made for."""
    from .table import key_of

    conv = fm.family in ("upscaler", "restorer")
    return key_of("family", fm.key(with_size=not conv), task)


def _cache_path(fm: FamilyModel, task: str, batch: int, size: int) -> Path:
    from importlib import metadata

    text = json.dumps(
        [COUNT_VERSION, "family", metadata.version("torch"), fm.key(), task, batch, size]
    )
    return cache_dir() / "counts" / f"f{hashlib.sha1(text.encode()).hexdigest()[:20]}.json"


def count_family(
    fm: FamilyModel, task: str, batch: int, size: int, use_cache: bool = True
) -> tuple[Counts, int, dict[str, int]]:
    """(counts at fp32, sequential steps per generation, parameters per role).

    Roles: "trained" (what the optimizers update), "ema" (networks with an EMA copy), "held"
    (every parameter on the device, frozen parts such as the prior's VQ-VAE included).
    """
    if use_cache:
        from .table import lookup

        hit = lookup(family_key(fm, task), batch, size)
        if hit is not None:
            return hit[0], hit[1]["steps"], hit[1]["params"]
    path = _cache_path(fm, task, batch, size)
    if use_cache and path.is_file():
        try:
            raw = json.loads(path.read_text())
            return Counts(**raw["counts"]), raw["steps"], raw["params"]
        except (ValueError, TypeError, KeyError):
            pass
    import torch

    fam = build_family(fm, size if not fm.fixed_size else None)
    meta = torch.device("meta")
    for k in list(fam.nets):
        fam.nets[k] = fam.nets[k].to(meta)
    if getattr(fam, "vqvae", None) is not None and fm.family == "transformer":
        fam.vqvae = fam.vqvae.to(meta)
    nets = list(fam.nets.values()) + ([fam.vqvae] if fm.family == "transformer" else [])
    held = sum(p.numel() for n in nets for p in n.parameters())
    tracker = _Tracker()
    calls = [0]

    def on_call(*_: Any) -> None:
        calls[0] += 1

    hook = torch.nn.modules.module.register_module_forward_pre_hook(on_call)
    counts = Counts(param_count=held, param_bytes=4.0 * held, param_tensors=0)
    steps = 1
    saved: dict[int, int] = {}
    try:
        if task == "generate":
            fn, steps = generate_call(fam, fm, batch, size, meta)
            with torch.no_grad(), _lenient_mode()(tracker):
                if fm.family == "pixelcnn":
                    _count_pixel_rows(fn, fam, size, tracker, calls)
                else:
                    fn()
            counts.peak_live_bytes = float(tracker.peak)
            counts.flops_forward = sum(o[1] for o in tracker.ops["fwd"])
            counts.module_calls = calls[0]
        else:
            run, phases = train_call(fam, fm, batch, size, meta)

            keep: list[Any] = []  # alive until the phase's forward ends: storage ids stay unique
            most = [0]

            def pack(t: Any) -> Any:
                st = t.untyped_storage()
                if not isinstance(t, torch.nn.Parameter) and st._cdata not in saved:
                    saved[st._cdata] = st.nbytes()
                    keep.append(t)
                return t

            def on_phase(p: str) -> None:
                tracker.phase = p
                if p == "bwd":  # a phase's saved tensors are freed by its backward
                    most[0] = max(most[0], sum(saved.values()))
                    saved.clear()
                    keep.clear()

            with (
                _lenient_mode()(tracker),
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            ):
                run(on_phase)
            counts.train_peak_live_bytes = float(tracker.peak)
            counts.saved_bytes = float(max(most[0], sum(saved.values())))
            counts.flops_forward = sum(o[1] for o in tracker.ops["fwd"])
            counts.flops_backward = sum(o[1] for o in tracker.ops["bwd"])
            counts.module_calls = calls[0]
    finally:
        hook.remove()
    counts.ops = tracker.ops
    counts.views = tracker.views
    counts.attention = tracker.attention
    counts.input_bytes = 4.0 * batch * fm.channels * size * size
    params = {"held": held}
    if task == "train":
        trained = {k for ph in phases for k in ph.nets}
        params["trained"] = sum(
            p.numel() for k in trained for p in fam.nets[k].parameters() if p.requires_grad
        )
        params["ema"] = sum(p.numel() for k in fam.ema_nets for p in fam.nets[k].parameters())
        params["phases"] = len(phases)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{id(counts)}")
            tmp.write_text(json.dumps({"counts": asdict(counts), "steps": steps, "params": params}))
            tmp.replace(path)
        except OSError:
            pass
    return counts, steps, params


def _count_pixel_rows(fn: Any, fam: Any, size: int, tracker: _Tracker, calls: list[int]) -> None:
    """PixelCNN sampling (`sample_pixelcnn`'s loop) counted without running all size^2 steps.

    Each row runs the vertical stack once on the `reach` + 1 rows above it (the same from row
    `reach` on), then per pixel j the horizontal stack on a 1 x (j + 1) strip and the draw.
    A pixel's kernels are the same for every j with FLOPs and bytes linear in j + 1, so
    pixels 0 and 1 give all of them: tests check the sum against counting the whole loop.
    """
    import torch

    from ..models.pixelcnn import dequantize, palette_levels, sample_logits

    net = fam.nets["pixelcnn"]
    cfg = net.cfg
    dev = next(net.parameters()).device
    b = fn.batch
    labels = torch.empty(b, dtype=torch.long, device=dev) if cfg.num_classes else None
    x = torch.empty(b, cfg.channels, size, size, device=dev)
    idx = torch.empty(b, size, size, dtype=torch.int64, device=dev)
    u = torch.empty(b, size * size, device=dev)
    ops, views = tracker.ops["fwd"], tracker.views

    def mark() -> tuple[int, int, int]:
        return len(ops), views["fwd"], calls[0]

    def pixel(i: int, j: int, v_pre: list[Any]) -> None:
        row = net.horizontal_stack(
            x[:, :, i : i + 1, : j + 1], [p[..., : j + 1] for p in v_pre], labels
        )
        k = sample_logits(row[:, :, 0, j], u[:, i * size + j])
        idx[:, i, j] = k
        x[:, :, i, j] = dequantize(palette_levels(k, cfg.levels, cfg.channels), cfg.levels)

    body: list[list[float]] = []
    extra_views = extra_calls = 0
    for i in range(min(size, cfg.reach + 1)):
        top = max(0, i - cfg.reach)
        m0 = mark()
        v_pre = [p[:, :, -1:] for p in net.vertical_stack(x[:, :, top : i + 1], labels)]
        m1 = mark()
        pixel(i, 0, v_pre)
        m2 = mark()
        if size > 1:
            pixel(i, 1, v_pre)
        m3 = mark()
        p0, p1 = ops[m1[0] : m2[0]], ops[m2[0] : m3[0]]
        if size > 1 and [o[0] for o in p0] != [o[0] for o in p1]:
            raise RuntimeError("PixelCNN pixels differ in kernels; count the whole loop")
        # this row's kernels: vertical stack + pixels 0..size-1 (linear in j from 0 and 1)
        row = ops[m0[0] : m1[0]] + p0 + (p1 if size > 1 else [])
        for j in range(2, size):
            row += [
                [k, f0 + (f1 - f0) * j, b0 + (b1 - b0) * j]
                for (k, f0, b0), (_, f1, b1) in zip(p0, p1, strict=True)
            ]
        reps = 1 if i < cfg.reach or i == size - 1 else size - i  # row reach = every later row
        body += row * reps
        extra_views += ((m1[1] - m0[1]) + (m2[1] - m1[1]) * size) * reps - (m3[1] - m0[1])
        extra_calls += ((m1[2] - m0[2]) + (m2[2] - m1[2]) * size) * reps - (m3[2] - m0[2])
        if reps > 1:
            break
    del ops[:]
    ops.extend(body)
    views["fwd"] += extra_views
    calls[0] += extra_calls


# ----- measuring the same calls for real ---------------------------------------------------------
def measure_family(
    fm: FamilyModel, task: str, size: int, batch: int, repeats: int = 3
) -> dict[str, float]:
    """Time and resident-memory growth of the real workload on this CPU."""
    import torch

    from .predict import PeakRSS, median_seconds

    cpu = torch.device("cpu")
    build_family(fm, size if not fm.fixed_size else None)  # imports outside the measurement
    if task == "train":  # torch.optim imports torch._dynamo (~70 MB) on its first optimizer
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    import gc

    gc.collect()
    with PeakRSS() as rss:
        torch.manual_seed(0)
        fam = build_family(fm, size if not fm.fixed_size else None)
        if task == "generate":
            fn, steps = generate_call(fam, fm, batch, size, cpu)

            def once() -> None:
                with torch.no_grad():
                    fn()
        else:
            from ..training.config import TrainConfig
            from ..training.trainer import _make_optimizer

            run, phases = train_call(fam, fm, batch, size, cpu)
            cfg = TrainConfig(family=fm.family, steps=1)
            opts = [
                _make_optimizer(
                    [p for k in ph.nets for p in fam.nets[k].parameters() if p.requires_grad],
                    cfg,
                    ph.betas,
                    cpu,
                )
                for ph in phases
            ]
            emas = [list(fam.nets[k].parameters()) for k in fam.ema_nets]
            ema_copies = [[p.detach().clone() for p in ps] for ps in emas]
            steps = 1

            def once() -> None:
                run(step_fn=lambda i: opts[i].step())
                with torch.no_grad():
                    for copy, ps in zip(ema_copies, emas, strict=True):
                        torch._foreach_lerp_(copy, ps, 1 - 0.999)

        once()  # warm-up (optimizer states appear on the first step)
        per_batch = median_seconds(once, repeats)
    return {
        "seconds_per_step": per_batch / steps,
        "seconds_per_image": per_batch / batch,
        "images_per_hour": 3600.0 * batch / per_batch,
        "peak_bytes": float(rss.delta),
    }
