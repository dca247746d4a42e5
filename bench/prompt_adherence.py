"""Prompt adherence of a text-to-image model on `shapes` prompts, read back by the judge.

Prompts are the captions of held-out `shapes` test-split scenes (seed 0, indices 0..n-1);
image i uses seed 1000 + i, DPM++ 2M, 20 steps. The judge (`metrics/shapes_judge.py`, 100 %
agreement on real test images) reads count, shape, color, size, position, relation and
background back from the pixels. Three prompt sets describe the same scenes:
- templated: the dataset's own caption template (what the model was trained on);
- paraphrased: the dataset's paraphrase option (other frames, position and relation words);
- synonyms: the templated caption with color and shape synonyms the model never saw
  ("crimson disk"), left to the pretrained text encoder.
Target: >= 90 % of images satisfy every asked attribute (templated); paraphrased within 10
points of it.

    python bench/prompt_adherence.py                      # the bundled model
    python bench/prompt_adherence.py --model runs/.../model --n 500 --cfg 4
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from common import command_line, write_result

SYNONYMS = {
    "red": "crimson",
    "green": "emerald",
    "blue": "azure",
    "yellow": "golden",
    "purple": "violet",
    "orange": "amber",
    "circle": "disk",
    "square": "box",
    "triangle": "pyramid",
}


def with_synonyms(caption: str) -> str:
    out = re.sub(r"\b(" + "|".join(SYNONYMS) + r")\b", lambda m: SYNONYMS[m.group(1)], caption)
    return re.sub(r"\ban ([^aeiou])", r"a \1", re.sub(r"\ba ([aeiou])", r"an \1", out))


def run_set(pipe, prompts, asked, args, seed0=1000):
    from imagesynth.metrics.shapes_judge import judge_many

    images = []
    for k in range(0, len(prompts), 64):
        out = pipe(
            prompts[k : k + 64],
            seed=seed0 + k,
            steps=args.steps,
            guidance_scale=args.cfg,
            sampler=args.sampler,
        )
        images += out.images
    return images, judge_many(images, asked)


def prompt_grid(images, prompts, path: Path, k: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 3.0))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < k:
            ax.imshow(images[i].resize((128, 128), 0))
            words = prompts[i].split()
            lines, line = [], ""
            for w in words:
                if len(line) + len(w) > 26:
                    lines.append(line)
                    line = w
                else:
                    line = f"{line} {w}".strip()
            lines.append(line)
            ax.set_title("\n".join(lines), fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="dpmpp-2m")
    ap.add_argument("--sweep", default="", help="also score these CFG scales on 100 prompts")
    ap.add_argument("--grid", type=Path, default=Path("docs/images/t2i_prompts.png"))
    args = ap.parse_args()

    from imagesynth import load
    from imagesynth.bundled import bundled_model_path
    from imagesynth.data import get_dataset

    path = args.model or bundled_model_path()
    pipe = load(path)
    size = pipe.size
    plain = get_dataset("shapes", size=size, split="test", seed=0)
    para = get_dataset("shapes", size=size, split="test", seed=0, paraphrase=True)
    items = [plain[i] for i in range(args.n)]
    asked = [it.attributes for it in items]
    templated = [it.caption for it in items]
    paraphrased = [para[i].caption for i in range(args.n)]
    synonyms = [with_synonyms(c) for c in templated]
    # how many test prompts also occur verbatim among the training captions
    train = get_dataset("shapes", size=size, split="train", seed=0, length=50000)
    train_caps = {train[i].caption for i in range(len(train))}
    seen = sum(c in train_caps for c in templated) / len(templated)

    figures = {"n": args.n, "cfg": args.cfg, "steps": args.steps, "size": size}
    figures["test_prompts_seen_verbatim_in_training"] = round(seen, 4)
    t0 = time.perf_counter()
    for name, prompts in (
        ("templated", templated),
        ("paraphrased", paraphrased),
        ("synonyms", synonyms),
    ):
        images, res = run_set(pipe, prompts, asked, args)
        print(
            f"{name:12s} all {res['all']:.3f}  "
            + "  ".join(
                f"{k} {v:.3f}" for k, v in res.items() if k not in ("all", "n", "unreadable")
            )
        )
        figures[f"prompt_adherence_{name}"] = round(res["all"], 4)
        for k, v in res.items():
            if k not in ("all", "n"):
                figures[f"prompt_adherence_{name}_{k}"] = round(float(v), 4)
        if name == "templated":
            prompt_grid(images, prompts, args.grid)
            print(f"wrote {args.grid}")
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    # the autoencoder's ceiling: the judge on its reconstructions of the same real scenes
    import torch

    from imagesynth.io.images import pil_to_tensor, tensor_to_pil
    from imagesynth.metrics.shapes_judge import judge_many

    x = torch.stack([pil_to_tensor(it.image.convert("RGB")) for it in items])
    recon = tensor_to_pil(torch.cat([pipe.decode(pipe.encode(c)).cpu() for c in x.split(100)]))
    ceiling = judge_many(recon, asked)
    figures["autoencoder_ceiling_all"] = round(ceiling["all"], 4)
    figures["autoencoder_ceiling_shape"] = round(ceiling["shape"], 4)
    print(f"autoencoder ceiling: all {ceiling['all']:.3f}, shape {ceiling['shape']:.3f}")
    for s in [float(x) for x in args.sweep.split(",") if x]:
        sub = argparse.Namespace(**{**vars(args), "cfg": s})
        _, res = run_set(pipe, templated[:100], asked[:100], sub)
        figures[f"sweep_cfg_{s:g}_all_100"] = round(res["all"], 4)
        print(f"cfg {s:g}: all {res['all']:.3f} (100 prompts)")
    write_result("prompt_adherence", figures, command_line())


if __name__ == "__main__":
    main()
