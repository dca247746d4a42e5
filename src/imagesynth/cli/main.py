"""`imagesynth <verb>`: the command-line surface. Model logic lives in the library."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ImagesynthError

app = typer.Typer(
    name="imagesynth",
    help="Train, sample, edit and evaluate generative image models, offline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(
    help="List, preview and export the bundled and folder datasets.", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")


def _parse_value(text: str) -> Any:
    """`--opt k=v` values: JSON literals (3, 0.5, true, "x") or else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _options(opts: list[str] | None, **given: Any) -> dict[str, Any]:
    out = {k: v for k, v in given.items() if v is not None}
    for opt in opts or []:
        key, sep, value = opt.partition("=")
        if not sep or not key:
            raise ImagesynthError(f"--opt takes KEY=VALUE, got {opt!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value)
    return out


@app.command()
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Print versions, device, threads and free memory (paste this into bug reports)."""
    from ..env import report

    info = report()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    gib = 1024**3
    mem = info["memory"]
    rows = [("platform", info["platform"]), ("python", sys.version.split()[0])]
    rows += [(k, v or "not installed") for k, v in info["versions"].items() if k != "python"]
    rows.append(("device", info["device"]))
    rows.append(("threads", f"{info['torch_threads']} torch / {info['cpu_count']} cpus"))
    if mem["available_bytes"] is not None:
        free, total = mem["available_bytes"] / gib, mem["total_bytes"] / gib
        rows.append(("memory", f"{free:.1f} GiB free of {total:.1f} GiB"))
    for i, gpu in enumerate(info.get("gpus", [])):
        free, total = gpu["free_bytes"] / gib, gpu["total_bytes"] / gib
        rows.append(
            (
                f"gpu {i}",
                f"{gpu['name']}: {free:.1f} GiB free of {total:.1f} GiB "
                f"(CUDA {info.get('cuda_version')})",
            )
        )
    typer.echo("\n".join(f"{k:<22} {v}" for k, v in rows))


DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--opt",
        help="Dataset option KEY=VALUE "
        "(e.g. label_mode=color, fit=pad, paraphrase=true); repeatable.",
    ),
]
SizeOpt = Annotated[int | None, typer.Option(help="Image size in px (default: the dataset's).")]
SeedOpt = Annotated[int | None, typer.Option(help="Dataset seed (default 0).")]
SplitOpt = Annotated[str | None, typer.Option(help="Split: train / test (/ all).")]


@datasets_app.command("list")
def datasets_list() -> None:
    """List the datasets (use NAME, or folder:PATH for your own images)."""
    from ..data import list_datasets

    for info in list_datasets():
        name = f"{info.name}:PATH" if info.takes_path else info.name
        typer.echo(f"{name:<14} {info.description}")


@datasets_app.command("preview")
def datasets_preview(
    name: Annotated[str, typer.Argument(help="shapes, digits, photos, textures or folder:PATH")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("grid.png"),
    n: Annotated[int, typer.Option(help="Number of items in the grid.")] = 64,
    start: Annotated[int, typer.Option(help="First index shown.")] = 0,
    size: SizeOpt = None,
    seed: SeedOpt = None,
    split: SplitOpt = None,
    opt: DataOpt = None,
) -> None:
    """Write a grid PNG of a dataset's first N items (with captions printed)."""
    from ..data import get_dataset
    from ..data.export import save_preview

    ds = get_dataset(name, **_options(opt, size=size, seed=seed, split=split))
    path = save_preview(ds, out, n=n, start=start)
    for i in range(start, min(start + min(n, 8), len(ds))):
        item = ds[i]
        label = ds.class_names[item.label] if item.label is not None else "-"
        typer.echo(f"{i:>6}  [{label}] {item.caption or ''}")
    typer.echo(f"wrote {path} ({min(n, len(ds) - start)} items of {ds.name}, {ds.size} px)")


@datasets_app.command("export")
def datasets_export(
    name: Annotated[str, typer.Argument(help="shapes, digits, photos, textures or folder:PATH")],
    out: Annotated[Path, typer.Option(help="Empty or new folder to write.")],
    n: Annotated[int | None, typer.Option(help="Number of items (default: all).")] = None,
    start: Annotated[int, typer.Option(help="First index exported.")] = 0,
    size: SizeOpt = None,
    seed: SeedOpt = None,
    split: SplitOpt = None,
    opt: DataOpt = None,
) -> None:
    """Export items as PNGs in class subfolders, with metadata.jsonl (captions, labels, ...)."""
    from ..data import get_dataset
    from ..data.export import export_dataset

    ds = get_dataset(name, **_options(opt, size=size, seed=seed, split=split))
    path = export_dataset(ds, out, n=n, start=start)
    typer.echo(f"wrote {n if n is not None else len(ds) - start} items of {ds.name} to {path}")


def _register_commands() -> None:
    from .estimate import register as register_estimate
    from .eval import register as register_eval
    from .generate import register as register_generate
    from .image_tools import register as register_image_tools
    from .serve import register as register_serve
    from .train import register
    from .train_autoregressive import register as register_autoregressive
    from .train_gan_vae import register as register_gan_vae

    register_generate(app)
    register(app)
    register_estimate(app)
    register_eval(app)
    register_image_tools(app)
    register_serve(app)
    register_autoregressive(app)
    register_gan_vae(app)


_register_commands()


class _MessageOnly(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "warning: " if record.levelno == logging.WARNING else ""
        return prefix + record.getMessage()


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageOnly())
    logger = logging.getLogger("imagesynth")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        app()  # standalone: click prints usage errors and exits by itself
    except ImagesynthError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
