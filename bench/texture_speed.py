"""Texture synthesis: seconds for a 256 px output from a 64 px sample, and Gram distance."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result
from imagesynth.classical.features import RandomFeatures, gram
from imagesynth.classical.texture import efros_leung, neural_texture, quilt
from imagesynth.data.skimage_sets import sample_image


def gram_distance(a: np.ndarray, b: np.ndarray, net: torch.nn.Module) -> float:
    """Mean relative Gram distance over the random network's scales (0 = same statistics)."""
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() * 2 - 1
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() * 2 - 1
    fa, fb = net(ta, net.names[:3]), net(tb, net.names[:3])
    d = [((gram(fa[n]) - gram(fb[n])).norm() / gram(fa[n]).norm()).item() for n in fa]
    return float(np.mean(d))


def main() -> None:
    torch.set_num_threads(2)
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    net = RandomFeatures(seed=1)  # a different seed from the synthesis network
    figs: dict[str, float] = {}
    for name in ("brick", "gravel"):
        s = np.asarray(sample_image(name).crop((0, 0, 64, 64)), dtype=np.float32) / 255
        rng = np.random.default_rng(0)
        noise = s.reshape(-1, 3)[rng.integers(0, 64 * 64, 256 * 256)].reshape(256, 256, 3)
        figs[f"texture_{name}_shuffled_pixels_gram_distance"] = gram_distance(s, noise, net)
        for method, fn in (
            ("quilting", lambda s=s: quilt(s, 256, seed=0)),
            ("efros_leung", lambda s=s: efros_leung(s, 256, seed=0)),
            ("neural", lambda s=s: neural_texture(s, 256, RandomFeatures(), steps=steps)),
        ):
            t = time.perf_counter()
            out = fn()
            figs[f"texture_{name}_{method}_seconds"] = time.perf_counter() - t
            figs[f"texture_{name}_{method}_gram_distance"] = gram_distance(s, out, net)
    for k, v in figs.items():
        print(f"{k:<50} {v:8.3f}")
    write_result("texture_speed", figs, command_line())


if __name__ == "__main__":
    main()
