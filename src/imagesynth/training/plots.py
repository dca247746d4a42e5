"""Loss and metric plots written as PNG into a run's plots/ folder."""

from __future__ import annotations

from pathlib import Path

from ..io.rundir import read_jsonl


def plot_stats(run_dir: Path) -> Path | None:
    """plots/loss.png: the logged loss (and a smoothed curve) against the step."""
    rows = read_jsonl(run_dir / "stats.jsonl")
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    smooth, acc = [], None
    for v in loss:
        acc = v if acc is None else 0.9 * acc + 0.1 * v
        smooth.append(acc)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.8, alpha=0.4, label="loss")
    ax.plot(steps, smooth, lw=1.6, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if min(loss) > 0:  # GAN / WGAN losses can be negative: linear axis then
        ax.set_yscale("log")
    ax.set_title(run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = run_dir / "plots" / "loss.png"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
