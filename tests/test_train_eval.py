"""Evaluation during training: --eval-every writes metrics.jsonl, plots/metrics.png and best/."""

import json

import pytest
from typer.testing import CliRunner

from imagesynth.errors import ImagesynthError
from imagesynth.io.rundir import read_jsonl
from imagesynth.metrics.extractors import train_domain_extractor
from imagesynth.training.config import TrainConfig
from imagesynth.training.trainer import Trainer


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("IMAGESYNTH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    """A domain extractor on 16 px digits, 1 epoch (real code, short recipe)."""
    out = tmp_path_factory.mktemp("ext") / "digits-16"
    return train_domain_extractor("digits", epochs=1, out=out, progress=False)


def _cfg(tmp_path, extractor, **kw):
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
        eval_every=2,
        eval_n=30,
        eval_metrics="fid,kid,acc",
        eval_extractor=f"domain:{extractor}",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_eval_every_writes_metrics_plot_and_best(tmp_path, extractor):
    result = Trainer(_cfg(tmp_path, extractor, steps=5)).train()
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 5]  # every 2 steps, and at the end
    for r in rows:
        assert r["n"] == 30
        assert r["fid"] > 0 and r["fid_floor"] >= 0
        assert 0.0 <= r["acc"] <= 1.0
        assert set(r["protocol"]) == {"fid", "kid", "acc"}
    assert (result.run_dir / "plots" / "metrics.png").stat().st_size > 1000
    best = json.loads((result.run_dir / "best.json").read_text())
    assert best["metric"] == "fid"
    assert best["values"]["fid"] == min(r["fid"] for r in rows)
    assert best["step"] == min(rows, key=lambda r: r["fid"])["step"]
    saved = json.loads((result.run_dir / "best" / "imagesynth.json").read_text())
    assert saved["metrics"]["step"] == best["step"]
    assert saved["metrics"]["fid"] == pytest.approx(best["values"]["fid"])


def test_best_follows_the_chosen_metric_and_survives_resume(tmp_path, extractor):
    cfg = _cfg(tmp_path, extractor, steps=2, eval_best="acc", eval_metrics="fid,acc")
    first = Trainer(cfg).train()
    best1 = json.loads((first.run_dir / "best.json").read_text())
    assert best1["metric"] == "acc" and best1["step"] == 2
    cfg2 = _cfg(tmp_path, extractor, steps=4, eval_best="acc", eval_metrics="fid,acc")
    again = Trainer(cfg2, resume="latest").train()
    assert again.run_dir == first.run_dir
    rows = read_jsonl(again.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    best = json.loads((again.run_dir / "best.json").read_text())
    top = max(rows, key=lambda r: r["acc"])  # higher accuracy is better; ties keep the first
    assert best["values"]["acc"] == top["acc"]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"eval_every": -1}, "eval_every must be an integer >= 0"),
        ({"eval_n": 1}, "eval_n must be an integer >= 2"),
        ({"eval_metrics": "fid,bogus"}, "bogus"),
        ({"eval_metrics": "fid,acc", "cond": "none"}, "acc needs --cond class"),
        ({"eval_metrics": "fid", "eval_best": "kid"}, "not among eval_metrics"),
    ],
)
def test_bad_eval_options(tmp_path, kw, message):
    with pytest.raises(ImagesynthError, match=message):
        _cfg(tmp_path, "x", **kw).validate()


def test_cli_eval_options_reach_the_config(tmp_path):
    from imagesynth.cli.main import app

    res = CliRunner().invoke(
        app,
        [
            "train",
            "diffusion",
            "--data",
            "digits",
            "--size",
            "16",
            "--steps",
            "3",
            "--eval-every",
            "500",
            "--eval-n",
            "100",
            "--eval-metrics",
            "fid,is",
            "--eval-best",
            "is",
            "--runs-dir",
            str(tmp_path),
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output[: res.output.index("\n}") + 2])
    assert (cfg["eval_every"], cfg["eval_n"], cfg["eval_metrics"], cfg["eval_best"]) == (
        500,
        100,
        "fid,is",
        "is",
    )
