import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import imagesynth
from imagesynth.cli.main import app
from imagesynth.errors import ImagesynthError
from imagesynth.io.pngmeta import read_png_metadata
from imagesynth.pipelines.diffusion import DiffusionPipeline, steps_strip
from imagesynth.sampling import sampler_names

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step class-conditional model on 16 px digits, through the real CLI."""
    runs = tmp_path_factory.mktemp("runs")
    result = runner.invoke(
        app,
        [
            "train",
            "diffusion",
            "--data",
            "digits",
            "--size",
            "16",
            "--cond",
            "class",
            "--steps",
            "3",
            "--batch",
            "8",
            "--runs-dir",
            str(runs),
            "--sample-every",
            "100",
        ],
    )
    assert result.exit_code == 0, result.output
    (run,) = list(runs.iterdir())
    return run


def _uncond_pipe():
    from diffusers import UNet2DModel

    from imagesynth.models.diffusion import PRESETS, DiffusionOptions, scheduler_config

    torch.manual_seed(0)
    cfg = {**PRESETS["tiny"], "sample_size": 8, "in_channels": 1, "out_channels": 1}
    return DiffusionPipeline(UNet2DModel(**cfg), scheduler_config(DiffusionOptions()), {})


def _arr(im):
    return np.asarray(im)


def test_same_seed_same_image_and_batch_independent(trained):
    pipe = imagesynth.load(trained)
    a = pipe(n=3, seed=5, steps=4, class_labels=[1, 2, 3])
    b = pipe(n=3, seed=5, steps=4, class_labels=[1, 2, 3])
    c = pipe(n=1, seed=6, steps=4, class_labels=[2])
    assert all(np.array_equal(_arr(x), _arr(y)) for x, y in zip(a.images, b.images, strict=True))
    assert np.array_equal(_arr(a.images[1]), _arr(c.images[0]))
    assert a.images[0].size == (16, 16) and a.images[0].mode == "L"
    assert a.params[1]["seed"] == 6 and a.params[1]["class_label"] == 2
    assert a.params[0]["sampler"] == "DPM++ 2M" and len(a.params[0]["model_hash"]) == 10


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_runs(trained, sampler):
    out = imagesynth.load(trained)(n=2, seed=0, sampler=sampler, steps=3, guidance_scale=2.0)
    assert len(out.images) == 2


def test_save_steps_and_strip(trained):
    out = imagesynth.load(trained)(n=2, steps=5, save_steps=[1, 3, 5], class_labels=[4])
    assert [s for s, _ in out.steps_x0] == [1, 3, 5]
    assert out.steps_x0[0][1].shape == (2, 1, 16, 16)
    strip = steps_strip(out.steps_x0)
    assert strip.width > 3 * 64 and strip.height > 2 * 64  # 16 px tiles enlarged to 64


def test_bad_sampling_input(trained):
    pipe = imagesynth.load(trained)
    with pytest.raises(ImagesynthError, match=r"class index 10 out of range; expected 0\.\.9"):
        pipe(n=1, class_labels=[10])
    with pytest.raises(ImagesynthError, match="unknown sampler 'plms'"):
        pipe(n=1, sampler="plms")
    with pytest.raises(ImagesynthError, match="steps must be a positive integer"):
        pipe(n=1, steps=-2)
    with pytest.raises(ImagesynthError, match="n must be a positive integer"):
        pipe(n=0)
    with pytest.raises(ImagesynthError, match="got 2 class labels for n=3"):
        pipe(n=3, class_labels=[1, 2])
    uncond = _uncond_pipe()
    with pytest.raises(ImagesynthError, match="needs a class-conditional model"):
        uncond(n=1, guidance_scale=3.0)
    with pytest.raises(ImagesynthError, match="this model is unconditional"):
        uncond(n=1, class_labels=[0])


def test_cfg_changes_the_image(trained):
    pipe = imagesynth.load(trained)
    a = pipe(n=1, steps=4, class_labels=[3], guidance_scale=1.0).images[0]
    b = pipe(n=1, steps=4, class_labels=[3], guidance_scale=4.0).images[0]
    assert not np.array_equal(_arr(a), _arr(b))


def test_diffusers_loads_our_model_dir(trained):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    model = trained / "model"
    pipe = DDPMPipeline.from_pretrained(model)
    assert isinstance(pipe.unet, UNet2DModel) and isinstance(pipe.scheduler, DDPMScheduler)
    ours = imagesynth.load(model).unet
    for (k, a), (_, b) in zip(
        pipe.unet.state_dict().items(), ours.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    x = torch.randn(1, 1, 16, 16)
    out = pipe.unet(x, torch.tensor([10]), class_labels=torch.tensor([1])).sample
    assert out.shape == x.shape


def test_cli_sample_writes_grid_strip_and_images(trained, tmp_path):
    grid, strip, outdir = tmp_path / "g.png", tmp_path / "s.png", tmp_path / "imgs"
    result = runner.invoke(
        app,
        [
            "sample",
            str(trained / "model"),
            "--n",
            "4",
            "--steps",
            "4",
            "--seed",
            "7",
            "--class",
            "3",
            "--cfg",
            "2.5",
            "--sampler",
            "euler-a",
            "--out",
            str(grid),
            "--save-steps",
            str(strip),
            "--out-dir",
            str(outdir),
        ],
    )
    assert result.exit_code == 0, result.output
    meta = read_png_metadata(grid)
    assert meta.params["sampler"] == "Euler a" and meta.params["steps"] == 4
    assert meta.params["cfg_scale"] == 2.5 and meta.params["class_label"] == 3
    assert "Steps: 4, Sampler: Euler a, CFG scale: 2.5, Seed: 7" in meta.parameters
    assert read_png_metadata(strip).params["save_steps"] == [1, 2, 3, 4]
    files = sorted(p.name for p in outdir.iterdir())
    assert files == ["000007.png", "000008.png", "000009.png", "000010.png"]
    assert read_png_metadata(outdir / "000009.png").params["seed"] == 9


def test_cli_train_dry_run_and_errors(tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "diffusion",
            "--data",
            "shapes",
            "--size",
            "32",
            "--steps",
            "5",
            "--runs-dir",
            str(tmp_path),
            "--dry-run",
            "--opt",
            "length=64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert '"family": "diffusion"' in result.output and "M parameters" in result.output
    assert not any(tmp_path.iterdir())  # a dry run creates nothing
    import subprocess
    import sys

    for args, message in [
        (["--size", "30"], "not divisible by 4"),
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--batch", "0"], "batch must be > 0"),
        (["--steps", "-1"], "steps must be > 0"),
    ]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagesynth",
                "train",
                "diffusion",
                "--data",
                "digits",
                "--runs-dir",
                str(tmp_path),
                "--steps",
                "2",
                *args,
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert message in proc.stderr.strip().splitlines()[-1]
    proc = subprocess.run(
        [sys.executable, "-m", "imagesynth", "sample", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_model_record(trained):
    info = json.loads((trained / "model" / "imagesynth.json").read_text())
    assert info["dataset"]["name"] == "digits" and info["dataset"]["num_classes"] == 10
    assert info["recipe"]["cond"] == "class" and info["versions"]["diffusers"]


def test_we_load_a_diffusers_ddpm_folder(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from imagesynth.models.diffusion import PRESETS

    torch.manual_seed(0)
    unet = UNet2DModel(**PRESETS["tiny"], sample_size=8, in_channels=3, out_channels=3)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "ddpm")
    pipe = imagesynth.load(tmp_path / "ddpm")
    out = pipe(n=2, steps=2, sampler="ddim")
    assert out.images[0].size == (8, 8) and out.images[0].mode == "RGB"
    for p in (tmp_path / "ddpm" / "unet").glob("*.safetensors"):  # a pickle-only folder
        p.unlink()
    torch.save(unet.state_dict(), tmp_path / "ddpm" / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ImagesynthError, match="pickle"):
        imagesynth.load(tmp_path / "ddpm")
