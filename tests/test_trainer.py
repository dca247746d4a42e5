import json
import math

import pytest
import torch

from imagesynth.errors import ImagesynthError
from imagesynth.io.rundir import latest_checkpoint, read_jsonl
from imagesynth.training.config import TrainConfig
from imagesynth.training.data import BatchOrder
from imagesynth.training.state import load_tensors
from imagesynth.training.trainer import Trainer, TrainingDiverged, lr_factor


def _cfg(tmp_path, **kw):
    base = dict(
        family="diffusion",
        data="digits",
        size=16,
        cond="class",
        steps=4,
        batch=4,
        log_every=1,
        sample_every=1000,
        sample_n=4,
        ckpt_every=1000,
        runs_dir=str(tmp_path),
        warmup_steps=2,
        family_options={"preset": "tiny", "sample_steps": 2},
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(run_dir):
    ckpt = latest_checkpoint(run_dir)
    return {
        "net": load_tensors(ckpt / "net-unet.safetensors"),
        "ema": load_tensors(ckpt / "ema-unet.safetensors"),
        "optim": load_tensors(ckpt / "optim-denoise.safetensors"),
    }


def test_four_steps_equal_two_plus_resume_plus_two(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a", steps=4)).train()
    first_trainer = Trainer(_cfg(tmp_path / "b", steps=4))
    real_step = first_trainer._train_step

    def interrupted(step):  # Ctrl-C after two steps: the trainer saves and stops
        if step == 2:
            raise KeyboardInterrupt
        return real_step(step)

    first_trainer._train_step = interrupted
    first = first_trainer.train()
    assert first.step == 2 and first.stopped == "interrupted"
    resumed = Trainer(_cfg(tmp_path / "b", steps=4), resume="latest").train()
    assert resumed.run_dir == first.run_dir and resumed.step == 4
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    for part in ("net", "ema", "optim"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}:{k} differs after resume"
    # the resumed run's stats continue the step count
    assert [r["step"] for r in read_jsonl(resumed.run_dir / "stats.jsonl")] == [1, 2, 3, 4]


def test_run_directory_contents(tmp_path):
    res = Trainer(_cfg(tmp_path, steps=3, sample_every=2, ckpt_every=2, keep=1)).train()
    run = res.run_dir
    assert run.name == "00001-digits-diffusion-tiny"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 3 and cfg["family_options"]["preset"] == "tiny"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000003"]  # keep=1
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step-00000002.png",
        "step-00000003.png",
    ]
    assert (run / "plots" / "loss.png").is_file()
    stats = read_jsonl(run / "stats.jsonl")
    assert {"step", "loss", "lr", "grad_norm", "images_per_s", "nonfinite_skipped"} <= set(stats[0])
    assert all(math.isfinite(r["loss"]) for r in stats)
    info = json.loads((run / "model" / "imagesynth.json").read_text())
    assert info["family"] == "diffusion" and info["recipe"]["trained_steps"] == 3
    assert (run / "model" / "model_index.json").is_file()


def _poison(trainer, bad_steps):
    """Make the loss NaN at the given 0-based steps (as a diverging model would)."""
    phase = trainer.phases[0]
    real = phase.loss
    counter = {"step": trainer.start_step}

    def loss(nets, batch, gen):
        value, logs = real(nets, batch, gen)
        step = counter["step"]
        counter["step"] += 1
        return (value * float("nan") if step in bad_steps else value), logs

    phase.loss = loss


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    trainer = Trainer(_cfg(tmp_path, steps=4))
    _poison(trainer, {1})
    res = trainer.train()
    stats = read_jsonl(res.run_dir / "stats.jsonl")
    assert stats[-1]["nonfinite_skipped"] == 1 and res.step == 4
    for t in load_tensors(latest_checkpoint(res.run_dir) / "net-unet.safetensors").values():
        assert torch.isfinite(t).all()


def test_divergence_stops_with_clear_message_and_no_nan_checkpoint(tmp_path):
    trainer = Trainer(_cfg(tmp_path, steps=20, max_bad_steps=3, ckpt_every=1))
    _poison(trainer, set(range(2, 100)))
    with pytest.raises(TrainingDiverged, match="non-finite for 3 steps in a row"):
        trainer.train()
    ckpt = latest_checkpoint(trainer.run_dir)
    assert json.loads((ckpt / "checkpoint.json").read_text())["step"] <= 4
    for t in load_tensors(ckpt / "net-unet.safetensors").values():
        assert torch.isfinite(t).all()


def test_resume_with_incompatible_config_names_keys(tmp_path):
    Trainer(_cfg(tmp_path, steps=1)).train()
    with pytest.raises(ImagesynthError, match=r"batch: 4 -> 8.*lr: 0.001 -> 0.002"):
        Trainer(_cfg(tmp_path, steps=2, batch=8, lr=2e-3), resume="latest")
    Trainer(_cfg(tmp_path, steps=2, log_every=2), resume="latest")  # log_every may change


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"size": 18}, "size 18 is not divisible by 4"),
        ({"batch": 0}, "batch must be > 0"),
        ({"steps": -3}, "steps must be > 0"),
        ({"steps": None}, "give --steps N or --minutes M"),
        ({"data": "mnist"}, "unknown dataset 'mnist'"),
        ({"family_options": {"preset": "huge"}}, "unknown preset 'huge'; expected one of: base"),
        ({"family_options": {"objective": "score"}}, "unknown objective"),
        ({"cond": "image"}, "cond must be"),
        ({"data": "folder:/nonexistent/pics"}, "does not exist"),
        ({"mixed_precision": "bf16"}, "needs a GPU"),
        ({"family_options": {"colour": 1}}, "bad diffusion option"),
    ],
)
def test_bad_input(tmp_path, kw, message):
    if kw.get("mixed_precision") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ImagesynthError, match=message):
        Trainer(_cfg(tmp_path, **kw))


