"""Style transfer: a content x style grid, seconds per 256 px image (Adam vs L-BFGS) and how
far the style and content losses fall, with the offline default features (random VGG).

    python bench/style_transfer.py                    # grid + timings -> style_grid.png
    python bench/style_transfer.py --skip-grid --vgg VGG19.safetensors   # default vs VGG-19

The style images are made here, so nothing is downloaded: a procedural "painting" (oriented
coloured brush strokes on a swirl field), a procedural stained-glass mosaic, and the bundled
brick texture. Contents: the bundled chelsea, coffee and astronaut photos.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result
from imagesynth.classical.features import get_feature_net, gram
from imagesynth.classical.style import StyleOptions, style_transfer, to_tensor
from imagesynth.data.skimage_sets import sample_image
from imagesynth.io.pngmeta import save_png

DOCS = Path(__file__).resolve().parent.parent / "docs" / "images"
CONTENTS = ("chelsea", "coffee", "astronaut")


def painting(size: int = 256, seed: int = 0) -> Image.Image:
    """Procedural 'painted' style: short coloured strokes following a swirling field."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), (20, 30, 70))
    draw = ImageDraw.Draw(im)
    palette = [(22, 45, 120), (40, 90, 170), (240, 200, 60), (250, 235, 150)]
    palette += [(30, 60, 40), (90, 140, 200), (200, 120, 40), (15, 20, 50)]
    for _ in range(size * size // 18):
        x, y = rng.uniform(0, size, 2)
        angle = 1.5 * math.sin(x / size * 6.0) + 1.5 * math.cos(y / size * 5.0)
        length = rng.uniform(6, 16) * size / 256
        dx, dy = math.cos(angle) * length, math.sin(angle) * length
        band = int((y / size * 3 + x / size * 2 + rng.normal(0, 0.6)) * 2) % len(palette)
        colour = np.clip(np.array(palette[band]) + rng.normal(0, 18, 3), 0, 255).astype(int)
        width = max(2, 3 * size // 256)
        draw.line([(x - dx, y - dy), (x + dx, y + dy)], fill=tuple(colour), width=width)
    return im.filter(ImageFilter.SMOOTH)


def mosaic(size: int = 256, seed: int = 0, cells: int = 90) -> Image.Image:
    """Procedural stained glass: Voronoi cells in six colours with dark lead lines."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform(0, size, (cells, 2))
    colours = np.array([(200, 40, 40), (240, 180, 30), (40, 90, 200), (30, 150, 80)])
    colours = np.concatenate([colours, [(230, 230, 220), (120, 40, 150)]])[
        rng.integers(0, 6, cells)
    ]
    yy, xx = np.mgrid[0:size, 0:size]
    d = np.sqrt((xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2)
    near = np.sort(d, -1)
    img = colours[d.argmin(-1)].astype(np.uint8)
    img[(near[..., 1] - near[..., 0]) < 3] = 25
    return Image.fromarray(img)


def square(im: Image.Image, side: int) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return im.crop(box).resize((side, side), Image.LANCZOS)


def styles(side: int = 256) -> dict[str, Image.Image]:
    return {
        "painting": painting(side),
        "mosaic": mosaic(side),
        "brick": square(sample_image("brick"), side),
    }


@torch.no_grad()
def losses(net, x: Image.Image, content: Image.Image, style: Image.Image) -> tuple[float, float]:
    """(style, content) distances of x: mean over the style layers of ||G(x) - G(s)||^2 /
    ||G(s)||^2, and ||phi(x) - phi(c)||^2 / ||phi(c)||^2 on the content layer."""
    layers = list(net.style_layers)
    fx = net(to_tensor(x), [*layers, net.content_layer])
    fs = net(to_tensor(style), layers)
    fc = net(to_tensor(content), [net.content_layer])[net.content_layer]
    st = [
        float((gram(fx[n]) - gram(fs[n])).pow(2).sum() / gram(fs[n]).pow(2).sum()) for n in layers
    ]
    c = fx[net.content_layer]
    return float(np.mean(st)), float((c - fc).pow(2).sum() / fc.pow(2).sum())


def run(content, style, net, opts) -> tuple[Image.Image, float]:
    """The result and the process CPU seconds it took (one thread: on a shared machine CPU
    time is what the image costs; wall time depends on the neighbours' load)."""
    t = time.process_time()
    out, _ = style_transfer(content, [style], net, opts)
    return out, time.process_time() - t


def grid(rows: list[list[Image.Image]], side: int, pad: int = 4) -> Image.Image:
    n_r, n_c = len(rows), max(len(r) for r in rows)
    out = Image.new("RGB", (n_c * side + (n_c - 1) * pad, n_r * side + (n_r - 1) * pad), "white")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            if im is not None:
                tile = im.resize((side, side), Image.LANCZOS)
                out.paste(tile, (j * (side + pad), i * (side + pad)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=StyleOptions().steps)
    ap.add_argument("--vgg", help="VGG-19 weights (torchvision layout) for the comparison")
    ap.add_argument("--vgg-size", type=int, default=128)
    ap.add_argument("--skip-grid", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    size = args.size
    net = get_feature_net(None)
    sty = styles(size)
    contents = {name: square(sample_image(name), size) for name in CONTENTS}
    figs: dict[str, float] = {}
    opts = StyleOptions(size=size, steps=args.steps)
    params = {"features": net.kind, "size": size, "steps": args.steps, "optimizer": "adam"}
    if not args.skip_grid:
        rows: list[list[Image.Image | None]] = [[None, *sty.values()]]
        times, s_red, c_loss = [], [], []
        for cname, c in contents.items():
            row: list[Image.Image | None] = [c]
            for sname, s in sty.items():
                out, sec = run(c, s, net, opts)
                st0, _ = losses(net, c, c, s)
                st1, c1 = losses(net, out, c, s)
                times.append(sec)
                s_red.append(st1 / st0)
                c_loss.append(c1)
                print(f"{cname:>10} x {sname:<9} {sec:6.1f} cpu s  style {st0:.3g} -> {st1:.3g}")
                row.append(out)
            rows.append(row)
        save_png(grid(rows, size), DOCS / "style_grid.png", {**params, "contents": CONTENTS})
        figs["style_adam_cpu_seconds_per_256px_mean"] = float(np.mean(times))
        figs["style_final_to_initial_style_loss_mean"] = float(np.mean(s_red))
        figs["style_final_content_loss_mean"] = float(np.mean(c_loss))
    if args.vgg:  # its own result file, so it can run beside the grid
        vgg_compare(args.vgg, args.vgg_size, args.steps, figs)
        write_result("style_transfer_vgg", figs, command_line())
        return
    # Adam vs L-BFGS on one pair, same step count
    c, s = contents["chelsea"], sty["painting"]
    st0, _ = losses(net, c, c, s)
    for name in ("adam", "lbfgs"):
        o = StyleOptions(size=size, steps=args.steps, optimizer=name)
        out, sec = run(c, s, net, o)
        st1, c1 = losses(net, out, c, s)
        figs[f"style_{name}_cpu_seconds_per_256px"] = sec
        figs[f"style_{name}_final_to_initial_style_loss"] = st1 / st0
        figs[f"style_{name}_final_content_loss"] = c1
        print(f"{name:>6}: {sec:6.1f} s  style loss x{st1 / st0:.3f}  content {c1:.3f}")
    for k, v in figs.items():
        print(f"{k:<50} {v:8.3f}")
    write_result("style_transfer", figs, command_line())


def vgg_compare(path: str, side: int, steps: int, figs: dict[str, float]) -> None:
    """2 x 2: rows chelsea x painting and astronaut x mosaic; columns default, VGG-19."""
    nets = {"default": get_feature_net(None), "vgg19": get_feature_net(path)}
    pairs = [("chelsea", "painting"), ("astronaut", "mosaic")]
    sty = styles(side)
    rows = []
    for cname, sname in pairs:
        c = square(sample_image(cname), side)
        row = [c, sty[sname]]
        for kind, net in nets.items():
            out, sec = run(c, sty[sname], net, StyleOptions(size=side, steps=steps))
            figs[f"style_{kind}_cpu_seconds_per_{side}px_{cname}"] = sec
            print(f"{kind}: {cname} x {sname} {sec:.1f} s")
            row.append(out)
        rows.append(row)
    params = {"size": side, "steps": steps, "columns": "content, style, default, vgg19"}
    save_png(grid(rows, side), DOCS / "style_default_vs_vgg.png", params)


if __name__ == "__main__":
    main()
