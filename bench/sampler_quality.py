"""Quality against sampling cost: Frechet distance per sampler and step count.

Samples a trained model (the class-conditional digits model of digits_class_accuracy.py)
with every sampler at 10 / 20 / 50 steps, and DDPM at 1000 (the reference; more 1000-step
runs with --long, ~15 CPU-minutes each), and reports the Frechet distance to the real
digits train split in the features of a small CNN trained on real digits. That extractor is
a stated placeholder until the evaluation issue's `domain:digits` extractor lands; the
numbers are not comparable with Inception FIDs. A real-data floor (real test split vs real
train split) is printed beside.
Target: DPM-Solver++ or UniPC at 20 steps within 10 % of DDPM at 1000 steps.

    python bench/sampler_quality.py --model runs/00001-digits-diffusion-digits-cls/model
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import (
    command_line,
    digits_tensors,
    features,
    frechet_distance,
    train_digits_classifier,
    write_result,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", default="10,20,50")
    ap.add_argument("--long", default="ddpm:1000", help="extra sampler:steps runs")
    ap.add_argument("--samplers", default="ddpm,ddim,dpmpp-2m,euler,euler-a,heun,unipc")
    args = ap.parse_args()

    import imagesynth
    from imagesynth.io.images import pil_to_tensor

    clf, real_acc = train_digits_classifier()
    real_train, _ = digits_tensors("train")
    real_test, _ = digits_tensors("test")
    f_train = features(clf, real_train)
    floor = frechet_distance(features(clf, real_test), f_train)
    pipe = imagesynth.load(args.model, device="cpu")
    runs = [(s, int(k)) for s in args.samplers.split(",") for k in args.steps.split(",")]
    runs += [(r.split(":")[0], int(r.split(":")[1])) for r in args.long.split(",") if r]
    labels = [i % 10 for i in range(args.n)]
    table: dict[str, dict[int, float]] = {}
    secs: dict[str, dict[int, float]] = {}
    for sampler, steps in runs:
        t = time.perf_counter()
        out = pipe(n=args.n, seed=0, sampler=sampler, steps=steps, class_labels=labels)
        dt = time.perf_counter() - t
        x = torch.stack([pil_to_tensor(im) for im in out.images])
        fd = frechet_distance(features(clf, x), f_train)
        table.setdefault(sampler, {})[steps] = fd
        secs.setdefault(sampler, {})[steps] = dt / args.n
        print(f"{sampler:>9} {steps:>5} steps: FD {fd:8.3f}  ({dt / args.n * 1000:.1f} ms/image)")
    ref = table["ddpm"][1000] if 1000 in table.get("ddpm", {}) else None
    best20 = min(
        table.get("dpmpp-2m", {}).get(20, float("inf")),
        table.get("unipc", {}).get(20, float("inf")),
    )
    print(f"real-data floor (test vs train split): {floor:.3f}")
    if ref:
        print(f"best of DPM++ 2M / UniPC at 20 steps: {best20:.3f} = {best20 / ref:.2f}x DDPM-1000")
    _plot(table, floor, Path(__file__).parent / "results" / "sampler_quality.png")
    figures = {
        "fid_ratio_20_vs_1000_steps": best20 / ref if ref else None,
        "fd_ddpm_1000": ref,
        "fd_real_floor": floor,
        "extractor": "placeholder: penultimate features of a small CNN trained on digits "
        f"(real test accuracy {real_acc:.3f})",
        "n_samples": args.n,
        "fd": {s: {str(k): v for k, v in d.items()} for s, d in table.items()},
        "seconds_per_image": {s: {str(k): v for k, v in d.items()} for s, d in secs.items()},
        "model": args.model,
    }
    write_result("sampler_quality", figures, command_line())


def _plot(table: dict[str, dict[int, float]], floor: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=110)
    for sampler, d in table.items():
        ks = sorted(d)
        ax.plot(ks, [d[k] for k in ks], marker="o", label=sampler)
    ax.axhline(floor, color="k", ls="--", lw=1, label="real-data floor")
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("Frechet distance (digits CNN features)")
    ax.set_title("quality vs sampling steps (tiny UNet, 16 px digits)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    main()
