"""Upscaling quality on held-out crops: bundled x2 / x4 models vs bicubic / Lanczos, tiled vs
untiled.

Held-out images (never in the bundled models' training data): chelsea, coffee, motorcycle.
HR crops 128 px on a grid; LR = antialiased bicubic downscale (the training degradation).
Also writes docs/images/upscale_x4_before_after.png (a held-out chelsea crop).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result
from imagesynth.data.skimage_sets import sample_image
from imagesynth.metrics.paired import psnr, ssim
from imagesynth.models.superres import downscale
from imagesynth.pipelines.upscale import SuperResolutionPipeline, run_tiled

HELD_OUT = ("chelsea", "coffee", "motorcycle")
BUNDLED = Path(__file__).resolve().parents[1] / "src/imagesynth/bundled"


def crops(side: int = 128, per_image: int = 6) -> torch.Tensor:
    out = []
    for name in HELD_OUT:
        arr = np.asarray(sample_image(name), dtype=np.float32) / 127.5 - 1
        h, w = arr.shape[:2]
        for y in np.linspace(0, h - side, 2).astype(int):
            for x in np.linspace(0, w - side, per_image // 2).astype(int):
                out.append(torch.from_numpy(arr[y : y + side, x : x + side]).permute(2, 0, 1))
    return torch.stack(out)


def u8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def pil_up(lr: torch.Tensor, s: int, method: int) -> torch.Tensor:
    out = []
    for im in lr:
        a = u8(im).byte().permute(1, 2, 0).numpy()
        p = Image.fromarray(a).resize((a.shape[1] * s, a.shape[0] * s), method)
        out.append(torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1).float())
    return torch.stack(out)


def tiled_vs_untiled(pipe: SuperResolutionPipeline, figs: dict, prefix: str) -> None:
    """Whole held-out motorcycle image, untiled vs 96 px tiles with 16 px overlap."""
    big = torch.from_numpy(np.asarray(sample_image("motorcycle"), dtype=np.float32) / 127.5 - 1)
    lr = downscale(big.permute(2, 0, 1)[None], pipe.scale)
    with torch.no_grad():
        whole = pipe.net(lr)
        tiled = run_tiled(pipe.net, lr, pipe.scale, tile=96, overlap=16)
    figs[f"{prefix}_tiled_vs_untiled_psnr_db"] = float(psnr(u8(tiled), u8(whole))[0])
    figs[f"{prefix}_tiled_max_abs_diff_u8"] = float((u8(tiled) - u8(whole)).abs().max())


def picture(
    pipe: SuperResolutionPipeline, path: str, alt: SuperResolutionPipeline | None = None
) -> None:
    """LR (nearest) | bicubic | Lanczos | learned [| alternative model] | original for one
    held-out chelsea crop."""
    from imagesynth.io.pngmeta import save_png

    s = pipe.scale
    hr = np.asarray(sample_image("chelsea"), dtype=np.float32)[60:188, 100:228] / 127.5 - 1
    hr_t = torch.from_numpy(hr).permute(2, 0, 1)[None]
    lr = downscale(hr_t, s)
    with torch.no_grad():
        models = [u8(pipe.net(lr))] + ([u8(alt.net(lr))] if alt is not None else [])
    tiles = [
        u8(torch.nn.functional.interpolate(lr, scale_factor=s, mode="nearest")),
        pil_up(lr, s, Image.BICUBIC),
        pil_up(lr, s, Image.LANCZOS),
        *models,
        u8(hr_t),
    ]
    alt_label = ["perceptual + adversarial"] if alt is not None else []
    labels = ["input (nearest)", "bicubic", "Lanczos", f"learned x{s} (L1)", *alt_label]
    labels.append("original")
    pil = [Image.fromarray(t[0].permute(1, 2, 0).byte().numpy()) for t in tiles]
    pil = [p.resize((p.width * 2, p.height * 2), Image.NEAREST) for p in pil]
    w, h, pad, head = pil[0].width, pil[0].height, 4, 16
    out = Image.new("RGB", (len(pil) * (w + pad) - pad, h + head), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for j, (p, lab) in enumerate(zip(pil, labels, strict=True)):
        out.paste(p, (j * (w + pad), head))
        draw.text((j * (w + pad) + 4, 2), lab, fill=(0, 0, 0))
    save_png(out, path, {"prompt": f"x{s} upscale before / after", "command": command_line()})
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--x2-model", default=str(BUNDLED / "upscaler-x2"))
    ap.add_argument("--x4-model", default=str(BUNDLED / "upscaler-x4"))
    ap.add_argument("--image", default="docs/images/upscale_x4_before_after.png")
    ap.add_argument("--name", default="upscale_quality", help="results file name")
    ap.add_argument("--x2-alt", default=None, help="a second x2 model to compare (figures x2_alt)")
    ap.add_argument("--alt-image", default="docs/images/upscale_x2_perceptual_adv.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipes = {2: SuperResolutionPipeline.from_pretrained(args.x2_model)}
    if Path(args.x4_model, "imagesynth.json").is_file():
        pipes[4] = SuperResolutionPipeline.from_pretrained(args.x4_model)
    alt = SuperResolutionPipeline.from_pretrained(args.x2_alt) if args.x2_alt else None
    hr = crops()
    ref = u8(hr)
    figs: dict[str, float] = {"held_out_crops": len(hr)}
    rows = []
    for s in (2, 4):
        lr = downscale(hr, s)
        res = {
            "bicubic": pil_up(lr, s, Image.BICUBIC),
            "lanczos": pil_up(lr, s, Image.LANCZOS),
        }
        if s in pipes:
            with torch.no_grad():
                res["model"] = u8(pipes[s].net(lr))
                if s == 2 and alt is not None:
                    res["alt"] = u8(alt.net(lr))
        for name, y in res.items():
            p, q = float(psnr(y, ref).mean()), float(ssim(y, ref).mean())
            figs[f"upscale_x{s}_{name}_psnr_db"] = p
            figs[f"upscale_x{s}_{name}_ssim"] = q
            rows.append((f"x{s}", name, p, q))
        if s in pipes:
            figs[f"upscale_x{s}_psnr_gain_db"] = (
                figs[f"upscale_x{s}_model_psnr_db"] - figs[f"upscale_x{s}_bicubic_psnr_db"]
            )
            figs[f"upscale_x{s}_psnr_gain_over_lanczos_db"] = (
                figs[f"upscale_x{s}_model_psnr_db"] - figs[f"upscale_x{s}_lanczos_psnr_db"]
            )
            figs[f"upscale_x{s}_ssim_gain"] = (
                figs[f"upscale_x{s}_model_ssim"] - figs[f"upscale_x{s}_bicubic_ssim"]
            )
    tiled_vs_untiled(pipes[2], figs, "upscale")  # x2: the figure names used so far
    if 4 in pipes:
        tiled_vs_untiled(pipes[4], figs, "upscale_x4")
    for r in rows:
        print(f"{r[0]:>3} {r[1]:<8} PSNR {r[2]:6.2f} dB  SSIM {r[3]:.4f}")
    for s in pipes:
        print(f"x{s} gain over bicubic: {figs[f'upscale_x{s}_psnr_gain_db']:+.2f} dB")
    print(f"x2 tiled vs untiled: {figs['upscale_tiled_vs_untiled_psnr_db']:.1f} dB apart")
    if 4 in pipes:
        print(f"x4 tiled vs untiled: {figs['upscale_x4_tiled_vs_untiled_psnr_db']:.1f} dB apart")
        picture(pipes[4], args.image)
    if alt is not None:
        picture(pipes[2], args.alt_image, alt)
    write_result(args.name, figs, command_line())


if __name__ == "__main__":
    main()
