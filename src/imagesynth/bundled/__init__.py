"""Models that ship inside the package (fp16 safetensors; nothing downloads).

`shapes-t2i`: a latent text-to-image model trained on the bundled `shapes` captions; the
command that reproduces it is in its imagesynth.json (`recipe.command`) and in the README.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ImagesynthError

BUNDLED = {"shapes-t2i": "the default model of `imagesynth generate` and `imagesynth edit`"}
DEFAULT = "shapes-t2i"


def bundled_model_path(name: str = DEFAULT) -> Path:
    """The folder of a bundled model."""
    if name not in BUNDLED:
        from ..errors import unknown_name

        raise unknown_name("bundled model", name, list(BUNDLED))
    path = Path(__file__).resolve().parent / name
    if not (path / "imagesynth.json").is_file():
        raise ImagesynthError(
            f"the bundled model {name!r} is missing from this installation ({path}); "
            "reinstall imagesynth or pass --model MODEL_DIR"
        )
    return path
