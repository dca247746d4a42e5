"""Speed of the bundled text-to-image model on this machine: load, one image, a batch of 64.

Targets (2 CPU cores): load <= 15 s (a fresh process: imports, text encoder, weights); one
32 px image at 20 steps <= 1 s after load; a batch of 64 <= 20 s. Peak resident memory of
the process is reported (ru_maxrss). Each timing is the median of --repeats runs.

    python bench/t2i_speed.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import command_line, write_result

CHILD = r"""
import json, resource, time, statistics, sys
t0 = time.perf_counter()
from imagesynth import load
from imagesynth.bundled import bundled_model_path
path = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else bundled_model_path()
pipe = load(path)
t_load = time.perf_counter() - t0
prompt = "a red circle to the left of a blue square on a white background"
pipe(prompt, n=1, steps=2)  # warm-up (first-call allocations)
one, batch = [], []
for r in range(int(sys.argv[2])):
    t = time.perf_counter()
    pipe(prompt, n=1, seed=r, steps=20)
    one.append(time.perf_counter() - t)
for r in range(max(1, int(sys.argv[2]) // 2)):
    t = time.perf_counter()
    pipe(prompt, n=64, seed=r, steps=20)
    batch.append(time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"load_s": t_load, "one_s": statistics.median(one),
                  "batch64_s": statistics.median(batch), "peak_rss_mib": rss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loads", type=int, default=3, help="fresh processes (load time median)")
    args = ap.parse_args()
    runs = []
    for _ in range(args.loads):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, args.model, str(args.repeats)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1])
    figures = {
        "t2i_load_seconds": round(statistics.median(r["load_s"] for r in runs), 2),
        "t2i_one_image_20_steps_seconds": round(statistics.median(r["one_s"] for r in runs), 3),
        "t2i_batch64_20_steps_seconds": round(statistics.median(r["batch64_s"] for r in runs), 2),
        "t2i_peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 0),
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    for k, v in figures.items():
        print(f"{k:36s} {v}")
    write_result("t2i_speed", figures, command_line())


if __name__ == "__main__":
    main()
