"""Reconstruction quality of an autoencoder on held-out images: PSNR and SSIM.

Encodes held-out `shapes` test-split images (posterior means) and decodes them; PSNR and
SSIM (scikit-image, 8-bit RGB, channel_axis) are per image, then averaged.

    python bench/autoencoder_quality.py                 # the bundled model's vae/
    python bench/autoencoder_quality.py --model runs/00001-shapes-autoencoder-.../model
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import command_line, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()

    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from imagesynth.bundled import bundled_model_path
    from imagesynth.data import get_dataset
    from imagesynth.io.images import pil_to_tensor, tensor_to_pil
    from imagesynth.models.autoencoder import load_autoencoder

    vae = load_autoencoder(args.model or bundled_model_path())
    ds = get_dataset(args.data, size=args.size, split="test")
    psnrs, ssims = [], []
    with torch.no_grad():
        for start in range(0, args.n, 100):
            items = [ds[i] for i in range(start, min(args.n, start + 100))]
            x = torch.stack([pil_to_tensor(it.image.convert("RGB")) for it in items])
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            for it, r in zip(items, tensor_to_pil(rec), strict=True):
                a = np.asarray(it.image.convert("RGB"))
                b = np.asarray(r)
                psnrs.append(peak_signal_noise_ratio(a, b, data_range=255))
                ssims.append(structural_similarity(a, b, channel_axis=2, data_range=255))
    figures = {
        "autoencoder_recon_psnr_db": round(float(np.mean(psnrs)), 2),
        "autoencoder_recon_ssim": round(float(np.mean(ssims)), 4),
        "n": args.n,
        "data": args.data,
        "size": args.size,
    }
    for k, v in figures.items():
        print(f"{k:28s} {v}")
    write_result("autoencoder_quality", figures, command_line())


if __name__ == "__main__":
    main()
