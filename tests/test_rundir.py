import json
import os
import subprocess
import sys
import textwrap

import pytest

from imagesynth import ImagesynthError
from imagesynth.io.rundir import (
    append_jsonl,
    create_run_dir,
    find_run,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    read_jsonl,
    save_checkpoint,
)


def _writer(payload: bytes):
    def write(folder):
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "optimizer").mkdir()
        (folder / "optimizer" / "state.bin").write_bytes(payload[::-1])

    return write


def test_run_dirs_are_numbered(tmp_path):
    a = create_run_dir(tmp_path, data="shapes", family="diffusion", tag="tiny", config={"lr": 1})
    b = create_run_dir(tmp_path, data="folder:/home/me/My Pics", family="gan")
    assert a.name == "00001-shapes-diffusion-tiny" and b.name == "00002-My_Pics-gan"
    assert json.loads((a / "config.json").read_text()) == {"lr": 1}
    assert all((a / d).is_dir() for d in ("samples", "plots", "checkpoints"))
    assert find_run(tmp_path, "latest") == b and find_run(tmp_path, "1") == a
    assert find_run(tmp_path, str(a)) == a
    with pytest.raises(ImagesynthError, match="no run number 7"):
        find_run(tmp_path, "7")
    with pytest.raises(ImagesynthError, match="no runs"):
        find_run(tmp_path / "none", "latest")


def test_jsonl_tolerates_torn_last_line(tmp_path):
    path = tmp_path / "stats.jsonl"
    append_jsonl(path, {"step": 1, "loss": 0.5})
    append_jsonl(path, {"step": 2, "loss": 0.25})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-line
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_checkpoints_rotate_and_latest(tmp_path):
    run = create_run_dir(tmp_path, data="digits", family="vae")
    for step in (10, 20, 30, 40):
        path = save_checkpoint(run, step, _writer(bytes([step]) * 100), keep=3)
        assert is_complete(path)
    assert [s for s, _ in list_checkpoints(run)] == [20, 30, 40]
    latest = latest_checkpoint(run)
    assert latest.name == "step-00000040"
    manifest = json.loads((latest / "checkpoint.json").read_text())
    assert manifest["step"] == 40 and manifest["files"]["optimizer/state.bin"] == 100
    with pytest.raises(ImagesynthError, match="keep must be"):
        save_checkpoint(run, 50, _writer(b"x"), keep=0)


def test_exception_mid_write_leaves_previous_latest(tmp_path):
    run = create_run_dir(tmp_path, data="digits", family="vae")
    save_checkpoint(run, 1, _writer(b"good" * 10))

    def crash(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(run, 2, crash)
    assert latest_checkpoint(run).name == "step-00000001"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]


def test_process_killed_mid_write_is_never_latest(tmp_path):
    """A real crash: the writing process dies (os._exit) half way through a checkpoint."""
    run = create_run_dir(tmp_path, data="digits", family="vae")
    save_checkpoint(run, 1, _writer(b"good" * 10))
    script = textwrap.dedent(
        f"""
        import os
        from imagesynth.io.rundir import save_checkpoint
        def write(folder):
            (folder / "model.safetensors").write_bytes(b"x" * 1000)
            os._exit(9)  # killed before the manifest and the rename
        save_checkpoint({str(run)!r}, 2, write)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == 9
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert leftovers, "the killed writer should have left its temporary folder"
    assert latest_checkpoint(run).name == "step-00000001"
    # A hand-made folder with the final name but no manifest is not complete either.
    fake = run / "checkpoints" / "step-00000003"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(run).name == "step-00000001"
    # A manifest whose files were truncated afterwards is rejected too.
    good = latest_checkpoint(run)
    with open(good / "model.safetensors", "r+b") as f:
        f.truncate(3)
    assert latest_checkpoint(run) is None
    # The next save clears the crashed writer's leftovers.
    save_checkpoint(run, 4, _writer(b"new"))
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert latest_checkpoint(run).name == "step-00000004"


def test_resaving_a_step_replaces_it(tmp_path):
    run = create_run_dir(tmp_path, data="digits", family="vae")
    save_checkpoint(run, 5, _writer(b"a" * 4))
    save_checkpoint(run, 5, _writer(b"b" * 8))
    latest = latest_checkpoint(run)
    assert (latest / "model.safetensors").read_bytes() == b"b" * 8
    assert os.listdir(run / "checkpoints") == ["step-00000005"]
