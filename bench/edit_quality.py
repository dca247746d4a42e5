"""Editing quality of a text-to-image model on `shapes`: inpainting and img2img.

Inpainting: held-out two-object test scenes; the mask covers the second object's box (grown
by 2 px); the prompt is the scene's caption with that object's color changed. Reported: the
PSNR of the unmasked region (pixels more than 1 px outside the mask) against the input
(target >= 35 dB) and how often the judge finds the whole edited prompt satisfied (the kept
object, the new color, the relation, the background).
img2img: one-object test scenes; the prompt changes the object's color; strength 0.7.
Reported: the judge's rate for the edited prompt and for the unchanged attributes.

    python bench/edit_quality.py               # the bundled model
    python bench/edit_quality.py --model DIR --n 100
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from common import command_line, write_result


def other_color(rng: np.random.Generator, avoid: set[str]) -> str:
    from imagesynth.data.shapes import COLORS

    choices = [c for c in COLORS if c not in avoid]
    return choices[int(rng.integers(len(choices)))]


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64))[where]
    mse = float((d**2).mean()) if d.size else 0.0
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--strength", type=float, default=0.7)
    ap.add_argument("--grid", type=Path, default=Path("docs/images/t2i_edits.png"))
    args = ap.parse_args()

    from imagesynth import load
    from imagesynth.bundled import bundled_model_path
    from imagesynth.data import get_dataset
    from imagesynth.data.shapes import caption_for
    from imagesynth.io.images import make_grid
    from imagesynth.metrics.shapes_judge import judge

    pipe = load(args.model or bundled_model_path())
    size = pipe.size
    ds = get_dataset("shapes", size=size, split="test", seed=0)
    rng = np.random.default_rng(0)
    two, one = [], []
    i = 0
    while len(two) < args.n or len(one) < args.n:
        it = ds[i]
        (two if it.attributes["count"] == 2 else one).append(it)
        i += 1
    two, one = two[: args.n], one[: args.n]
    t0 = time.perf_counter()

    psnrs, ok_inpaint, tiles = [], [], []
    for k, it in enumerate(two):
        att = copy.deepcopy(it.attributes)
        b = att["objects"][1]
        avoid = {b["color"], att["objects"][0]["color"]}
        b["color"] = other_color(rng, avoid)
        prompt = caption_for(att)
        x0, y0, x1, y1 = b["box"]
        mask = Image.new("L", (size, size), 0)
        mask.paste(255, (max(0, int(x0) - 2), max(0, int(y0) - 2), int(x1) + 3, int(y1) + 3))
        out = pipe.inpaint(it.image, mask, prompt, seed=k, guidance_scale=args.cfg)
        res = np.asarray(out.images[0])
        keep = np.asarray(mask.filter(ImageFilter.MaxFilter(3))) == 0
        psnrs.append(psnr(res, np.asarray(it.image.convert("RGB")), keep))
        ok_inpaint.append(judge(out.images[0], att).all_ok)
        if k < 8:
            tiles += [it.image.convert("RGB"), mask.convert("RGB"), out.images[0]]

    ok_img2img, kept_img2img = [], []
    for k, it in enumerate(one):
        att = copy.deepcopy(it.attributes)
        o = att["objects"][0]
        o["color"] = other_color(rng, {o["color"]})
        prompt = caption_for(att)
        out = pipe.img2img(it.image, prompt, args.strength, seed=k, guidance_scale=args.cfg)
        v = judge(out.images[0], att)
        ok_img2img.append(v.all_ok)
        kept_img2img.append(bool(v.shape and v.position and v.background))
        if k < 8:
            tiles += [it.image.convert("RGB"), out.images[0], Image.new("RGB", (size, size))]

    finite = [p for p in psnrs if math.isfinite(p)]
    figures = {
        "n": args.n,
        "inpaint_unmasked_psnr_db_mean": round(float(np.mean(finite)) if finite else 99.0, 2),
        "inpaint_unmasked_psnr_db_min": round(float(np.min(finite)) if finite else 99.0, 2),
        "inpaint_unmasked_identical_fraction": round(1 - len(finite) / len(psnrs), 3),
        "inpaint_prompt_satisfied": round(float(np.mean(ok_inpaint)), 4),
        "img2img_prompt_satisfied": round(float(np.mean(ok_img2img)), 4),
        "img2img_shape_position_background_kept": round(float(np.mean(kept_img2img)), 4),
        "img2img_strength": args.strength,
        "cfg": args.cfg,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    for k, v in figures.items():
        print(f"{k:42s} {v}")
    grid = make_grid([t.resize((96, 96), Image.NEAREST) for t in tiles], nrow=6)
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.grid)
    print(f"wrote {args.grid} (rows: input | mask | inpainted || input | img2img | -)")
    write_result("edit_quality", figures, command_line())


if __name__ == "__main__":
    main()
