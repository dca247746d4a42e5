"""Upscaling quality on held-out crops: bundled x2 model vs bicubic / Lanczos, tiled vs untiled.

Held-out images (never in the bundled model's training data): chelsea, coffee, motorcycle.
HR crops 128 px on a grid; LR = antialiased bicubic downscale (the training degradation).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, write_result
from imagesynth.data.skimage_sets import sample_image
from imagesynth.metrics.paired import psnr, ssim
from imagesynth.models.superres import downscale
from imagesynth.pipelines.upscale import SuperResolutionPipeline, run_tiled

HELD_OUT = ("chelsea", "coffee", "motorcycle")


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


def main() -> None:
    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1] / "src/imagesynth/bundled/upscaler-x2"
    pipe = SuperResolutionPipeline.from_pretrained(root)
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
        if s == pipe.scale:
            with torch.no_grad():
                res["model"] = u8(pipe.net(lr))
        for name, y in res.items():
            p, q = float(psnr(y, ref).mean()), float(ssim(y, ref).mean())
            figs[f"upscale_x{s}_{name}_psnr_db"] = p
            figs[f"upscale_x{s}_{name}_ssim"] = q
            rows.append((f"x{s}", name, p, q))
    figs["upscale_x2_psnr_gain_db"] = (
        figs["upscale_x2_model_psnr_db"] - figs["upscale_x2_bicubic_psnr_db"]
    )
    figs["upscale_x2_ssim_gain"] = figs["upscale_x2_model_ssim"] - figs["upscale_x2_bicubic_ssim"]
    # tiled vs untiled on a whole held-out image
    big = torch.from_numpy(np.asarray(sample_image("motorcycle"), dtype=np.float32) / 127.5 - 1)
    big = big.permute(2, 0, 1)[None]
    lr = downscale(big, 2)
    with torch.no_grad():
        whole = pipe.net(lr)
        tiled = run_tiled(pipe.net, lr, 2, tile=96, overlap=16)
    figs["upscale_tiled_vs_untiled_psnr_db"] = float(psnr(u8(tiled), u8(whole))[0])
    figs["upscale_tiled_max_abs_diff_u8"] = float((u8(tiled) - u8(whole)).abs().max())
    for r in rows:
        print(f"{r[0]:>3} {r[1]:<8} PSNR {r[2]:6.2f} dB  SSIM {r[3]:.4f}")
    print(f"x2 gain over bicubic: {figs['upscale_x2_psnr_gain_db']:.2f} dB")
    print(f"tiled vs untiled: {figs['upscale_tiled_vs_untiled_psnr_db']:.1f} dB PSNR between them")
    _ = F
    write_result("upscale_quality", figs, command_line())


if __name__ == "__main__":
    main()
