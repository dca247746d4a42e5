"""Deblurring (and denoising) on held-out crops: learned restorer vs Wiener / Richardson-Lucy.

Held-out images (never in the bundled restorer's training data): chelsea, coffee, motorcycle,
18 crops of 128 px (the grid of bench/upscale_quality.py). Each crop is blurred with a known
Gaussian kernel (sigma 1.0 and 2.0 px, reflect padding), optionally given Gaussian noise
(std 0.01 on the [0, 1] scale) and quantised to 8 bits: that is the input.

Fairness: Wiener and Richardson-Lucy get the true point-spread function (the learned model
is blind: it was trained on sigma in 0.5..2.5 and never told the sigma). Their one parameter
(Wiener balance, RL iterations) is picked per condition from a small grid by mean PSNR on 12
crops of two *training* images (astronaut, rocket); the `*_oracle_*` figures pick it on the
held-out crops themselves (the best the classical method could do with that grid). Both
classical methods mirror-pad the crop by one PSF width first (classical/deconv.py). Metrics
are computed on the 112 px interior (8 px trimmed on each side) for every method.
Denoising rows (when a denoise model is given or bundled): Gaussian noise std 0.05 / 0.1,
against TV denoising (Chambolle) with its weight tuned the same way.
Writes docs/images/deblur_before_after.png (and deblur_denoise_before_after.png).
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
from imagesynth.classical import deconv
from imagesynth.data.skimage_sets import sample_image
from imagesynth.metrics.paired import psnr, ssim
from imagesynth.models.superres import gaussian_blur
from imagesynth.pipelines.upscale import SuperResolutionPipeline

HELD_OUT = ("chelsea", "coffee", "motorcycle")
TUNE = ("astronaut", "rocket")  # training images: used only to pick classical parameters
SIGMAS = (1.0, 2.0)
NOISES = (0.0, 0.01)
DENOISE_NOISES = (0.05, 0.1)
WIENER_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
RL_GRID = (5, 10, 20, 40, 80, 160)
TV_GRID = (0.02, 0.05, 0.1, 0.2, 0.4)
TRIM = 8
BUNDLED = Path(__file__).resolve().parents[1] / "src/imagesynth/bundled"


def crops(names: tuple[str, ...], side: int = 128, per_image: int = 6) -> np.ndarray:
    """(N, side, side, 3) float crops in [0, 1] on the upscale bench's grid."""
    out = []
    for name in names:
        arr = np.asarray(sample_image(name), dtype=np.float64) / 255.0
        h, w = arr.shape[:2]
        for y in np.linspace(0, h - side, 2).astype(int):
            for x in np.linspace(0, w - side, per_image // 2).astype(int):
                out.append(arr[y : y + side, x : x + side])
    return np.stack(out)


def degrade(sharp: np.ndarray, sigma: float, noise: float, seed: int = 0) -> np.ndarray:
    """Blur (sigma > 0) with reflect padding, add noise, quantise to 8 bits; (N, H, W, 3)."""
    x = torch.from_numpy(sharp).permute(0, 3, 1, 2).float()
    if sigma > 0:
        x = gaussian_blur(x, sigma)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    x = (x.clamp(0, 1) * 255).round() / 255
    return x.permute(0, 2, 3, 1).double().numpy()


def _u8(a: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) in [0, 1] -> (N, 3, h, w) 0..255 on the interior (TRIM px cut each side)."""
    a = (np.clip(a, 0, 1) * 255).round()[:, TRIM:-TRIM, TRIM:-TRIM]
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def psnrs(pred: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """Per-crop PSNR on the interior, both images quantised to 8 bits."""
    return psnr(_u8(pred), _u8(sharp)).numpy()


def scores(pred: np.ndarray, sharp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-crop PSNR and SSIM on the interior, both images quantised to 8 bits."""
    p, s = _u8(pred), _u8(sharp)
    return psnr(p, s).numpy(), ssim(p, s).numpy()


def candidates(method: str, inp: np.ndarray, sigma: float, grid) -> dict[float, np.ndarray]:
    """`method`'s output on every crop for every parameter of the grid (RL: one run per crop)."""
    if method == "tv":
        return {g: np.stack([deconv.denoise_tv(im, g) for im in inp]) for g in grid}
    psf = deconv.gaussian_psf(sigma)
    if method == "wiener":
        return {g: np.stack([deconv.wiener(im, psf, g) for im in inp]) for g in grid}
    paths = [deconv.richardson_lucy_path(im, psf, list(grid)) for im in inp]
    return {g: np.stack([pth[g] for pth in paths]) for g in grid}


def best(outs: dict[float, np.ndarray], sharp: np.ndarray) -> float:
    """The grid parameter with the highest mean PSNR."""
    return max(outs, key=lambda g: float(np.mean(psnrs(outs[g], sharp))))


@torch.no_grad()
def learned(pipe: SuperResolutionPipeline, blurred: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(blurred).permute(0, 3, 1, 2).float() * 2 - 1
    y = torch.cat([pipe.net(x[i : i + 6]) for i in range(0, len(x), 6)])
    return ((y.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).double().numpy()


def to_pil(a: np.ndarray, zoom: int = 2) -> Image.Image:
    im = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    return im.resize((im.width * zoom, im.height * zoom), Image.NEAREST)


def strip(rows: list[tuple[str, list[np.ndarray]]], labels: list[str]) -> Image.Image:
    """A labelled grid: one row per condition, one column per method."""
    tiles = [[to_pil(a) for a in r[1]] for r in rows]
    w, h = tiles[0][0].size
    pad, head, left = 4, 18, 86
    out = Image.new(
        "RGB", (left + len(labels) * (w + pad), head + len(rows) * (h + pad)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(out)
    for j, lab in enumerate(labels):
        draw.text((left + j * (w + pad) + 4, 3), lab, fill=(0, 0, 0))
    for i, (name, ts) in enumerate(zip([r[0] for r in rows], tiles, strict=True)):
        y = head + i * (h + pad)
        draw.text((4, y + h // 2 - 12), name, fill=(0, 0, 0))
        for j, t in enumerate(ts):
            out.paste(t, (left + j * (w + pad), y))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(BUNDLED / "restorer-deblur"), help="deblur model dir")
    ap.add_argument(
        "--denoise-model",
        default=str(BUNDLED / "restorer-denoise"),
        help="denoise model dir (adds the denoise rows when it exists)",
    )
    ap.add_argument("--image", default="docs/images/deblur_before_after.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from imagesynth.io.pngmeta import save_png

    pipe = SuperResolutionPipeline.from_pretrained(args.model)
    sharp, tune_set = crops(HELD_OUT), crops(TUNE)
    figs: dict[str, float] = {"held_out_crops": len(sharp), "tuning_crops": len(tune_set)}
    print(f"{'condition':<16}{'method':<14}{'param':>8}{'PSNR dB':>9}{'SSIM':>8}")
    gains_blur, gains_rl, gains_rl_oracle, gains_wiener = [], [], [], []
    pick = 1  # chelsea's top middle crop (eye and fur) for the picture
    strip_rows = []
    for sigma in SIGMAS:
        for noise in NOISES:
            key = f"deblur_s{sigma:g}_n{noise:g}".replace(".", "p")
            blurred = degrade(sharp, sigma, noise)
            tune_in = degrade(tune_set, sigma, noise, seed=1)
            outs = {"blurred": (blurred, "")}
            for method, grid in (("wiener", WIENER_GRID), ("rl", RL_GRID)):
                p_tuned = best(candidates(method, tune_in, sigma, grid), tune_set)
                held = candidates(method, blurred, sigma, grid)
                p_or = best(held, sharp)
                outs[method] = (held[p_tuned], p_tuned)
                outs[f"{method}_oracle"] = (held[p_or], p_or)
                figs[f"{key}_{method}_param"] = p_tuned
                figs[f"{key}_{method}_oracle_param"] = p_or
            outs["model"] = (learned(pipe, blurred), "")
            res = {}
            for name, (pred, param) in outs.items():
                p, q = scores(pred, sharp)
                res[name] = float(p.mean())
                figs[f"{key}_{name}_psnr_db"] = float(p.mean())
                figs[f"{key}_{name}_ssim"] = float(q.mean())
                cond = f"sigma {sigma:g} n {noise:g}"
                print(f"{cond:<16}{name:<14}{param!s:>8}{p.mean():9.2f}{q.mean():8.4f}")
            figs[f"{key}_model_gain_over_blurred_db"] = res["model"] - res["blurred"]
            figs[f"{key}_model_gain_over_rl_db"] = res["model"] - res["rl"]
            figs[f"{key}_model_gain_over_rl_oracle_db"] = res["model"] - res["rl_oracle"]
            figs[f"{key}_model_gain_over_wiener_db"] = res["model"] - res["wiener"]
            gains_blur.append(res["model"] - res["blurred"])
            gains_rl.append(res["model"] - res["rl"])
            gains_rl_oracle.append(res["model"] - res["rl_oracle"])
            gains_wiener.append(res["model"] - res["wiener"])
            cols = [outs[k][0][pick] for k in ("blurred", "wiener", "rl", "model")]
            strip_rows.append((f"sigma {sigma:g}\nnoise {noise:g}", [*cols, sharp[pick]]))
    figs["deblur_model_gain_over_blurred_db"] = float(np.mean(gains_blur))
    figs["deblur_model_gain_over_rl_db"] = float(np.mean(gains_rl))
    figs["deblur_model_gain_over_rl_oracle_db"] = float(np.mean(gains_rl_oracle))
    figs["deblur_model_gain_over_wiener_db"] = float(np.mean(gains_wiener))
    labels = ["blurred", "Wiener", "Richardson-Lucy", "learned", "sharp"]
    denoise_rows: list[tuple[str, list[np.ndarray]]] = []
    if args.denoise_model and Path(args.denoise_model, "imagesynth.json").is_file():
        dpipe = SuperResolutionPipeline.from_pretrained(args.denoise_model)
        for noise in DENOISE_NOISES:
            key = f"denoise_n{noise:g}".replace(".", "p")
            noisy = degrade(sharp, 0.0, noise)
            p_tv = best(candidates("tv", degrade(tune_set, 0.0, noise, 1), 0.0, TV_GRID), tune_set)
            outs = {
                "noisy": noisy,
                "tv": candidates("tv", noisy, 0.0, [p_tv])[p_tv],
                "model": learned(dpipe, noisy),
            }
            figs[f"{key}_tv_param"] = p_tv
            res = {}
            for name, pred in outs.items():
                p, q = scores(pred, sharp)
                res[name] = float(p.mean())
                figs[f"{key}_{name}_psnr_db"] = float(p.mean())
                figs[f"{key}_{name}_ssim"] = float(q.mean())
                cond, param = f"noise {noise:g}", p_tv if name == "tv" else ""
                print(f"{cond:<16}{name:<14}{param!s:>8}{p.mean():9.2f}{q.mean():8.4f}")
            figs[f"{key}_model_gain_over_noisy_db"] = res["model"] - res["noisy"]
            figs[f"{key}_model_gain_over_tv_db"] = res["model"] - res["tv"]
            if noise == max(DENOISE_NOISES):
                cols = [outs[k][pick] for k in ("noisy", "tv", "model")]
                denoise_rows.append((f"noise {noise:g}", [*cols, sharp[pick]]))
    print(
        f"learned vs blurred input: {figs['deblur_model_gain_over_blurred_db']:+.2f} dB; "
        f"vs Richardson-Lucy: {figs['deblur_model_gain_over_rl_db']:+.2f} dB "
        f"(vs RL oracle-tuned {figs['deblur_model_gain_over_rl_oracle_db']:+.2f} dB); "
        f"vs Wiener: {figs['deblur_model_gain_over_wiener_db']:+.2f} dB (mean of 4 conditions)"
    )
    img = strip(strip_rows, labels)
    Path(args.image).parent.mkdir(parents=True, exist_ok=True)
    save_png(img, args.image, {"prompt": "deblur before / after", "command": command_line()})
    print(f"wrote {args.image}")
    if denoise_rows:
        out = Path(args.image).with_name("deblur_denoise_before_after.png")
        img = strip(denoise_rows, ["noisy", "TV (Chambolle)", "learned", "clean"])
        save_png(img, out, {"prompt": "denoise before / after", "command": command_line()})
        print(f"wrote {out}")
    write_result("deblur_quality", figs, command_line())


if __name__ == "__main__":
    main()
