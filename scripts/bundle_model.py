"""Copy a trained latent-diffusion model into the package as the bundled model (fp16).

    python scripts/bundle_model.py RUN_OR_MODEL_DIR --ae AE_MODEL_DIR \
        --command "imagesynth train autoencoder ..." \
        --command "imagesynth train latent-diffusion ..."

Weights are stored in float16 (half the bytes; the pipeline computes in float32) and the
script checks that fp16 storage changes generated pixels by at most a few levels. The
commands that reproduce the model go into its imagesynth.json (`recipe.commands`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--ae", type=Path, required=True, help="the autoencoder's model dir")
    ap.add_argument("--command", action="append", default=[], help="reproducing commands")
    ap.add_argument("--name", default="shapes-t2i")
    ap.add_argument(
        "--decoder",
        type=Path,
        default=None,
        help="an autoencoder fine-tuned with freeze_encoder=true: its decoder replaces ours",
    )
    args = ap.parse_args()

    from imagesynth.api import resolve_model_dir
    from imagesynth.io.model_dir import load_model
    from imagesynth.models.latent_diffusion import save_latent_diffusion
    from imagesynth.pipelines.text2image import TextToImage

    src = resolve_model_dir(args.model)
    files = load_model(src)
    ae_info = json.loads((resolve_model_dir(args.ae) / "imagesynth.json").read_text())
    pipe = TextToImage.from_pretrained(src, device="cpu")
    reference = pipe
    if args.decoder is not None:
        import torch

        from imagesynth.models.autoencoder import load_autoencoder

        reference = TextToImage.from_pretrained(src, device="cpu")
        tuned = load_autoencoder(resolve_model_dir(args.decoder)).state_dict()
        own = pipe.vae.state_dict()
        for k, v in own.items():  # the encoder must be the one the UNet was trained on
            if k.startswith(("encoder.", "quant_conv.")) and not torch.equal(v, tuned[k]):
                raise SystemExit(
                    f"{args.decoder}: encoder weight {k} differs; not a decoder fine-tune"
                )
        pipe.vae.load_state_dict(tuned)
    dst = Path(__file__).resolve().parents[1] / "src" / "imagesynth" / "bundled" / args.name
    config = json.loads(json.dumps(files.config))
    config["options"]["autoencoder"] = f"(bundled: vae/; trained by {args.command[:1]})"
    recipe = {
        **files.info.get("recipe", {}),
        "commands": args.command,
        "autoencoder_recipe": ae_info.get("recipe"),
        "autoencoder_metrics": ae_info.get("metrics"),
    }
    record = {
        "dataset": files.info.get("dataset"),
        "recipe": recipe,
        "metrics": files.info.get("metrics"),
    }
    save_latent_diffusion(
        dst, pipe.unet, pipe.vae, config["scheduler"], pipe.text, config, record, "float16"
    )
    half = TextToImage.from_pretrained(dst, device="cpu")
    prompt = "a red circle to the left of a blue square on a white background"
    a = np.asarray(reference(prompt, n=4, seed=0).images[0]).astype(int)
    b = np.asarray(half(prompt, n=4, seed=0).images[0]).astype(int)
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    diff = int(np.abs(a - b).max())
    what = "new decoder vs old" if args.decoder else "fp16 vs fp32"
    print(f"wrote {dst} ({size / 2**20:.1f} MiB); {what}: max pixel difference {diff}")


if __name__ == "__main__":
    main()
