"""Texture synthesis: seconds for a 256 px output from a 64 px sample, and Gram distance.

    python bench/texture_speed.py [STEPS]     # STEPS: neural optimisation steps (default 300)
    python bench/texture_speed.py --seams     # quilting --tile wrap-around seam measure

Per sample (brick, gravel: 64 px crops of the bundled textures) and method: process CPU
seconds on one thread (what the image costs; the wall time on a shared machine depends on
the neighbours' load, so it is written too) and the Gram distance between sample and output
on an independent judge (the multi-scale random network with a seed no method uses).
"neural_before" is the previous neural method (single scale, multi-scale single-layer
features, no TV term, no histogram matching) for the before / after picture. Writes
docs/images/texture_<sample>.png: sample, quilting, quilting --tile repeated 2 x 2,
Efros-Leung, neural; and docs/images/texture_neural_before_after.png.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result
from imagesynth.classical.features import RandomFeatures, get_feature_net, gram
from imagesynth.classical.style import GatysLoss, StyleOptions
from imagesynth.classical.texture import efros_leung, neural_texture, quilt
from imagesynth.data.skimage_sets import sample_image
from imagesynth.io.pngmeta import save_png

DOCS = Path(__file__).resolve().parent.parent / "docs" / "images"


def gram_distance(a: np.ndarray, b: np.ndarray, net: torch.nn.Module) -> float:
    """Mean relative Gram distance over the judge network's scales (0 = same statistics)."""
    ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() * 2 - 1
    tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() * 2 - 1
    fa, fb = net(ta, net.names[:3]), net(tb, net.names[:3])
    d = [((gram(fa[n]) - gram(fb[n])).norm() / gram(fa[n]).norm()).item() for n in fa]
    return float(np.mean(d))


def neural_before(s: np.ndarray, steps: int, size: int = 256) -> np.ndarray:
    """The neural method as it was before (kept here for the comparison): Adam from noise at
    one scale on the multi-scale single-layer random features, all three channels free, no
    TV term, no histogram matching."""
    net = RandomFeatures()
    opts = StyleOptions(size=size, content_weight=0, style_weight=1, tv_weight=0, steps=steps)
    target = torch.from_numpy(s).permute(2, 0, 1)[None] * 2 - 1
    gen = torch.Generator().manual_seed(0)
    x = ((torch.rand(1, 3, size, size, generator=gen) * 2 - 1) * 0.3).requires_grad_(True)
    loss_fn = GatysLoss(net, None, [target], [1.0], opts)
    opt = torch.optim.Adam([x], lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(x)[0].backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(-1, 1)
    return ((x.detach()[0] + 1) / 2).permute(1, 2, 0).numpy()


def to_pil(a: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))


def strip(images: list[np.ndarray], side: int = 256, pad: int = 4) -> Image.Image:
    out = Image.new("RGB", (len(images) * (side + pad) - pad, side), "white")
    for i, a in enumerate(images):
        im = to_pil(a)
        if im.size != (side, side):
            im = im.resize((side, side), Image.NEAREST)
        out.paste(im, (i * (side + pad), 0))
    return out


def seam_ratio(out: np.ndarray) -> float:
    """Mean abs difference across the wrap-around boundary / across interior neighbours,
    averaged over columns and rows: about 1 when the wrap looks like any other boundary."""
    r = []
    for a in (out, out.transpose(1, 0, 2)):
        r.append(np.abs(a[:, 0] - a[:, -1]).mean() / np.abs(a[:, 1:] - a[:, :-1]).mean())
    return float(np.mean(r))


def seams() -> None:
    """`--seams`: quilting 128 px, seeds 0-3, tiled vs untiled, per sample."""
    figs: dict[str, float] = {}
    for name in ("brick", "gravel", "grass"):
        s = np.asarray(sample_image(name).crop((0, 0, 64, 64)), dtype=np.float32) / 255
        for tile in (True, False):
            r = [seam_ratio(quilt(s, 128, seed=k, tile=tile)) for k in range(4)]
            key = f"quilting_{name}_{'tile' if tile else 'plain'}_seam_ratio"
            figs[key + "_mean"], figs[key + "_max"] = float(np.mean(r)), float(np.max(r))
    for k, v in figs.items():
        print(f"{k:<50} {v:8.3f}")
    write_result("texture_seams", figs, command_line())


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1:] == ["--seams"]:
        seams()
        return
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    judge = RandomFeatures(seed=1)  # a seed no synthesis method uses
    figs: dict[str, float] = {}
    before_after = []
    for name in ("brick", "gravel"):
        s = np.asarray(sample_image(name).crop((0, 0, 64, 64)), dtype=np.float32) / 255
        rng = np.random.default_rng(0)
        noise = s.reshape(-1, 3)[rng.integers(0, 64 * 64, 256 * 256)].reshape(256, 256, 3)
        figs[f"texture_{name}_shuffled_pixels_gram_distance"] = gram_distance(s, noise, judge)
        outs = {}
        for method, fn in (
            ("quilting", lambda s=s: quilt(s, 256, seed=0)),
            ("quilting_tile", lambda s=s: quilt(s, 128, seed=0, tile=True)),
            ("efros_leung", lambda s=s: efros_leung(s, 256, seed=0)),
            ("neural", lambda s=s: neural_texture(s, 256, get_feature_net(None), steps=steps)),
            ("neural_before", lambda s=s: neural_before(s, steps)),
        ):
            t, w = time.process_time(), time.perf_counter()
            out = fn()
            outs[method] = out
            if method == "quilting_tile":  # 128 px tile: only its seam matters here
                continue
            figs[f"texture_{name}_{method}_cpu_seconds"] = time.process_time() - t
            figs[f"texture_{name}_{method}_wall_seconds"] = time.perf_counter() - w
            figs[f"texture_{name}_{method}_gram_distance"] = gram_distance(s, out, judge)
            print(f"{name} {method}: {figs[f'texture_{name}_{method}_cpu_seconds']:.1f} cpu s")
        tiled = np.tile(outs["quilting_tile"], (2, 2, 1))
        row = [s, outs["quilting"], tiled, outs["efros_leung"], outs["neural"]]
        params = {
            "sample": f"{name} 64 px crop",
            "panels": "sample, quilting, quilting --tile (128 px) repeated 2x2, efros-leung, "
            "neural",
            "size": 256,
            "neural_steps": steps,
        }
        save_png(strip(row), DOCS / f"texture_{name}.png", params)
        before_after += [s, outs["neural_before"], outs["neural"]]
    params = {"panels": "per sample: sample, neural before, neural after", "steps": steps}
    save_png(strip(before_after), DOCS / "texture_neural_before_after.png", params)
    for k, v in figs.items():
        print(f"{k:<50} {v:8.3f}")
    figs["neural_steps"] = steps
    write_result("texture_speed", figs, command_line())


if __name__ == "__main__":
    main()
