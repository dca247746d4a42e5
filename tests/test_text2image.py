"""Text encoder, autoencoder and latent-diffusion families, and the text-to-image pipelines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagesynth.errors import ImagesynthError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny autoencoder and a tiny latent-diffusion model trained for a few steps (16 px)."""
    import imagesynth

    root = tmp_path_factory.mktemp("t2i")
    common = dict(
        data="shapes",
        size=16,
        batch=8,
        data_options={"length": 64},
        log_every=1,
        sample_every=1000,
        ckpt_every=1000,
        sample_n=4,
        runs_dir=str(root / "runs"),
        progress=False,
    )
    ae = imagesynth.train(family="autoencoder", steps=3, **common)
    ldm = imagesynth.train(
        family="latent-diffusion",
        cond="text",
        steps=3,
        family_options={"autoencoder": str(ae.model_dir), "sample_steps": 2},
        **common,
    )
    return ae, ldm


def test_text_encoder_minilm_states_mask_and_truncation(caplog):
    from imagesynth.conditioning.text import load_text_encoder

    enc = load_text_encoder("minilm", 24)
    assert enc is load_text_encoder("minilm", 24)  # loaded once per process
    out = enc.encode(["a red circle on a white background", ""])
    assert out.states.shape == (2, 24, 384) and out.states.dtype == torch.float32
    assert out.mask is not None and out.mask[1].sum() == 2  # [CLS] [SEP]
    assert out.mask[0].sum() > out.mask[1].sum()
    # same prompt, same states; different prompts, different states
    again = enc.encode(["a red circle on a white background"])
    assert torch.allclose(again.states[0], out.states[0], atol=1e-5)
    with caplog.at_level(logging.WARNING, logger="imagesynth"):
        long = enc.encode(["a red circle " * 30])
    assert long.truncated == [0]
    assert "tokens" in caplog.text


def test_text_encoder_bad_spec():
    from imagesynth.conditioning.text import load_text_encoder

    with pytest.raises(ImagesynthError, match="not a folder"):
        load_text_encoder("/nonexistent/encoder")


