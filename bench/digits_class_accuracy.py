"""Class-conditional diffusion on digits: do samples show the requested class?

Trains (or loads) a tiny class-conditional model on 16 px digits within a CPU budget,
samples `--per-class` images of each digit with CFG, and reports how often a classifier
trained on real digits labels them as the requested class, beside that classifier's
accuracy on real held-out digits. Target: >= 90 % within <= 30 CPU-minutes of training.

    python bench/digits_class_accuracy.py --minutes 28
    python bench/digits_class_accuracy.py --model runs/00001-digits-diffusion-digits-cls/model
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from common import command_line, train_digits_classifier, write_result

TRAIN = dict(
    family="diffusion",
    data="digits",
    size=16,
    cond="class",
    batch=64,
    steps=3000,
    lr=1e-3,
    warmup_steps=100,
    sample_every=500,
    ckpt_every=500,
    log_every=50,
    family_options={"preset": "tiny"},
    tag="digits-cls",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="skip training: evaluate this model directory")
    ap.add_argument("--minutes", type=float, default=28.0, help="training budget")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--sampler", default="dpmpp-2m")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    import imagesynth

    train_minutes = None
    if args.model is None:
        t = time.perf_counter()
        res = imagesynth.train(**TRAIN, minutes=args.minutes, runs_dir=args.runs_dir)
        train_minutes = (time.perf_counter() - t) / 60
        model_dir = res.model_dir
    else:
        model_dir = Path(args.model)
        info = json.loads((model_dir / "imagesynth.json").read_text())
        stats = info["recipe"]
        train_minutes = None
        print(f"evaluating {model_dir} (trained {stats.get('trained_steps')} steps)")
    clf, real_acc = train_digits_classifier()
    pipe = imagesynth.load(model_dir, device="cpu")
    labels = [c for c in range(10) for _ in range(args.per_class)]
    t = time.perf_counter()
    out = pipe(
        n=len(labels),
        seed=0,
        sampler=args.sampler,
        steps=args.steps,
        class_labels=labels,
        guidance_scale=args.cfg,
    )
    sample_s = time.perf_counter() - t
    from imagesynth.io.images import pil_to_tensor

    x = torch.stack([pil_to_tensor(im) for im in out.images])
    with torch.no_grad():
        pred = clf(x).argmax(1)
    y = torch.tensor(labels)
    acc = (pred == y).float().mean().item()
    per_class = [(pred[y == c] == c).float().mean().item() for c in range(10)]
    from imagesynth.io.images import make_grid
    from imagesynth.io.pngmeta import save_png

    grid_idx = [c * args.per_class + i for c in range(10) for i in range(10)]
    grid = make_grid([out.images[i].resize((32, 32)) for i in grid_idx], nrow=10)
    save_png(
        grid,
        Path(__file__).parent / "results" / "digits_class_grid.png",
        {**out.params[0], "prompt": "rows: digits 0-9", "n": 100},
    )
    # the same without guidance, to show what CFG contributes
    plain = pipe(
        n=len(labels),
        seed=0,
        sampler=args.sampler,
        steps=args.steps,
        class_labels=labels,
        guidance_scale=1.0,
    )
    xp = torch.stack([pil_to_tensor(im) for im in plain.images])
    with torch.no_grad():
        acc_plain = (clf(xp).argmax(1) == y).float().mean().item()
    print(
        f"class accuracy of samples: {acc:.3f} with CFG {args.cfg}, {acc_plain:.3f} without "
        f"(classifier on real test digits: {real_acc:.3f})"
    )
    print("per class:", " ".join(f"{c}:{a:.2f}" for c, a in enumerate(per_class)))
    write_result(
        "digits_class_accuracy",
        {
            "digits_class_accuracy": acc,
            "classifier_real_test_accuracy": real_acc,
            "per_class_accuracy": per_class,
            "samples": len(labels),
            "cfg_scale": args.cfg,
            "sampler": args.sampler,
            "sampling_steps": args.steps,
            "train_minutes": train_minutes,
            "sampling_seconds": sample_s,
            "model": str(model_dir),
        },
        command_line(),
    )


if __name__ == "__main__":
    main()
