"""GANs and VAEs at the same CPU budget: class-conditional GAN on digits, VAE / cVAE on digits
and shapes (32 px). FID / KID with the evaluation suite's domain extractor, class accuracy
of conditional samples by that extractor's classifier (trained on real data), samples / s,
VAE reconstruction PSNR on held-out digits, and a GAN stability check over 10 seeds.

Targets: cgan_digits_class_accuracy >= 0.85, vae_digits_recon_psnr >= 20 dB.

    OMP_NUM_THREADS=1 nice -n 10 python bench/gan_vae_digits.py --minutes 8
    python bench/gan_vae_digits.py --only cgan_digits,stability   # a subset (results cached)

Each job caches its figures in RUNS_DIR/<job>.json; a later run with the same --runs-dir
reuses them (so jobs can run in parallel processes and a last run merges them).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from common import command_line, write_result

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"

COMMON = dict(log_every=50, sample_every=1000, ckpt_every=1000, progress=True, seed=0)
GAN = dict(
    family="gan",
    batch=64,
    lr=2e-4,
    lr_schedule="constant",
    warmup_steps=0,
    clip_grad=0.0,
    ema_decay=0.999,
)
VAE = dict(family="vae", batch=64, lr=1e-3, warmup_steps=50, clip_grad=1.0, ema_decay=0.999)
JOBS: dict[str, dict[str, Any]] = {
    "cgan_digits": {
        **GAN,
        "data": "digits",
        "size": 16,
        "cond": "class",
        "family_options": {
            "preset": "dcgan-tiny",
            "loss": "hinge",
            "cond": "projection",
            "augment": "diffaugment",
            "aug_policy": "translation",
            "d_lr_scale": 2.0,
        },
        "tag": "bench-cgan",
    },
    "vae_digits": {
        **VAE,
        "data": "digits",
        "size": 32,
        "cond": "none",
        "family_options": {"preset": "tiny"},
        "tag": "bench-vae",
    },
    "cvae_digits": {
        **VAE,
        "data": "digits",
        "size": 32,
        "cond": "class",
        "family_options": {"preset": "tiny"},
        "tag": "bench-cvae",
    },
    "cvae_beta4_digits": {  # a stronger KL weight pushes the class out of z into the label
        **VAE,
        "data": "digits",
        "size": 32,
        "cond": "class",
        "family_options": {"preset": "tiny", "beta": 4.0},
        "tag": "bench-cvae-beta4",
    },
    "vae_shapes": {
        **VAE,
        "data": "shapes",
        "size": 32,
        "cond": "none",
        "family_options": {"preset": "tiny"},
        "tag": "bench-vae",
    },
}
EXTRACTOR = {"digits": "domain:digits", "shapes": "domain:shapes"}


def _train(job: str, minutes: float, runs_dir: Path) -> tuple[Path, dict[str, Any]]:
    import imagesynth

    spec = {**COMMON, **JOBS[job]}
    t = time.perf_counter()
    res = imagesynth.train(**spec, minutes=minutes, runs_dir=str(runs_dir))
    stats = res.stats[-1] if res.stats else {}
    return Path(res.model_dir), {
        "train_minutes": (time.perf_counter() - t) / 60,
        "train_steps": res.step,
        "nonfinite_skipped": stats.get("nonfinite_skipped", 0),
        "run": str(res.run_dir),
    }


def _evaluate(job: str, model_dir: Path, n: int) -> dict[str, Any]:
    """FID / KID (+ class accuracy) of n samples and the sampling speed."""
    import imagesynth
    from imagesynth.io.images import pil_to_array
    from imagesynth.metrics.evaluate import evaluate_samples

    spec = JOBS[job]
    pipe = imagesynth.load(model_dir, device="cpu")
    k = pipe.num_classes
    labels = [i % k for i in range(n)] if k else None
    pipe(n=8, seed=0)  # warm-up
    t = time.perf_counter()
    out = pipe(n=n, seed=0, class_labels=labels)
    seconds = time.perf_counter() - t
    x = torch.stack(
        [torch.from_numpy(pil_to_array(im).copy()).permute(2, 0, 1) for im in out.images]
    )
    metrics = ["fid", "kid"] + (["acc"] if k else [])
    res = evaluate_samples(
        x,
        ref=spec["data"],
        metrics=metrics,
        extractor=EXTRACTOR[spec["data"]],
        labels=labels,
        class_names=pipe.class_names if k else None,
        seed=0,
        progress=False,
    )
    vals = res["values"]
    fig = {"samples_per_s": n / seconds, "eval_samples": n}
    for key, v in vals.items():
        fig[key] = v
    return fig


def _recon_psnr(model_dir: Path) -> float:
    """Mean PSNR (dB, 8-bit) of reconstructions of the held-out digits test split."""
    import imagesynth
    from imagesynth.data import get_dataset
    from imagesynth.io.images import pil_to_tensor

    pipe = imagesynth.load(model_dir, device="cpu")
    ds = get_dataset("digits", size=pipe.size, split="test")
    items = [ds[i] for i in range(len(ds))]
    images = [it.image for it in items]
    labels = [it.label for it in items] if pipe.num_classes else None
    rec = pipe.reconstruct(images, class_labels=labels).images
    x = torch.stack([pil_to_tensor(im.convert("L")) for im in images])
    y = torch.stack([pil_to_tensor(im) for im in rec])
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(4.0 / mse)).mean())


def _label(im, text: str):
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (im.width, im.height + 14), (255, 255, 255))
    out.paste(im.convert("RGB"), (0, 14))
    ImageDraw.Draw(out).text((2, 1), text, fill=(0, 0, 0))
    return out


def _grids(job: str, model_dir: Path) -> Path:
    """The job's grid image in docs/images (samples; VAEs add reconstructions)."""
    import imagesynth
    from imagesynth.data import get_dataset
    from imagesynth.io.images import make_grid
    from imagesynth.io.pngmeta import save_png

    pipe = imagesynth.load(model_dir, device="cpu")
    zoom = max(1, 32 // pipe.size)
    big = lambda im: im.resize((im.width * zoom, im.height * zoom), 0)  # noqa: E731
    k = pipe.num_classes
    if k:  # one row per class
        labels = [c for c in range(k) for _ in range(10)]
        out = pipe(n=len(labels), seed=0, class_labels=labels)
        grid = make_grid([big(im) for im in out.images], nrow=10)
        what = "rows: classes 0-9, seeds 0-9"
    else:
        out = pipe(n=64, seed=0)
        grid = make_grid([big(im) for im in out.images], nrow=8)
        what = "64 samples, seeds 0-63"
    if pipe.family == "vae":  # append held-out originals / reconstructions (two rows)
        data = JOBS[job]["data"]
        ds = get_dataset(data, size=pipe.size, split="test")
        items = [ds[i] for i in range(16)]
        rec = pipe.reconstruct(
            [it.image for it in items], [it.label for it in items] if k else None
        ).images
        row = make_grid([big(it.image.convert(out.images[0].mode)) for it in items][:8]
                        + [big(im) for im in rec][:8], nrow=8)  # fmt: skip
        from PIL import Image

        w = max(grid.width, row.width)
        both = Image.new("RGB", (w, grid.height + row.height + 16), (255, 255, 255))
        both.paste(grid.convert("RGB"), (0, 0))
        both.paste(_label(row, "held-out images (top) and reconstructions"), (0, grid.height + 2))
        grid = both
        what += "; then held-out images and their reconstructions"
    IMAGES.mkdir(parents=True, exist_ok=True)
    path = IMAGES / f"{job}.png"
    save_png(grid, path, {**out.params[0], "prompt": f"{job}: {what}", "n": len(out.images)})
    if pipe.family == "vae":
        trav = pipe.traverse(seed=0, dims=6, steps=9, class_label=3 if k else None)
        trav = trav.resize((trav.width * zoom, trav.height * zoom), 0)
        save_png(trav, IMAGES / f"{job}_traversal.png", {"prompt": f"{job}: latent traversal"})
    else:
        strip = pipe.interpolate(1, 2, frames=10, class_label=7)
        s = make_grid([big(im) for im in strip.images], nrow=10)
        save_png(s, IMAGES / f"{job}_interpolation.png", strip.params[0])
    return path


# the stability check's GAN recipes: the benchmark's, and a plain one (the seeds' objective in
# its non-saturating form, no spectral norm, no augmentation)
STABILITY = {
    "stability": {},
    "stability_plain": {"loss": "nonsat", "spectral_norm": False, "augment": "none"},
}


def _stability(seeds: int, steps: int, runs_dir: Path, variant: str) -> dict[str, Any]:
    """Short cGAN runs (tiny preset) with different seeds: any NaN / divergence?"""
    import imagesynth
    from imagesynth.training.trainer import TrainingDiverged

    spec = {**COMMON, **JOBS["cgan_digits"], "log_every": 25, "progress": False}
    spec["family_options"] = {**spec["family_options"], "diversity_n": 8, **STABILITY[variant]}
    rows = []
    for s in range(seeds):
        t = time.perf_counter()
        try:
            res = imagesynth.train(
                **{**spec, "seed": s, "tag": f"stab{s}"}, steps=steps, runs_dir=str(runs_dir)
            )
            last = res.stats[-1]
            finite = all(
                math.isfinite(v) for r in res.stats for v in r.values() if isinstance(v, float)
            )
            rows.append({
                "seed": s, "ok": finite and last["nonfinite_skipped"] == 0,
                "nonfinite_skipped": last["nonfinite_skipped"],
                "d_acc_real": last.get("D/acc_real"), "d_acc_fake": last.get("D/acc_fake"),
                "diversity_ratio": last.get("G/diversity_ratio"),
                "seconds": time.perf_counter() - t,
            })  # fmt: skip
        except TrainingDiverged as exc:
            rows.append({"seed": s, "ok": False, "error": str(exc)})
        print(f"stability seed {s}: {rows[-1]}")
    return {
        "options": STABILITY[variant],
        "seeds": seeds,
        "steps": steps,
        "runs_without_nan": sum(r["ok"] for r in rows),
        "runs": rows,
    }


def _side_by_side(jobs: list[str]) -> Path | None:
    from PIL import Image

    from imagesynth.io.pngmeta import save_png

    tiles = []
    for job in jobs:
        p = IMAGES / f"{job}.png"
        if p.is_file():
            tiles.append(_label(Image.open(p), job))
    if not tiles:
        return None
    h = max(t.height for t in tiles)
    w = sum(t.width for t in tiles) + 8 * (len(tiles) - 1)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 8
    path = IMAGES / "gan_vae_side_by_side.png"
    save_png(out, path, {"prompt": "side by side: " + ", ".join(jobs)})
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget per model")
    ap.add_argument("--runs-dir", default="/work/bench_runs/gan_vae")
    ap.add_argument("--n", type=int, default=1000, help="samples for FID / KID / accuracy")
    ap.add_argument("--only", default="", help="comma list of jobs (and/or 'stability')")
    ap.add_argument("--stability-seeds", type=int, default=10)
    ap.add_argument("--stability-steps", type=int, default=300)
    args = ap.parse_args()
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    wanted = [j for j in args.only.split(",") if j] or [*JOBS, *STABILITY]
    for job in wanted:
        cache = runs / f"{job}.json"
        if cache.is_file():
            print(f"{job}: cached in {cache}")
            continue
        if job in STABILITY:
            fig = _stability(args.stability_seeds, args.stability_steps, runs / job, job)
        elif job in JOBS:
            model_dir, fig = _train(job, args.minutes, runs / job)
            fig.update(_evaluate(job, model_dir, args.n))
            if job.endswith("digits") and JOBS[job]["family"] == "vae":
                fig["recon_psnr_db"] = _recon_psnr(model_dir)
            fig["grid"] = str(_grids(job, model_dir).relative_to(ROOT))
            fig["model"] = str(model_dir)
            fig["minutes_budget"] = args.minutes
        else:
            raise SystemExit(f"unknown job {job!r}; expected {', '.join([*JOBS, *STABILITY])}")
        cache.write_text(json.dumps(fig, indent=2))
        print(f"{job}: {json.dumps(fig)[:400]}")
    # merge whatever is cached into one flat result
    figures: dict[str, Any] = {}
    for job in [*JOBS, *STABILITY]:
        cache = runs / f"{job}.json"
        if not cache.is_file():
            continue
        fig = json.loads(cache.read_text())
        if job in STABILITY:  # flat: one list per per-seed figure
            name = "gan_" + job
            if "runs" not in fig:  # written by an older version of this script
                fig = {k.removeprefix("gan_stability_"): v for k, v in fig.items()}
            rows = fig["runs"]
            figures[f"{name}_options"] = fig.get("options", STABILITY[job])
            figures[f"{name}_seeds"] = fig["seeds"]
            figures[f"{name}_steps"] = fig["steps"]
            figures[f"{name}_runs_without_nan"] = fig["runs_without_nan"]
            for key in ("d_acc_real", "d_acc_fake", "diversity_ratio"):
                figures[f"{name}_{key}"] = [r.get(key) for r in rows]
            continue
        for k, v in fig.items():
            figures[f"{job}_{k}"] = v
    if "cgan_digits_acc" in figures:
        figures["cgan_digits_class_accuracy"] = figures["cgan_digits_acc"]
    if "vae_digits_recon_psnr_db" in figures:
        figures["vae_digits_recon_psnr"] = figures["vae_digits_recon_psnr_db"]
    side = _side_by_side([j for j in JOBS if (runs / f"{j}.json").is_file()])
    if side:
        figures["side_by_side_grid"] = str(side.relative_to(ROOT))
    print(f"\n{'job':<18} {'FID':>8} {'KID':>8} {'acc':>6} {'img/s':>8} {'PSNR':>6} {'steps':>6}")
    for job in JOBS:
        if f"{job}_fid" not in figures:
            continue
        g = lambda k, job=job: figures.get(f"{job}_{k}")  # noqa: E731
        acc = g("acc")
        psnr = g("recon_psnr_db")
        print(
            f"{job:<18} {g('fid'):>8.2f} {g('kid'):>8.4f} "
            f"{'-' if acc is None else f'{acc:.3f}':>6} {g('samples_per_s'):>8.0f} "
            f"{'-' if psnr is None else f'{psnr:.1f}':>6} {g('train_steps'):>6}"
        )
    for job in STABILITY:
        name = "gan_" + job
        if f"{name}_runs_without_nan" in figures:
            print(
                f"GAN {job} {figures[f'{name}_options']}: {figures[f'{name}_runs_without_nan']}/"
                f"{figures[f'{name}_seeds']} seeds without NaN ({figures[f'{name}_steps']} steps)"
            )
    write_result("gan_vae_digits", figures, command_line())


if __name__ == "__main__":
    main()
