"""Run by tests/test_distributed.py under `accelerate launch` with 2 CPU processes (gloo)."""

import hashlib
import json
import sys

import torch

from imagesynth.training.config import TrainConfig
from imagesynth.training.trainer import Trainer

runs_dir, out_dir = sys.argv[1], sys.argv[2]
cfg = TrainConfig(
    family="diffusion",
    data="digits",
    size=16,
    cond="class",
    steps=4,
    batch=4,
    log_every=1,
    sample_every=2,
    sample_n=4,
    ckpt_every=2,
    runs_dir=runs_dir,
    warmup_steps=0,
    family_options={"preset": "tiny", "sample_steps": 2},
    progress=False,
)
trainer = Trainer(cfg)
indices = {k: trainer.order.indices(k).tolist() for k in range(4)}
result = trainer.train()
h = hashlib.sha256()
for name, t in sorted(trainer.raw_nets["unet"].state_dict().items()):
    h.update(name.encode())
    h.update(t.detach().cpu().numpy().tobytes())
info = {
    "rank": trainer.rank,
    "world": trainer.world,
    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
    "indices": indices,
    "param_sha": h.hexdigest(),
    "run_dir": str(result.run_dir),
    "step": result.step,
}
with open(f"{out_dir}/rank{trainer.rank}.json", "w") as f:
    json.dump(info, f)
