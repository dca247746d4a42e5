"""Classification Accuracy Score on digits: synthetic-only vs real-trained, small-real gain.

Uses the class-conditional 16 px digits diffusion model of the bench runs; every classifier
(the DomainNet recipe) gets the same number of updates and is tested on the 359 real
held-out digits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result

MODEL = "/work/bench_runs/runs/00001-digits-diffusion-digits_cls/model"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--n-synthetic", type=int, default=2000)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    from imagesynth.metrics.synth import cas_study

    r = cas_study(
        args.model, "digits", n_synthetic=args.n_synthetic, per_class=args.per_class,
        train_steps=args.train_steps, guidance_scale=args.cfg, steps=args.steps,
    )  # fmt: skip
    figures = {
        "cas_digits_real_accuracy": r["real_accuracy"],
        "cas_digits_synthetic_accuracy": r["synthetic_accuracy"],
        "cas_digits_ratio": r["cas_ratio"],
        "cas_digits_small_real_accuracy": r["small_real_accuracy"],
        "cas_digits_small_real_plus_synthetic_accuracy": r["small_real_plus_synthetic_accuracy"],
        "cas_digits_small_real_gain": r["small_real_gain"],
        **{k: r[k] for k in ("n_real", "n_synthetic", "n_small_real", "n_test", "train_steps")},
        "cfg_scale": args.cfg,
        "sampling_steps": args.steps,
        "seconds": r["seconds"],
        "model": args.model,
    }
    for k, v in figures.items():
        print(f"{k:<46} {v}")
    write_result("cas_digits", figures, command_line())


if __name__ == "__main__":
    main()