def test_class_conditioning_needs_labels(tmp_path):
    from PIL import Image

    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(pics / f"{i}.png")
    with pytest.raises(ImagesynthError, match="has no class labels"):
        Trainer(_cfg(tmp_path, data=f"folder:{pics}", cond="class"))
    with pytest.raises(ImagesynthError, match="fewer than one global batch of 16"):
        Trainer(_cfg(tmp_path, data=f"folder:{pics}", cond="none", batch=16))


def test_batch_order_covers_epochs_without_overlap():
    n, b, w = 13, 3, 2  # 2 global batches of 6 per epoch, 1 image dropped per epoch
    ranks = [BatchOrder(n, b, w, r, seed=1) for r in range(w)]
    epochs = []
    for e in range(3):
        seen = []
        for k in range(2 * e, 2 * e + 2):
            parts = [o.indices(k).tolist() for o in ranks]
            assert not set(parts[0]) & set(parts[1]) and all(len(p) == b for p in parts)
            seen += parts[0] + parts[1]
        assert len(set(seen)) == 12 and set(seen) <= set(range(n))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    assert ranks[0].indices(3).tolist() == BatchOrder(n, b, w, 0, seed=1).indices(3).tolist()


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr_schedule="cosine")
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 9) == pytest.approx(1.0)
    assert lr_factor(cfg, 55) == pytest.approx(0.5) and lr_factor(cfg, 100) == pytest.approx(0)
    const = TrainConfig(steps=100, warmup_steps=0, lr_schedule="constant")
    assert lr_factor(const, 50) == 1.0


def test_tensorboard_option(tmp_path):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImagesynthError, match="pip install tensorboard"):
            Trainer(_cfg(tmp_path, tensorboard=True))
        return
    res = Trainer(_cfg(tmp_path, tensorboard=True, steps=2)).train()
    assert any((res.run_dir / "tensorboard").iterdir())


def test_on_step_and_request_stop_end_the_run_with_a_checkpoint(tmp_path):
    seen = []

    def on_step(trainer, step, loss):
        seen.append((step, math.isfinite(loss)))
        return step == 3  # stop after the third step

    res = Trainer(_cfg(tmp_path, steps=50), on_step=on_step).train()
    assert res.stopped == "stopped" and res.step == 3
    assert seen == [(1, True), (2, True), (3, True)]
    assert latest_checkpoint(res.run_dir).name.endswith("3") and res.model_dir is not None

    trainer = Trainer(_cfg(tmp_path / "b", steps=50))
    trainer.request_stop("cancelled")  # e.g. from a server's cancel button, before any step
    assert trainer.train().stopped == "cancelled"


def test_cpu_budget_clock_counts_process_time_and_resumes_it(tmp_path):
    import time as _time

    cfg = _cfg(tmp_path, steps=None, minutes=0.2 / 60, budget_clock="cpu")
    trainer = Trainer(cfg)
    _time.sleep(0.5)  # idle wall time does not count on the cpu clock
    assert trainer.budget_elapsed() < 0.4
    res = trainer.train()
    assert res.stopped == "time" and res.step >= 1
    assert read_jsonl(res.run_dir / "stats.jsonl")[-1]["cpu_s"] > 0
    state = json.loads((latest_checkpoint(res.run_dir) / "trainer.json").read_text())
    assert state["cpu_s"] >= 0.2
    with pytest.raises(ImagesynthError, match="budget_clock must be wall or cpu"):
        _cfg(tmp_path, budget_clock="gpu").validate()
