"""Distributed for real: 2 CPU processes (gloo) launched through accelerate."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_two_processes_stay_identical_and_split_batches(tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed beside this Python")
    runs, out = tmp_path / "runs", tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "29517",
            str(Path(__file__).parent / "dist_worker.py"),
            str(runs),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert (r0["world"], r1["world"], r0["backend"]) == (2, 2, "gloo")
    assert r0["param_sha"] == r1["param_sha"], "parameters diverged across ranks"
    for k in map(str, range(4)):
        a, b = set(r0["indices"][k]), set(r1["indices"][k])
        assert len(a) == len(b) == 4 and not a & b, f"ranks overlap in batch {k}"
    # only rank 0 writes: one run directory, one stats line per step, one grid per sample step
    run_dirs = list(runs.iterdir())
    assert len(run_dirs) == 1 and r0["run_dir"] == r1["run_dir"] == str(run_dirs[0])
    stats = (run_dirs[0] / "stats.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in stats] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run_dirs[0] / "samples").iterdir()) == [
        "step-00000002.png",
        "step-00000004.png",
    ]
    assert sorted(p.name for p in (run_dirs[0] / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000004",
    ]
    assert (run_dirs[0] / "model" / "imagesynth.json").is_file()
