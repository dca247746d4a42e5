"""Every model family at the same CPU budget, on digits (16 px) and shapes (32 px): one table.

Trains diffusion (tiny UNet), a conditional GAN (the recipe of gan_vae_digits.py), a
conditional VAE, a gated PixelCNN and a VQ-VAE + transformer prior, all class-conditional:
digits on their 10 labels, shapes on the 18 colour+shape labels of the first-named object
(the classes of the `domain:shapes` extractor). Every model gets `--minutes` of process CPU
time (`budget_clock="cpu"`, fair on a shared machine); the VQ-VAE and its transformer prior
share one budget (`--vq-split` of it to the VQ-VAE, the rest to the prior).

Measured per model with the evaluation suite's domain extractor (domain:digits /
domain:shapes): FID and KID of `--n` class-conditional samples against the dataset, each
beside its real-data floor (held-out real images of the same count), class accuracy of the
samples by the extractor's classifier (trained on real data) beside its accuracy on real
held-out images, sampling throughput (wall and per CPU-second, 1 thread) and training steps.
Writes bench/results/family_comparison.json and one grid per dataset
(docs/images/families_digits.png, docs/images/families_shapes.png).

    OMP_NUM_THREADS=1 nice -n 10 python bench/family_comparison.py --minutes 2 --parallel 2
    python bench/family_comparison.py --eval-only /work/bench_runs/families   # no retraining
    python bench/family_comparison.py --job gan_digits --runs-dir R            # one job

Each job trains in its own process (RUNS_DIR/<job>/train.json records the model dirs) and
caches its figures in RUNS_DIR/<job>/eval.json; a later run reuses both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import command_line, write_result

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
FAMILIES = ("diffusion", "gan", "vae", "pixelcnn", "vq")
LABELS = {
    "diffusion": "diffusion",
    "gan": "cGAN",
    "vae": "cVAE",
    "pixelcnn": "PixelCNN",
    "vq": "VQ-VAE+transformer",
}
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"data": "digits", "size": 16, "data_options": {}, "n": 400},
    "shapes": {
        "data": "shapes",
        "size": 32,
        "data_options": {"label_mode": "color_shape"},  # the domain:shapes classes
        "n": 200,
    },
}
EXTRACTOR = {"digits": "domain:digits", "shapes": "domain:shapes"}
COMMON: dict[str, Any] = dict(
    cond="class",
    log_every=50,
    sample_every=100_000,
    ckpt_every=100_000,
    sample_n=8,
    progress=True,
    seed=0,
)
# the recipes of the existing benches (digits_class_accuracy, gan_vae_digits, autoregressive)
RECIPES: dict[str, dict[str, Any]] = {
    "diffusion": dict(
        family="diffusion", batch=64, lr=1e-3, warmup_steps=100, family_options={"preset": "tiny"}
    ),
    "gan": dict(
        family="gan",
        batch=64,
        lr=2e-4,
        lr_schedule="constant",
        warmup_steps=0,
        clip_grad=0.0,
        ema_decay=0.999,
        family_options={
            "preset": "dcgan-tiny",
            "loss": "hinge",
            "cond": "projection",
            "augment": "diffaugment",
            "aug_policy": "translation",
            "d_lr_scale": 2.0,
        },
    ),
    "vae": dict(
        family="vae",
        batch=64,
        lr=1e-3,
        warmup_steps=50,
        clip_grad=1.0,
        ema_decay=0.999,
        family_options={"preset": "tiny"},
    ),
    "pixelcnn": dict(
        family="pixelcnn",
        batch=32,
        lr=2e-3,
        warmup_steps=100,
        family_options={"width": 48, "layers": 7},
    ),
    "vqvae": dict(
        family="vqvae",
        cond="none",
        batch=32,
        lr=2e-3,
        warmup_steps=100,
        family_options={"factor": 4, "codebook_size": 128, "code_dim": 32, "width": 64},
    ),
    "transformer": dict(
        family="transformer",
        batch=32,
        lr=2e-3,
        warmup_steps=100,
        family_options={"dim": 128, "layers": 4, "heads": 4, "dropout": 0.1},
    ),
}
SAMPLE_KW = {"diffusion": {"sampler": "dpmpp-2m", "steps": 20, "guidance_scale": 3.0}}
SAMPLE_BATCH = 100
GRID_CLASSES = {"digits": list(range(10)), "shapes": [0, 4, 8, 9, 13, 17]}  # 6 colours, 3 shapes
GRID_PER_CLASS = 4
# digits first (the targets), then shapes; longest first within each
ORDER = [f"{f}_{d}" for d in DATASETS for f in ("diffusion", "pixelcnn", "vq", "gan", "vae")]


def _job(job: str) -> tuple[str, str]:
    family, dataset = job.rsplit("_", 1)
    if family not in FAMILIES or dataset not in DATASETS:
        raise SystemExit(f"unknown job {job!r}; expected one of {', '.join(ORDER)}")
    return family, dataset


# ----- training ----------------------------------------------------------------------------
def _train_one(recipe: str, dataset: str, minutes: float, runs: Path, **extra: Any) -> dict:
    import imagesynth

    d = DATASETS[dataset]
    spec = {**COMMON, **RECIPES[recipe], **extra}
    spec["family_options"] = {**spec["family_options"], **extra.get("family_options", {})}
    t, c = time.perf_counter(), time.process_time()
    res = imagesynth.train(
        **spec, data=d["data"], size=d["size"], data_options=d["data_options"], minutes=minutes,
        budget_clock="cpu", runs_dir=str(runs), tag=f"families-{recipe}",
    )  # fmt: skip
    return {
        "model": str(res.model_dir),
        "steps": res.step,
        "stopped": res.stopped,
        "wall_minutes": (time.perf_counter() - t) / 60,
        "cpu_minutes": (time.process_time() - c) / 60,
        "budget_cpu_minutes": minutes,
    }


def train_job(job: str, minutes: float, runs: Path, vq_split: float) -> dict[str, Any]:
    family, dataset = _job(job)
    out = runs / job
    out.mkdir(parents=True, exist_ok=True)
    if family == "vq":
        vq = _train_one("vqvae", dataset, minutes * vq_split, out)
        tr = _train_one(
            "transformer", dataset, minutes * (1 - vq_split), out,
            family_options={"vqvae": vq["model"]},
        )  # fmt: skip
        rec = {
            "model": tr["model"], "vqvae_model": vq["model"],
            "steps": tr["steps"], "vqvae_steps": vq["steps"],
            "cpu_minutes": vq["cpu_minutes"] + tr["cpu_minutes"],
            "wall_minutes": vq["wall_minutes"] + tr["wall_minutes"],
            "vqvae_budget_cpu_minutes": vq["budget_cpu_minutes"],
            "transformer_budget_cpu_minutes": tr["budget_cpu_minutes"],
        }  # fmt: skip
    else:
        rec = _train_one(family, dataset, minutes, out)
    rec["budget_cpu_minutes"] = minutes
    (out / "train.json").write_text(json.dumps(rec, indent=2))
    return rec


# ----- evaluation --------------------------------------------------------------------------
def _class_names(dataset: str) -> list[str]:
    from imagesynth.data import get_dataset

    d = DATASETS[dataset]
    return list(get_dataset(d["data"], size=d["size"], **d["data_options"]).class_names)


def _sample(pipe: Any, family: str, labels: list[int], seed: int = 0) -> list:
    """PIL samples for `labels`, in batches (sample i of a batch from seed + batch start)."""
    from tqdm.auto import tqdm

    images: list = []
    for s in tqdm(range(0, len(labels), SAMPLE_BATCH), desc=f"sample {family}", unit="batch"):
        chunk = labels[s : s + SAMPLE_BATCH]
        out = pipe(n=len(chunk), seed=seed + s, class_labels=chunk, **SAMPLE_KW.get(family, {}))
        images.extend(out.images)
    return images


def evaluate_job(job: str, runs: Path, n: int | None = None) -> dict[str, Any]:
    import imagesynth
    from imagesynth.io.images import pil_to_tensor
    from imagesynth.io.pngmeta import save_png
    from imagesynth.metrics import evaluate_samples

    family, dataset = _job(job)
    rec = json.loads((runs / job / "train.json").read_text())
    names = _class_names(dataset)
    k = len(names)
    n = n or DATASETS[dataset]["n"]
    pipe = imagesynth.load(rec["model"], device="cpu")
    _sample(pipe, family, [0, 1])  # warm-up
    labels = [i % k for i in range(n)]
    t, c = time.perf_counter(), time.process_time()
    images = _sample(pipe, family, labels)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    x = torch.stack([pil_to_tensor(im) for im in images])
    res = evaluate_samples(
        x, DATASETS[dataset]["data"], ("fid", "kid", "acc"), extractor=EXTRACTOR[dataset],
        labels=labels, class_names=names, ref_size=DATASETS[dataset]["size"], seed=0,
        ref_options=DATASETS[dataset]["data_options"] or None,  # shapes: the 18-class labels
        progress=False,
    )  # fmt: skip
    v = res["values"]
    fig = {
        "fid": v["fid"], "fid_real_floor": v.get("fid_floor"),
        "kid": v["kid"], "kid_real_floor": v.get("kid_floor"),
        "class_accuracy": v["acc"], "classifier_real_accuracy": v.get("acc_floor"),
        "samples_per_s": n / wall, "samples_per_cpu_s": n / cpu, "eval_samples": n,
        "train_steps": rec["steps"], "train_cpu_minutes": rec["cpu_minutes"],
        "train_wall_minutes": rec["wall_minutes"], "budget_cpu_minutes": rec["budget_cpu_minutes"],
    }  # fmt: skip
    if family == "vq":
        fig["vqvae_train_steps"] = rec["vqvae_steps"]
        fig["vqvae_budget_cpu_minutes"] = rec["vqvae_budget_cpu_minutes"]
    # the grid block: GRID_PER_CLASS samples of each grid class, same seeds for every family
    grid_labels = [c for c in GRID_CLASSES[dataset] for _ in range(GRID_PER_CLASS)]
    block = _sample(pipe, family, grid_labels, seed=10_000)
    tiles = runs / job / "grid_tiles"
    tiles.mkdir(exist_ok=True)
    for i, im in enumerate(block):
        save_png(im, tiles / f"{i:03d}.png", {"prompt": f"{job} class {names[grid_labels[i]]}"})
    (runs / job / "eval.json").write_text(json.dumps(fig, indent=2))
    return fig


# ----- the side-by-side grid ---------------------------------------------------------------
def _real_tiles(dataset: str) -> list:
    from imagesynth.data import get_dataset

    d = DATASETS[dataset]
    ds = get_dataset(d["data"], size=d["size"], split="test", **d["data_options"])
    if hasattr(ds, "length"):
        ds.length = 2000
    want = {c: [] for c in GRID_CLASSES[dataset]}
    for i in range(len(ds)):
        it = ds[i]
        if it.label in want and len(want[it.label]) < GRID_PER_CLASS:
            want[it.label].append(it.image)
        if all(len(v) == GRID_PER_CLASS for v in want.values()):
            break
    return [im for c in GRID_CLASSES[dataset] for im in want[c]]


def side_by_side(dataset: str, runs: Path) -> Path | None:
    """One labelled block per family (rows: classes, columns: 4 seeds), real data first."""
    from PIL import Image, ImageDraw

    from imagesynth.io.pngmeta import save_png

    names = _class_names(dataset)
    classes = GRID_CLASSES[dataset]
    zoom = 2 * (32 // DATASETS[dataset]["size"])  # digits 16 px -> 64, shapes 32 px -> 64
    cell, pad, head, left = DATASETS[dataset]["size"] * zoom, 2, 16, 90
    blocks = [("real (held-out)", _real_tiles(dataset))]
    for family in FAMILIES:
        d = runs / f"{family}_{dataset}" / "grid_tiles"
        if d.is_dir():
            blocks.append((LABELS[family], [Image.open(p) for p in sorted(d.glob("*.png"))]))
    if len(blocks) == 1:
        return None
    bw = GRID_PER_CLASS * (cell + pad) + 10
    out = Image.new("RGB", (left + bw * len(blocks), head + len(classes) * (cell + pad)), "white")
    draw = ImageDraw.Draw(out)
    for r, c in enumerate(classes):
        draw.text((4, head + r * (cell + pad) + cell // 2 - 6), names[c], fill=(0, 0, 0))
    for b, (label, tiles) in enumerate(blocks):
        x0 = left + b * bw
        draw.text((x0 + 2, 2), label, fill=(0, 0, 0))
        for i, im in enumerate(tiles):
            r, col = divmod(i, GRID_PER_CLASS)
            im = im.convert("RGB").resize((cell, cell), Image.NEAREST)
            out.paste(im, (x0 + col * (cell + pad), head + r * (cell + pad)))
    path = IMAGES / f"families_{dataset}.png"
    IMAGES.mkdir(parents=True, exist_ok=True)
    save_png(
        out, path,
        {"prompt": f"{dataset}: rows = classes {', '.join(names[c] for c in classes)}; "
         f"{GRID_PER_CLASS} samples each (seeds from 10000), one block per family",
         "families": [b[0] for b in blocks]},
    )  # fmt: skip
    return path


# ----- driver ------------------------------------------------------------------------------
def _live_pid(runs: Path, job: str) -> int | None:
    """The pid of a job process still running (started by this or an earlier driver)."""
    try:
        pid = int((runs / job / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if f"--job\0{job}\0" in cmdline else None


def _minutes(job: str, args: argparse.Namespace) -> float:
    if _job(job)[1] == "shapes" and args.shapes_minutes is not None:
        return args.shapes_minutes
    return args.minutes


def run_jobs(jobs: list[str], args: argparse.Namespace, runs: Path) -> None:
    """Each job (train + evaluate) in its own 1-thread process, `--parallel` at a time.

    Jobs already running (a live RUNS_DIR/<job>/pid, e.g. from an earlier driver) count
    against `--parallel` and are waited for instead of started again.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    queue = [j for j in jobs if not (runs / j / "eval.json").is_file()]
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    while queue or running:
        external = [j for j in queue if _live_pid(runs, j)]
        for job in [j for j in queue if j not in external]:
            if len(running) + len(external) >= args.parallel:
                break
            queue.remove(job)
            if (runs / job / "eval.json").is_file():
                continue
            (runs / job).mkdir(parents=True, exist_ok=True)
            log = open(runs / job / "log.txt", "a")  # noqa: SIM115
            cmd = [
                sys.executable, __file__, "--job", job, "--runs-dir", str(runs),
                "--minutes", str(_minutes(job, args)), "--vq-split", str(args.vq_split),
            ] + (["--n", str(args.n)] if args.n else [])  # fmt: skip
            print(f"{time.strftime('%H:%M:%S')} start {job}", flush=True)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[job] = (proc, log)
        time.sleep(5)
        for job, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                del running[job]
                print(f"{time.strftime('%H:%M:%S')} done {job} (exit {proc.returncode})")
        for job in external:  # finished elsewhere: done, or back in the queue to evaluate
            if not _live_pid(runs, job) and (runs / job / "eval.json").is_file():
                queue.remove(job)
                print(f"{time.strftime('%H:%M:%S')} done {job} (other driver)", flush=True)


