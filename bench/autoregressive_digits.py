"""Autoregressive families on digits (16 px, class-conditional) at one CPU budget each.

Trains a gated PixelCNN, a VQ-VAE and a transformer prior over its tokens, each for
`--minutes` of wall clock, then measures with the evaluation suite's `domain:digits`
extractor: FID and KID of class-conditional samples (with the real floor: held-out real
digits against the same reference), class accuracy of the samples by the extractor's
classifier (trained on real digits), samples / s, the PixelCNN's bits / dim on held-out
digits (16-level quantized) and the VQ-VAE's reconstruction PSNR on held-out digits.
Writes one grid per family to docs/images/ and bench/results/autoregressive_digits.json.

    OMP_NUM_THREADS=1 nice -n 10 python bench/autoregressive_digits.py --minutes 8
    python bench/autoregressive_digits.py --only pixelcnn   # or: --only vq (VQ-VAE + prior)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from common import RESULTS, command_line, digits_tensors, write_result

DOCS = Path(__file__).resolve().parent.parent / "docs" / "images"
COMMON = dict(
    data="digits", size=16, batch=32, lr=2e-3, warmup_steps=100, log_every=50,
    sample_every=1000, ckpt_every=1000, progress=True,
)  # fmt: skip
PIXELCNN = {"width": 48, "layers": 7}
VQVAE = {"factor": 4, "codebook_size": 128, "code_dim": 32, "width": 64}
TRANSFORMER = {"dim": 128, "layers": 4, "heads": 4, "dropout": 0.1}


def evaluate(images: list, labels: list[int]) -> dict[str, float]:
    """FID, KID (with real floors) and class accuracy with the domain:digits extractor."""
    from imagesynth.io.images import pil_to_tensor
    from imagesynth.metrics import evaluate_samples

    x = torch.stack([pil_to_tensor(im) for im in images])
    res = evaluate_samples(
        x, "digits", ("fid", "kid", "acc"), labels=labels, class_names=[str(d) for d in range(10)],
        extractor="domain:digits", progress=False,
    )  # fmt: skip
    return res["values"]


def class_grid(images: list, labels: list[int], out: Path, params: dict) -> None:
    """10 x 10: row c shows the first ten samples of class c, enlarged to 32 px."""
    from imagesynth.io.images import make_grid
    from imagesynth.io.pngmeta import save_png

    rows = []
    for c in range(10):
        rows += [im for im, y in zip(images, labels, strict=True) if y == c][:10]
    grid = make_grid([im.resize((32, 32), 0) for im in rows], nrow=10)
    save_png(grid, out, {**params, "prompt": "rows: digits 0-9", "n": len(rows)})
    print(f"wrote {out}")


def train_copy_fraction(pipe, n: int) -> float:
    """Fraction of n class-conditional samples whose token grid is a training image's exactly."""
    from imagesynth.models.pixelcnn import uniforms
    from imagesynth.models.token_transformer import sample_tokens

    x, _ = digits_tensors("train")
    train = {tuple(c.tolist()) for c in pipe.vqvae.encode_codes(x).flatten(1)}
    labels = torch.arange(n) % 10
    codes, _ = sample_tokens(pipe.net, labels, uniforms(list(range(n)), pipe.net.cfg.tokens))
    return sum(tuple(c.tolist()) in train for c in codes) / n


def sample_and_eval(model_dir: Path, name: str, n: int, figures: dict) -> None:
    import imagesynth

    pipe = imagesynth.load(model_dir, device="cpu")
    labels = [i % 10 for i in range(n)]
    t = time.perf_counter()
    out = pipe(n=n, seed=0, class_labels=labels, progress=True)
    dt = time.perf_counter() - t
    values = evaluate(out.images, labels)
    figures[f"{name}_digits_samples_per_s"] = n / dt
    figures[f"{name}_digits_fid"] = values["fid"]
    figures[f"{name}_digits_fid_real_floor"] = values.get("fid_floor")
    figures[f"{name}_digits_kid"] = values["kid"]
    figures[f"{name}_digits_kid_real_floor"] = values.get("kid_floor")
    figures[f"{name}_digits_class_accuracy"] = values["acc"]
    figures[f"{name}_digits_classifier_real_accuracy"] = values.get("acc_floor")
    class_grid(out.images, labels, DOCS / f"{name}_digits.png", out.params[0])
    if name.startswith("transformer"):
        figures[f"{name}_digits_train_copy_fraction"] = train_copy_fraction(pipe, n)