def test_autoencoder_model_dir(trained):
    from imagesynth.models.autoencoder import load_autoencoder

    ae, _ = trained
    info = json.loads((ae.model_dir / "imagesynth.json").read_text())
    assert info["family"] == "autoencoder"
    m = info["metrics"]
    assert m["scaling_factor"] == pytest.approx(1 / m["latent_std"], rel=1e-5)
    vae = load_autoencoder(ae.model_dir)
    cfg = json.loads((ae.model_dir / "vae" / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKL"
    assert vae.config.scaling_factor == pytest.approx(m["scaling_factor"], rel=1e-5)
    assert any(k.startswith("ae/psnr") for k in ae.stats[-1])
    # diffusers itself loads it
    from diffusers import AutoencoderKL

    AutoencoderKL.from_pretrained(ae.model_dir / "vae")


def test_autoencoder_adversarial_phase(tmp_path):
    import imagesynth

    res = imagesynth.train(
        family="autoencoder",
        data="shapes",
        size=16,
        steps=2,
        batch=4,
        data_options={"length": 16},
        family_options={"adv_weight": 0.1, "adv_start": 1},
        log_every=1,
        sample_every=1000,
        ckpt_every=1000,
        runs_dir=str(tmp_path),
        progress=False,
    )
    assert "disc/d_loss" in res.stats[-1] and "ae/g_adv" in res.stats[-1]


def test_latent_diffusion_needs_autoencoder_and_captions(tmp_path):
    import imagesynth

    with pytest.raises(ImagesynthError, match="autoencoder"):
        imagesynth.train(
            family="latent-diffusion",
            data="shapes",
            cond="text",
            size=16,
            steps=1,
            runs_dir=str(tmp_path),
            progress=False,
        )


def test_txt2img_deterministic_and_batch_independent(trained):
    from imagesynth import load

    _, ldm = trained
    pipe = load(ldm.model_dir)
    a = pipe(["a red circle on a white background", "a blue square"], seed=3, steps=3)
    b = pipe("a blue square", seed=4, steps=3)  # image 1 of `a` used seed 3 + 1
    assert a.images[0].size == (16, 16)
    assert np.array_equal(np.asarray(a.images[1]), np.asarray(b.images[0]))
    assert a.params[0]["prompt"] == "a red circle on a white background"
    assert a.params[1]["seed"] == 4
    c = pipe("a blue square", seed=4, steps=3, negative_prompt="red")
    assert not np.array_equal(np.asarray(c.images[0]), np.asarray(b.images[0]))
    strip = pipe("a blue square", seed=4, steps=3, save_steps=[1, 3])
    assert [s for s, _ in strip.steps_x0] == [1, 3]


def test_img2img_and_inpaint_keep_what_they_should(trained, tmp_path):
    from imagesynth import load
    from imagesynth.data import get_dataset

    _, ldm = trained
    pipe = load(ldm.model_dir)
    src = get_dataset("shapes", size=16, split="test")[0].image
    same = pipe.img2img(src, "a red circle", strength=0.0)
    recon = pipe.decode(pipe.encode(pipe._image_tensor(src, None)))
    from imagesynth.io.images import tensor_to_pil

    assert np.array_equal(np.asarray(same.images[0]), np.asarray(tensor_to_pil(recon)[0]))
    moved = pipe.img2img(src, "a red circle", strength=1.0, steps=3, seed=1)
    assert moved.params[0]["denoising_strength"] == 1.0
    # inpaint: the left half is repainted, the right half (beyond the feather) is kept exactly
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    out = pipe.inpaint(src, mask, "a blue square", steps=3, seed=0, mask_blur=0.5)
    a, b = np.asarray(out.images[0]).astype(int), np.asarray(src.convert("RGB")).astype(int)
    assert np.abs(a[:, 11:] - b[:, 11:]).max() <= 1
    # outpaint grows the canvas and keeps the original in the middle
    wide = pipe.outpaint(src, "a blue square", left=4, right=4, steps=2, mask_blur=0.5)
    assert wide.images[0].size == (24, 16)
    w = np.asarray(wide.images[0]).astype(int)
    assert np.abs(w[:, 7:17] - b[:, 3:13]).max() <= 1


def test_edit_bad_input(trained, tmp_path):
    from imagesynth import load

    _, ldm = trained
    pipe = load(ldm.model_dir)
    src = Image.new("RGB", (16, 16), (255, 255, 255))
    with pytest.raises(ImagesynthError, match="strength"):
        pipe.img2img(src, "x", strength=1.5)
    with pytest.raises(ImagesynthError, match="aspect"):
        pipe.inpaint(src, Image.new("L", (16, 8), 255), "x")
    with pytest.warns(UserWarning, match="resized"):
        pipe.inpaint(src, Image.new("L", (32, 32), 255), "x", steps=1)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImagesynthError, match=r"notes\.png"):
        pipe.img2img(bad, "x")
    with pytest.raises(ImagesynthError, match="multiple"):
        pipe.img2img(Image.new("RGB", (18, 18)), "x")
    with pytest.raises(ImagesynthError, match="multiple"):
        pipe.outpaint(src, "x", left=3)
    with pytest.raises(ImagesynthError, match="height"):
        pipe("x", size=18)
    with pytest.raises(ImagesynthError, match="guidance"):
        pipe("x", guidance_scale=100)


def _tiny_clip_folder(path: Path) -> None:
    """A random Stable-Diffusion-layout pipeline: CLIP text encoder, UNet, VAE, scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok_dir = path / "tokenizer"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    tok.model_max_length = 16
    tok.save_pretrained(tok_dir)
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    te.save_pretrained(path / "text_encoder", safe_serialization=True)
    UNet2DConditionModel(
        sample_size=4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    ).save_pretrained(path / "unet")
    AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=8,
    ).save_pretrained(path / "vae")
    DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.31.0"})
    )


def test_stable_diffusion_layout_folder(tmp_path):
    from imagesynth import load

    sd = tmp_path / "sd"
    _tiny_clip_folder(sd)
    pipe = load(sd)
    assert pipe.text.max_length == 16
    assert pipe.text.use_mask is False  # SD pads with CLIP and attends to every position
    out = pipe("abc", n=2, steps=2, seed=0)
    assert out.images[0].size == (8, 8)
    out2 = pipe.img2img(out.images[0], "abc", strength=0.5, steps=2)
    assert out2.images[0].size == (8, 8)
    # a pickled weights file is refused by default
    (sd / "unet" / "diffusion_pytorch_model.safetensors").rename(
        sd / "unet" / "diffusion_pytorch_model.bin"
    )
    with pytest.raises(ImagesynthError, match="pickle"):
        load(sd)
