"""`imagesynth eval ...`, `imagesynth synth-dataset` and `imagesynth cas`: thin wrappers.

imagesynth eval MODEL_DIR|FOLDER --ref digits --metrics fid,kid,is,pr --n 10000
imagesynth eval pair A B --metrics ssim,ms-ssim,psnr,lpips
imagesynth eval train-extractor --data digits
imagesynth eval compare a.json b.json
imagesynth synth-dataset MODEL_DIR --n 10000 --out DIR
imagesynth cas MODEL_DIR --data digits
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ..errors import ImagesynthError

Opt = typer.Option


class _DefaultToRun(TyperGroup):
    """`imagesynth eval TARGET ...` means `imagesynth eval run TARGET ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(
    cls=_DefaultToRun,
    help="Evaluate a model or a folder of images (FID, KID, IS, precision/recall, accuracy), "
    "image pairs (SSIM, MS-SSIM, PSNR, LPIPS), and manage feature extractors.",
    no_args_is_help=True,
)


def _write(out: Path | None, payload: dict[str, Any]) -> None:
    if out is None:
        return
    from ..io.atomic import to_json, write_bytes_atomic

    write_bytes_atomic(out, (to_json(payload, indent=2) + "\n").encode())
    typer.echo(f"wrote {out}")


@eval_app.command("run")
def eval_run(
    target: Annotated[str, typer.Argument(help="Model directory (or run dir), or image folder.")],
    ref: Annotated[
        str | None, Opt(help="Reference set: digits | shapes | folder:PATH (default: the model's).")
    ] = None,
    metrics: Annotated[
        str, Opt(help="Comma list: fid,kid,is,pr (precision,recall),acc.")
    ] = "fid,kid",
    n: Annotated[int | None, Opt(help="Samples (model: 10000; folder: all).")] = None,
    extractor: Annotated[
        str | None, Opt(help="domain:NAME | inception:PATH | random (default domain:<ref>).")
    ] = None,
    extractor_sha256: Annotated[
        str | None, Opt(help="Refuse the extractor weights unless they have this sha256.")
    ] = None,
    n_ref: Annotated[
        int | None, Opt(help="Reference images (default: n for shapes, all else).")
    ] = None,
    seed: Annotated[int, Opt(help="Seed of samples and reference subset.")] = 0,
    sampler: Annotated[str, Opt(help="Sampler for model samples.")] = "dpmpp-2m",
    steps: Annotated[int, Opt(help="Denoising steps for model samples.")] = 20,
    cfg: Annotated[float | None, Opt(help="Classifier-free guidance scale.")] = None,
    kid_subsets: Annotated[int, Opt(help="KID subsets.")] = 100,
    kid_subset_size: Annotated[
        int | None, Opt(help="KID subset size (default min(1000, n)).")
    ] = None,
    convert_channels: Annotated[
        bool,
        Opt(help="Convert samples to the references' channels (gray<->RGB) instead of failing."),
    ] = False,
    out: Annotated[Path | None, Opt(help="Write the scores with their protocols as JSON.")] = None,
    device: Annotated[str | None, Opt(help="cpu | cuda (default: best available).")] = None,
) -> None:
    """Set metrics of a model's samples or a folder of images against real references."""
    from ..api import resolve_model_dir
    from ..metrics.evaluate import evaluate_folder, evaluate_model
    from ..metrics.extractors import load_extractor
    from ..metrics.protocol import format_scores

    path = Path(target).expanduser()
    common = {"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size,
              "convert_channels": convert_channels, "n_ref": n_ref, "seed": seed}  # fmt: skip
    ext = None
    if extractor:
        ext = load_extractor(extractor, expected_sha256=extractor_sha256, device=device)
    if (resolve_model_dir(path) / "imagesynth.json").is_file():
        result = evaluate_model(
            path, ref, metrics, n or 10_000, ext, sampler=sampler, steps=steps,
            guidance_scale=cfg, device=device, **common,
        )  # fmt: skip
    elif path.is_dir():
        if ref is None:
            raise ImagesynthError("evaluating a folder needs --ref (digits, shapes, folder:PATH)")
        result = evaluate_folder(path, ref, metrics, n, ext, **common)
    else:
        raise ImagesynthError(f"{target!r} is neither a model directory nor an image folder")
    typer.echo(format_scores(result["scores"]))
    _write(out, {"target": str(path), **result})


@eval_app.command("pair")
def eval_pair(
    a: Annotated[Path, typer.Argument(help="Image file or folder (e.g. originals).")],
    b: Annotated[Path, typer.Argument(help="Image file or folder with the same names.")],
    metrics: Annotated[
        str, Opt(help="Comma list: ssim,ms-ssim,psnr,lpips,domain-perceptual.")
    ] = "ssim,psnr",
    lpips_net: Annotated[str, Opt(help="LPIPS backbone: vgg | alex.")] = "vgg",
    lpips_backbone: Annotated[
        Path | None, Opt(help="torchvision backbone weights (vgg16-397923af.pth / alexnet-*.pth).")
    ] = None,
    lpips_linear: Annotated[
        Path | None, Opt(help="LPIPS linear weights (lpips package weights/v0.1/vgg.pth).")
    ] = None,
    extractor: Annotated[
        str, Opt(help="domain:NAME for domain-perceptual (not LPIPS).")
    ] = "domain:digits",
    out: Annotated[Path | None, Opt(help="Write scores and per-pair values as JSON.")] = None,
) -> None:
    """Paired metrics between two images or two folders of same-named images."""
    from ..metrics.paired import evaluate_pairs
    from ..metrics.protocol import format_scores

    result = evaluate_pairs(
        a, b, metrics, lpips_net=lpips_net, lpips_backbone=lpips_backbone,
        lpips_linear=lpips_linear, extractor=extractor,
    )  # fmt: skip
    typer.echo(format_scores(result["scores"]))
    _write(out, {"a": str(a), "b": str(b), **result})


@eval_app.command("train-extractor")
def eval_train_extractor(
    data: Annotated[str, Opt(help="digits | shapes | folder:PATH (class = subfolder).")] = "digits",
    size: Annotated[int | None, Opt(help="Image size (default: digits 16, shapes 32).")] = None,
    label_mode: Annotated[
        str | None, Opt(help="shapes: color_shape (default) | shape | color.")
    ] = None,
    epochs: Annotated[int | None, Opt(help="Training epochs (default per dataset).")] = None,
    force: Annotated[bool, Opt(help="Retrain even if cached.")] = False,
    out: Annotated[Path | None, Opt(help="Model directory (default: the cache).")] = None,
) -> None:
    """Train (once) the domain:NAME feature extractor and print its held-out accuracy."""
    from ..metrics.extractors import load_domain_extractor, train_domain_extractor

    path = train_domain_extractor(
        data, size=size, label_mode=label_mode, epochs=epochs, out=out, force=force
    )
    ext = load_domain_extractor(path)
    typer.echo(
        f"{ext.spec}: held-out accuracy {ext.accuracy:.4f}, sha256 {ext.sha256[:16]}..., at {path}"
    )


@eval_app.command("compare")
def eval_compare(
    files: Annotated[list[Path], typer.Argument(help="Score JSON files written with --out.")],
) -> None:
    """Show scores from several runs side by side, grouped by protocol (only equal ones compare)."""
    from ..metrics.protocol import format_value, group_comparable, protocol_differences

    scores = []
    for f in files:
        try:
            payload = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise ImagesynthError(f"cannot read scores from {f}: {exc}") from None
        for s in payload.get("scores", []):
            scores.append({**s, "_file": str(f)})
    if not scores:
        raise ImagesynthError("no scores found in the given files")
    groups = group_comparable(scores)
    for g in groups:
        p = g[0]["protocol"]
        typer.echo(f"{g[0]['metric']}  protocol {p['protocol_id']}  (comparable within this group)")
        for s in g:
            typer.echo(f"  {format_value(s['metric'], s['value']):>12}  {s['_file']}")
    by_metric: dict[str, list] = {}
    for g in groups:
        by_metric.setdefault(g[0]["metric"], []).append(g[0])
    for m, heads in by_metric.items():
        if len(heads) > 1:
            diff = "; ".join(protocol_differences(heads[0], heads[1])[:4])
            typer.echo(f"warning: {m} scores use {len(heads)} protocols, not comparable ({diff})")


@eval_app.command("convert-weights")
def eval_convert_weights(
    src: Annotated[Path, typer.Argument(help="A .pth state dict (read with weights_only=True).")],
    dst: Annotated[Path, typer.Argument(help="The .safetensors file to write.")],
) -> None:
    """Convert a trusted .pth weights file (e.g. the FID Inception) to .safetensors."""
    from safetensors.torch import save_file

    from ..io.model_dir import load_weights, sha256_file

    state = load_weights(src, allow_pickle=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(dst))
    typer.echo(f"wrote {dst} ({len(state)} tensors, source sha256 {sha256_file(src)})")


def synth_dataset_cmd(
    model: Annotated[Path, typer.Argument(help="Model directory (or run directory).")],
    out: Annotated[Path, Opt(help="New or empty folder to write.")],
    n: Annotated[int, Opt(help="Number of images.")] = 10_000,
    seed: Annotated[int, Opt(help="Image i uses seed + i.")] = 0,
    sampler: Annotated[str, Opt(help="Sampler.")] = "dpmpp-2m",
    steps: Annotated[int, Opt(help="Denoising steps.")] = 20,
    cfg: Annotated[float | None, Opt(help="Classifier-free guidance scale.")] = None,
    batch: Annotated[int, Opt(help="Images per sampler call.")] = 64,
) -> None:
    """Write a labelled synthetic dataset (class subfolders + metadata.jsonl).

    Spread it over processes or GPUs with
    `accelerate launch --num_processes 4 -m imagesynth synth-dataset MODEL --out DIR`.
    """
    from ..metrics.synth import synth_dataset

    record = synth_dataset(
        model, n, out, seed=seed, sampler=sampler, steps=steps, guidance_scale=cfg, batch=batch
    )
    typer.echo(f"wrote {record['n']} images to {out} ({record['processes']} process(es))")


def cas_cmd(
    model: Annotated[Path | None, typer.Argument(help="Class-conditional model directory.")] = None,
    data: Annotated[
        str, Opt(help="Real dataset (train / test splits): digits | shapes.")
    ] = "digits",
    synthetic: Annotated[
        Path | None, Opt(help="Use this synth-dataset folder instead of sampling a model.")
    ] = None,
    n_synthetic: Annotated[int, Opt(help="Synthetic images to sample.")] = 2000,
    per_class: Annotated[int, Opt(help="Real images per class in the small subset.")] = 10,
    train_steps: Annotated[int, Opt(help="Optimizer steps per classifier.")] = 600,
    seed: Annotated[int, Opt(help="Seed.")] = 0,
    sampler: Annotated[str, Opt(help="Sampler.")] = "dpmpp-2m",
    steps: Annotated[int, Opt(help="Denoising steps.")] = 20,
    cfg: Annotated[float | None, Opt(help="Classifier-free guidance scale.")] = None,
    size: Annotated[int | None, Opt(help="Image size (default: the model's).")] = None,
    out: Annotated[Path | None, Opt(help="Write the study as JSON.")] = None,
) -> None:
    """Classification Accuracy Score: synthetic-only vs real-trained, and small-real gain."""
    from ..metrics.synth import cas_study

    r = cas_study(
        model, data, synthetic=synthetic, n_synthetic=n_synthetic, per_class=per_class,
        train_steps=train_steps, seed=seed, sampler=sampler, steps=steps,
        guidance_scale=cfg, size=size,
    )  # fmt: skip
    typer.echo(f"real-trained accuracy      {r['real_accuracy']:.4f}  ({r['n_real']} real)")
    typer.echo(
        f"synthetic-only accuracy    {r['synthetic_accuracy']:.4f}  ({r['n_synthetic']} synthetic)"
    )
    typer.echo(
        f"small real subset          {r['small_real_accuracy']:.4f}  ({r['n_small_real']} real)"
    )
    typer.echo(
        f"small real + synthetic     {r['small_real_plus_synthetic_accuracy']:.4f}  "
        f"(gain {r['small_real_gain']:+.4f})"
    )
    typer.echo(f"(tested on {r['n_test']} real held-out images)")
    _write(out, r)


def register(app: typer.Typer) -> None:
    """Add `eval` (run, pair, train-extractor, compare, convert-weights), `synth-dataset`, `cas`."""
    app.add_typer(eval_app, name="eval")
    app.command("synth-dataset")(synth_dataset_cmd)
    app.command("cas")(cas_cmd)