def run_pixelcnn(args: argparse.Namespace, figures: dict) -> None:
    import imagesynth
    from imagesynth.models.pixelcnn import dequantize, quantize

    t = time.perf_counter()
    res = imagesynth.train(
        family="pixelcnn", cond="class", minutes=args.minutes, runs_dir=args.runs_dir,
        family_options=PIXELCNN, tag="bench", **COMMON,
    )  # fmt: skip
    figures["pixelcnn_train_minutes"] = (time.perf_counter() - t) / 60
    figures["pixelcnn_train_steps"] = res.step
    pipe = imagesynth.load(res.model_dir, device="cpu")
    x, y = digits_tensors("test")
    u8 = ((x + 1) * 127.5).round().to(torch.int64)
    q = ((dequantize(quantize(u8, pipe.levels), pipe.levels) + 1) * 127.5).round()
    bpd = pipe.bits_per_dim(q.to(torch.uint8), class_labels=y.tolist())
    figures["pixelcnn_digits_test_bits_per_dim"] = float(bpd.mean())
    figures["pixelcnn_levels"] = pipe.levels
    sample_and_eval(res.model_dir, "pixelcnn", args.n, figures)
    figures["pixelcnn_model"] = str(res.model_dir)


def run_vq(args: argparse.Namespace, figures: dict) -> None:
    import imagesynth
    from imagesynth.io.images import make_grid, tensor_to_pil
    from imagesynth.io.pngmeta import save_png
    from imagesynth.models.vqvae import psnr

    if args.vqvae:
        vq_dir = Path(args.vqvae)
    else:
        t = time.perf_counter()
        vq = imagesynth.train(
            family="vqvae", cond="none", minutes=args.minutes, runs_dir=args.runs_dir,
            family_options=VQVAE, tag="bench", **COMMON,
        )  # fmt: skip
        figures["vqvae_train_minutes"] = (time.perf_counter() - t) / 60
        figures["vqvae_train_steps"] = vq.step
        vq_dir = vq.model_dir
    pipe = imagesynth.load(vq_dir, device="cpu")
    x, _ = digits_tensors("test")
    from imagesynth.io.images import pil_to_tensor

    rec = torch.stack([pil_to_tensor(im) for im in pipe.reconstruct(x)])
    figures["vqvae_digits_test_recon_psnr_db"] = float(psnr(rec, x).mean())
    info = json.loads((vq_dir / "imagesynth.json").read_text())["metrics"]
    figures["vqvae_codes_used"] = info.get("codes_used")
    figures["vqvae_code_perplexity"] = info.get("code_perplexity")
    figures["vqvae_tokens_per_image"] = (16 // VQVAE["factor"]) ** 2
    tiles = [*tensor_to_pil(x[:20]), *tensor_to_pil(rec[:20])]
    grid = make_grid([im.resize((32, 32), 0) for im in tiles], nrow=10)
    save_png(
        grid, DOCS / "vqvae_digits_reconstructions.png",
        {"prompt": "rows 1-2: held-out digits; rows 3-4: VQ-VAE reconstructions",
         "model": str(vq_dir)},
    )  # fmt: skip
    minutes = args.transformer_minutes or args.minutes
    name = "transformer" if minutes == args.minutes else f"transformer_{minutes:g}min"
    t = time.perf_counter()
    tr = imagesynth.train(
        family="transformer", cond="class", minutes=minutes, runs_dir=args.runs_dir,
        family_options={**TRANSFORMER, "vqvae": str(vq_dir)}, tag="bench", **COMMON,
    )  # fmt: skip
    figures[f"{name}_train_minutes"] = (time.perf_counter() - t) / 60
    figures[f"{name}_train_steps"] = tr.step
    sample_and_eval(tr.model_dir, name, args.n, figures)
    figures["vqvae_model"] = str(vq_dir)
    figures[f"{name}_model"] = str(tr.model_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget per model")
    ap.add_argument("--n", type=int, default=1000, help="samples for FID / KID / accuracy")
    ap.add_argument("--only", choices=("all", "pixelcnn", "vq"), default="all")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--vqvae", help="reuse this trained VQ-VAE model dir (skip its training)")
    ap.add_argument("--transformer-minutes", type=float, help="prior budget (default --minutes)")
    args = ap.parse_args()
    DOCS.mkdir(parents=True, exist_ok=True)
    figures: dict = {"minutes_per_model": args.minutes, "eval_samples": args.n}
    if args.only in ("all", "pixelcnn"):
        run_pixelcnn(args, figures)
    if args.only in ("all", "vq"):
        run_vq(args, figures)
    old = RESULTS / "autoregressive_digits.json"
    merged = {}
    if old.is_file() and args.only != "all":  # parts run side by side merge their figures
        merged = {k: v for k, v in json.loads(old.read_text()).items() if k not in ("machine",)}
        merged.pop("command", None)
    merged.update(figures)
    keys = [k for k in merged if isinstance(merged[k], float) and not math.isnan(merged[k])]
    print("\n".join(f"{k:<48} {merged[k]:.4g}" for k in keys))
    write_result("autoregressive_digits", merged, command_line())


if __name__ == "__main__":
    main()
