"""Training throughput: our trainer against a plain loop mirroring diffusers' example.

The reference mirrors `examples/unconditional_image_generation/train_unconditional.py`
from diffusers: a map-style dataset of PIL images transformed per item (to tensor,
normalise, random flip) in a DataLoader, the same UNet2DModel, DDPMScheduler.add_noise,
AdamW (foreach, betas 0.95/0.999, wd 1e-6), gradient clipping, a cosine LR schedule and an
EMA update each step, through accelerate. Ours is `Trainer._train_step` with the same
UNet, data, batch and loss. Both run interleaved in one process, several rounds, and the
median steady-state rate is reported; achieved GFLOP/s is FLOPs per step (counted by
torch's FlopCounterMode) x steps/s, against this machine's measured fp32 matmul peak.

    python bench/train_throughput.py --preset tiny --size 32 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from common import command_line, write_result


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


class PILDataset(torch.utils.data.Dataset):
    """The example's dataset: PIL images, transformed item by item."""

    def __init__(self, ds, n: int) -> None:
        self.images = [ds[i].image for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        arr = np.asarray(self.images[i].convert("RGB"), dtype=np.float32) / 255.0  # ToTensor
        x = torch.from_numpy(arr).permute(2, 0, 1)
        x = (x - 0.5) / 0.5  # Normalize([0.5], [0.5])
        if torch.rand(()) < 0.5:  # RandomHorizontalFlip
            x = x.flip(-1)
        return {"input": x}


def reference_loop(unet_cfg: dict, ds, batch: int, seed: int):
    """A generator yielding after each optimizer step of the diffusers-example loop."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    model = UNet2DModel(**unet_cfg)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True
    )
    lr_sched = get_scheduler(
        "cosine", optimizer=opt, num_warmup_steps=10, num_training_steps=100_000
    )
    model, opt, loader, lr_sched = acc.prepare(model, opt, loader, lr_sched)
    ema = EMAModel(
        model.parameters(),
        decay=0.9999,
        use_ema_warmup=True,
        model_cls=UNet2DModel,
        model_config=model.config,
    )
    model.train()
    while True:
        for b in loader:
            clean = b["input"]
            noise = torch.randn(clean.shape, device=clean.device)
            t = torch.randint(0, 1000, (clean.shape[0],), device=clean.device).long()
            noisy = sched.add_noise(clean, noise, t)
            with acc.accumulate(model):
                out = model(noisy, t).sample
                loss = F.mse_loss(out.float(), noise.float())
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                lr_sched.step()
                opt.zero_grad()
            if acc.sync_gradients:
                ema.step(model.parameters())
            yield


def our_loop(preset: str, size: int, batch: int, runs_dir: str, channels_last: bool):
    from imagesynth.training.config import TrainConfig
    from imagesynth.training.trainer import Trainer

    cfg = TrainConfig(
        family="diffusion",
        data="shapes",
        size=size,
        batch=batch,
        steps=100_000,
        runs_dir=runs_dir,
        progress=False,
        channels_last=channels_last,
        data_options={"length": 2048},
        family_options={"preset": preset, "min_snr_gamma": None},
    )
    trainer = Trainer(cfg)
    step = 0
    while True:
        trainer._train_step(step)
        step += 1
        yield trainer


def rate(loop, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        next(loop)
    return steps / (time.perf_counter() - t)


def flops_per_step(unet_cfg: dict, batch: int, size: int) -> float:
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    model = UNet2DModel(**unet_cfg)
    x = torch.randn(batch, unet_cfg["in_channels"], size, size)
    t = torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as fc:
        model(x, t).sample.pow(2).mean().backward()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from imagesynth.data import get_dataset
    from imagesynth.models.diffusion import DiffusionOptions, unet_config
    from imagesynth.training.family import DataInfo

    ds = get_dataset("shapes", size=args.size, length=2048)
    data_info = DataInfo("shapes", args.size, 3, 0)
    unet_cfg = unet_config(DiffusionOptions(preset=args.preset), data_info)
    tmp = tempfile.mkdtemp()
    loops = {
        "reference": reference_loop(unet_cfg, PILDataset(ds, 2048), args.batch, 0),
        "ours": our_loop(args.preset, args.size, args.batch, tmp, channels_last=False),
        "ours_channels_last": our_loop(args.preset, args.size, args.batch, tmp, True),
    }
    for loop in loops.values():  # warm up: allocator, first-call overheads
        rate(loop, 3)
    rates: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(args.rounds):
        for name, loop in loops.items():
            rates[name].append(rate(loop, args.steps))
        print(
            f"round {r + 1}: "
            + ", ".join(f"{k} {v[-1] * args.batch:.1f} img/s" for k, v in rates.items())
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    flops = flops_per_step(unet_cfg, args.batch, args.size)
    peak = matmul_peak_gflops()
    ours_gflops = flops * med["ours"] / 1e9
    figures = {
        "train_throughput_ratio_vs_reference": med["ours"] / med["reference"],
        "ours_images_per_s": med["ours"] * args.batch,
        "reference_images_per_s": med["reference"] * args.batch,
        "ours_channels_last_images_per_s": med["ours_channels_last"] * args.batch,
        "train_gflops_achieved": ours_gflops,
        "matmul_peak_gflops": peak,
        "train_gflops_fraction_of_matmul_peak": ours_gflops / peak,
        "gflop_per_step": flops / 1e9,
        "preset": args.preset,
        "size": args.size,
        "batch": args.batch,
        "unet_parameters": sum(
            p.numel()
            for p in torch.nn.Module.parameters(__import__("diffusers").UNet2DModel(**unet_cfg))
        ),
    }
    ratio = figures["train_throughput_ratio_vs_reference"]
    print(
        f"ours {figures['ours_images_per_s']:.1f} img/s vs reference "
        f"{figures['reference_images_per_s']:.1f}: {ratio:.2f}x; {ours_gflops:.1f} GFLOP/s = "
        f"{ours_gflops / peak:.0%} of matmul peak {peak:.0f}"
    )
    write_result("train_throughput", figures, command_line())


if __name__ == "__main__":
    main()
