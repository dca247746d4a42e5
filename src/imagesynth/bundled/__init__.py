"""Models that ship inside the package (fp16 safetensors; nothing downloads).

`shapes-t2i`: a latent text-to-image model trained on the bundled `shapes` captions.
`upscaler-x2`, `upscaler-x4`, `restorer-deblur`, `restorer-denoise`: tiny residual CNNs
(models/superres.py) trained on the bundled photos and textures, never on chelsea, coffee or
motorcycle (the held-out images of bench/upscale_quality.py and bench/deblur_quality.py).
The command that reproduces each is in its imagesynth.json (`recipe.command`) and the README.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ImagesynthError

BUNDLED = {
    "shapes-t2i": "the default model of `imagesynth generate` and `imagesynth edit`",
    "upscaler-x2": "the default model of `imagesynth upscale --scale 2`",
    "upscaler-x4": "the default model of `imagesynth upscale --scale 4`",
    "restorer-deblur": "the default model of `imagesynth restore --task deblur`",
    "restorer-denoise": "the default model of `imagesynth restore --task denoise`",
}
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
