"""How long does FID on 10,000 32 px images take with the domain extractor? (<= 60 s on 2 cores)

Samples: 10,000 shapes images from another seed with Gaussian pixel noise (sigma 0.1), made
before the clock starts. Cold: reference and held-out features not cached (render 20,000
real images + three feature passes). Warm: the same call again, reference features cached.
The domain:shapes extractor is trained once beforehand (its time is reported separately).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()

    from imagesynth.metrics.evaluate import make_reference, reference_images
    from imagesynth.metrics.extractors import domain_dir, domain_name, train_domain_extractor

    t0 = time.perf_counter()
    ext_path = train_domain_extractor("shapes", size=args.size)  # cached after the first run
    extractor_seconds = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="fid-speed-"))
    os.environ["IMAGESYNTH_CACHE"] = str(tmp)  # empty feature cache for the cold run
    name = domain_name("shapes", args.size)
    shutil.copytree(ext_path, domain_dir(name))
    from imagesynth.metrics.evaluate import evaluate_samples
    from imagesynth.metrics.extractors import load_extractor

    fake_ref = make_reference("shapes", args.size, n=args.n, split="test", seed=1)
    fakes = reference_images(fake_ref).images.float() / 127.5 - 1
    fakes = fakes + 0.1 * torch.randn(fakes.shape, generator=torch.Generator().manual_seed(0))
    fakes = fakes.clamp(-1, 1)
    ext = load_extractor(f"domain:{name}")

    t0 = time.perf_counter()
    cold = evaluate_samples(fakes, "shapes", "fid", extractor=ext, n_ref=args.n)
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = evaluate_samples(fakes, "shapes", "fid", extractor=ext, n_ref=args.n)
    warm_s = time.perf_counter() - t0
    assert abs(cold["values"]["fid"] - warm["values"]["fid"]) < 1e-6 * max(1, cold["values"]["fid"])
    shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()[0]
    figures = {
        "fid_10k_seconds": round(cold_s, 2),
        "fid_10k_seconds_cached_reference": round(warm_s, 2),
        "fid_value": cold["values"]["fid"],
        "fid_real_floor": cold["values"].get("fid_floor"),
        "n_samples": args.n,
        "n_refs": args.n,
        "size_px": args.size,
        "extractor": ext.spec,
        "extractor_train_seconds_or_cached": round(extractor_seconds, 2),
        "extractor_test_accuracy": ext.accuracy,
        "load_average_1min_at_end": round(load, 2),
    }
    for k, v in figures.items():
        print(f"{k:<40} {v}")
    write_result("fid_speed", figures, command_line())


if __name__ == "__main__":
    main()