def merge(runs: Path, args: argparse.Namespace) -> None:
    figures: dict[str, Any] = {
        "budget_clock": "cpu",
        "vq_budget_split_vqvae": args.vq_split,
        "runs_dir": str(runs),
    }
    rows = []
    for dataset in DATASETS:
        for family in FAMILIES:
            p = runs / f"{family}_{dataset}" / "eval.json"
            if not p.is_file():
                continue
            fig = json.loads(p.read_text())
            rows.append((family, dataset, fig))
            figures[f"budget_cpu_minutes_{dataset}"] = fig["budget_cpu_minutes"]
            figures[f"eval_samples_{dataset}"] = fig["eval_samples"]
            for k, v in fig.items():
                figures[f"{family}_{dataset}_{k}"] = v
        grid = side_by_side(dataset, runs)
        if grid:
            figures[f"grid_{dataset}"] = str(grid.relative_to(ROOT))
    head = (
        f"{'dataset':<7} {'family':<19} {'FID':>7} {'floor':>6} {'KID':>8} {'floor':>8} "
        f"{'acc':>6} {'real':>6} {'img/s':>8} {'img/cpu-s':>9} {'steps':>6}"
    )
    budgets = ", ".join(f"{d} {figures[f'budget_cpu_minutes_{d}']:g}" for d in DATASETS
                        if f"budget_cpu_minutes_{d}" in figures)  # fmt: skip
    print(f"\nbudget, CPU-minutes per model (1 thread): {budgets}\n{head}")
    for family, dataset, f in rows:
        print(
            f"{dataset:<7} {LABELS[family]:<19} {f['fid']:>7.2f} {f['fid_real_floor']:>6.2f} "
            f"{f['kid']:>8.4f} {f['kid_real_floor']:>8.4f} {f['class_accuracy']:>6.3f} "
            f"{f['classifier_real_accuracy']:>6.3f} {f['samples_per_s']:>8.1f} "
            f"{f['samples_per_cpu_s']:>9.1f} {f['train_steps']:>6}"
        )
    write_result("family_comparison", figures, command_line())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="CPU-minutes per model")
    ap.add_argument("--runs-dir", default="/work/bench_runs/families")
    ap.add_argument("--shapes-minutes", type=float, help="budget on shapes (default --minutes)")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (1 thread each)")
    ap.add_argument("--vq-split", type=float, default=0.6, help="VQ-VAE's share of the vq budget")
    ap.add_argument("--only", default="", help="comma list of jobs (default: all)")
    ap.add_argument("--n", type=int, help="samples per model (default: 400 digits, 200 shapes)")
    ap.add_argument("--job", help="train + evaluate one job in this process")
    ap.add_argument("--eval-only", metavar="RUNS_DIR", help="re-evaluate trained jobs there")
    args = ap.parse_args()
    if args.eval_only:
        runs = Path(args.eval_only)
        for job in ORDER:
            if (runs / job / "train.json").is_file():
                print(f"evaluate {job}", flush=True)
                evaluate_job(job, runs, args.n)
        merge(runs, args)
        return
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    if args.job:
        (runs / args.job).mkdir(parents=True, exist_ok=True)
        (runs / args.job / "pid").write_text(str(os.getpid()))
        if not (runs / args.job / "train.json").is_file():
            train_job(args.job, args.minutes, runs, args.vq_split)
        print(json.dumps(evaluate_job(args.job, runs, args.n)), flush=True)
        return
    jobs = [j for j in args.only.split(",") if j] or ORDER
    for j in jobs:
        _job(j)
    run_jobs(jobs, args, runs)
    merge(runs, args)


if __name__ == "__main__":
    main()
