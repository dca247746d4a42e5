"""Text-to-image and editing with a latent diffusion model: txt2img, img2img, inpaint, outpaint.

One sampling routine (`TextToImage.generate_tensor`) serves every recipe:
- txt2img starts from noise;
- img2img (SDEdit, Meng et al. 2022) encodes the image and starts part-way, at
  `start = steps * (1 - strength)`, from the encoded latents noised to that step;
- sketch-to-image is img2img from a rough drawing at a high strength (colours and places of
  the blobs survive the noise, their shapes do not);
- inpainting puts the known latents back at every step, noised to the current level
  (RePaint, Lugmayr et al. 2022, without resampling), under a feathered latent mask, then
  pastes the known pixels back through a feathered pixel mask;
- outpainting is inpainting on a canvas padded with the image's edge colours.
Classifier-free guidance uses the empty prompt, or the negative prompt when one is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from ..errors import ImagesynthError
from ..io.images import pil_to_tensor, tensor_to_pil
from ..seeding import check_seed, cpu_generator, randn_per_sample
from .diffusion import PipelineOutput, _default_device, _merge_chunks

MAX_BATCH = 64  # images per UNet call (x2 with guidance)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ImagesynthError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _check_strength(strength: float) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise ImagesynthError(f"strength must be a number in [0, 1], got {strength!r}") from None
    if not 0.0 <= s <= 1.0 or math.isnan(s):
        raise ImagesynthError(f"strength must be in [0, 1], got {strength}")
    return s


def open_image(image: str | Path | Image.Image, what: str = "image") -> Image.Image:
    """A PIL image from a path (refusing non-images with the file's name) or a PIL image."""
    if isinstance(image, Image.Image):
        return image
    path = Path(image)
    if not path.is_file():
        raise ImagesynthError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImagesynthError(
            f"{path} is not a readable image ({exc.__class__.__name__})"
        ) from None


class TextToImage:
    """A latent text-to-image model: UNet2DConditionModel + AutoencoderKL + text encoder."""

    def __init__(
        self,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        text: Any,
        sched_cfg: dict[str, Any],
        scaling: float,
        info: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        self.unet = getattr(unet, "module", unet)
        self.vae, self.text, self.sched_cfg = vae, text, sched_cfg
        self.scaling = float(scaling)
        self.info = info or {}
        self.path = path
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.size = int(vae.config.sample_size) if vae.config.sample_size else 32
        self.size = int(self.info.get("native_size") or self.size)

    # ----- loading ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> TextToImage:
        """Our latent-diffusion model directory, or a diffusers Stable Diffusion folder."""
        path = Path(path)
        if (path / "imagesynth.json").is_file():
            return cls._from_imagesynth(path, device, allow_pickle)
        if (path / "model_index.json").is_file():
            return cls.from_diffusers(path, device, allow_pickle)
        raise ImagesynthError(
            f"{path}: not a model directory (no imagesynth.json or model_index.json)"
        )

    @classmethod
    def _from_imagesynth(cls, path: Path, device: str | None, allow_pickle: bool) -> TextToImage:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from ..conditioning.text import load_text_encoder
        from ..io.model_dir import load_model

        files = load_model(path, allow_pickle=allow_pickle)
        if files.family != "latent-diffusion":
            raise ImagesynthError(
                f"{path} holds a {files.family!r} model, not a latent-diffusion model"
            )
        dev = device or _default_device()

        def build(name: str, klass: Any) -> torch.nn.Module:
            cfg = {k: v for k, v in files.component_config(name).items() if not k.startswith("_")}
            net = klass.from_config(cfg)
            res = net.load_state_dict(
                {k: v.float() for k, v in files.state_dict(name).items()}, strict=False
            )
            if res.missing_keys or res.unexpected_keys:
                raise ImagesynthError(
                    f"{path}: {name} weights do not match its config (missing "
                    f"{res.missing_keys[:3]}, unexpected {res.unexpected_keys[:3]})"
                )
            return net.float().to(dev).eval().requires_grad_(False)

        unet = build("unet", UNet2DConditionModel)
        vae = build("vae", AutoencoderKL)
        cfg = files.config
        te = cfg.get("text_encoder") or {}
        text = load_text_encoder(
            te.get("name", "minilm"), int(te.get("max_length", cfg["options"]["max_length"]))
        )
        if text.dim != unet.config.cross_attention_dim:
            raise ImagesynthError(
                f"text encoder {text.name} gives {text.dim}-d states; the UNet expects "
                f"{unet.config.cross_attention_dim}"
            )
        info = dict(files.info)
        info["native_size"] = (cfg.get("data") or {}).get("size")
        return cls(unet, vae, text, cfg["scheduler"], vae.config.scaling_factor, info, path)

    @classmethod
    def from_diffusers(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> TextToImage:
        """A Stable-Diffusion-layout folder: unet/, vae/, text_encoder/, tokenizer/, scheduler/."""
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from ..conditioning.text import load_text_encoder
        from ..io.model_dir import _refuse_pickle

        path = Path(path)
        for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (path / sub).is_dir():
                raise ImagesynthError(f"{path}: missing the {sub}/ folder of a diffusers pipeline")
        for sub in ("unet", "vae"):
            if not list((path / sub).glob("*.safetensors")):
                pickles = list((path / sub).glob("*.bin"))
                if pickles and not allow_pickle:
                    raise _refuse_pickle(pickles[0])
                if not pickles:
                    raise ImagesynthError(f"{path / sub} has no weights (*.safetensors)")
        dev = device or _default_device()
        safe = not allow_pickle
        unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=safe)
        vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=safe)
        try:
            sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ImagesynthError(f"{path}: unreadable scheduler config ({exc})") from None
        sched = {k: v for k, v in sched.items() if not k.startswith("_")}
        text = load_text_encoder(str(path / "text_encoder"))
        info = {"source": "diffusers", "native_size": unet.config.sample_size * 8}
        unet = unet.float().to(dev).eval().requires_grad_(False)
        vae = vae.float().to(dev).eval().requires_grad_(False)
        scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
        pipe = cls(unet, vae, text, sched, scaling, info, path)
        pipe.size = int(unet.config.sample_size) * pipe.factor
        return pipe

    # ----- properties ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def model_hash(self) -> str | None:
        unet = (self.info.get("components") or {}).get("unet") or {}
        return str(unet.get("sha256", ""))[:10] or None

    # ----- latents <-> pixels ------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (posterior means)."""
        x = x.to(self.device, torch.float32)
        return self.vae.encode(x).latent_dist.mean * self.scaling

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self.device, torch.float32) / self.scaling).sample.clamp(-1, 1)

    def _image_tensor(self, image: Image.Image, size: tuple[int, int] | None) -> torch.Tensor:
        channels = self.vae.config.in_channels
        image = image.convert("L" if channels == 1 else "RGB")
        if size is not None and image.size != size:
            image = image.resize(size, Image.BICUBIC)
        w, h = image.size
        if w % self.factor or h % self.factor:
            raise ImagesynthError(
                f"image size {w}x{h} is not a multiple of {self.factor} (the autoencoder's "
                "factor); resize or pad it"
            )
        return pil_to_tensor(image).unsqueeze(0)

    # ----- the one sampling routine -----------------------------------------------------
    @torch.no_grad()
    def generate_tensor(
        self,
        prompts: Sequence[str],
        *,
        negative: Sequence[str] | str | None = None,
        seed: int = 0,
        sampler: str = "dpmpp-2m",
        steps: int = 20,
        guidance_scale: float = 2.0,
        height: int | None = None,
        width: int | None = None,
        init: torch.Tensor | None = None,
        strength: float = 1.0,
        mask: torch.Tensor | None = None,
        callback: Callable[[Any], None] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Images (n, C, H, W) in [-1, 1] for `prompts`; image i uses the noise of seed + i.

        `init` (n or 1, C, H, W) in [-1, 1] with `strength` < 1 is img2img; `mask` (1 or n,
        1, H, W) in [0, 1] (1 = repaint) with `init` is inpainting.
        """
        from ..sampling import cfg_model_fn, make_scheduler, sample

        prompts = list(prompts)
        n = len(prompts)
        if n < 1:
            raise ImagesynthError("give at least one prompt")
        _check_int("steps", steps, 1, 1000)
        check_seed(seed)
        strength = _check_strength(strength)
        try:
            scale = float(guidance_scale)
        except (TypeError, ValueError):
            raise ImagesynthError(
                f"guidance scale must be a number, got {guidance_scale!r}"
            ) from None
        if not 0.0 <= scale <= 50.0:
            raise ImagesynthError(f"guidance scale must be in 0..50, got {guidance_scale}")
        if isinstance(negative, str) or negative is None:
            negative = [negative or ""] * n
        negative = list(negative)
        if len(negative) != n:
            raise ImagesynthError(f"got {len(negative)} negative prompts for {n} prompts")
        if init is not None:
            height, width = init.shape[-2:]
        height = int(height or self.size)
        width = int(width or self.size)
        for name, v in (("height", height), ("width", width)):
            if v % self.factor or v < self.factor:
                raise ImagesynthError(
                    f"{name} {v} is not a positive multiple of {self.factor} "
                    "(the autoencoder's factor)"
                )
        lh, lw = height // self.factor, width // self.factor
        unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if lh % unet_factor or lw % unet_factor:
            step = self.factor * unet_factor
            raise ImagesynthError(
                f"height and width must be multiples of {step}, got {height}x{width}"
            )
        dev = self.device
        ch = self.unet.config.in_channels
        cond = self.text.encode(prompts)
        uncond = self.text.encode(negative)
        z_init = None
        if init is not None:
            init = init.to(dev, torch.float32)
            z_init = self.encode(init)
            if z_init.shape[0] == 1 and n > 1:
                z_init = z_init.expand(n, -1, -1, -1)
        keep = None
        if mask is not None:
            if z_init is None:
                raise ImagesynthError("inpainting needs an image to keep parts of")
            m = F.interpolate(mask.to(dev, torch.float32), size=(lh, lw), mode="area")
            m = _feather(m, 0.5).clamp(0, 1)
            keep = (1 - m).expand(n, -1, -1, -1)
        start = 0
        if z_init is not None and mask is None:
            if strength == 0.0:  # nothing to denoise: the autoencoder's reconstruction
                return self.decode(z_init)
            start = min(steps - 1, round(steps * (1 - strength)))
        outs = []
        for s0 in range(0, n, MAX_BATCH):
            b = min(MAX_BATCH, n - s0)
            seeds = [seed + s0 + i for i in range(b)]
            noise = randn_per_sample((b, ch, lh, lw), seeds).to(dev)
            gen = cpu_generator(seed + s0)
            states = cond.states[s0 : s0 + b].to(dev)
            ustates = uncond.states[s0 : s0 + b].to(dev)
            cm = cond.mask[s0 : s0 + b].to(dev) if cond.mask is not None else None
            um = uncond.mask[s0 : s0 + b].to(dev) if uncond.mask is not None else None

            def cond_fn(x: torch.Tensor, t: torch.Tensor, c: Any) -> torch.Tensor:
                st, mk = c
                return self.unet(
                    x, t.to(dev), encoder_hidden_states=st, encoder_attention_mask=mk
                ).sample

            if scale == 1.0:
                model_fn = lambda x, t, c=(states, cm): cond_fn(x, t, c)  # noqa: E731
            else:
                model_fn = cfg_model_fn(cond_fn, (states, cm), (ustates, um), scale)
            blend = None
            zi = z_init[s0 : s0 + b] if z_init is not None else None
            if keep is not None and zi is not None:
                kb = keep[s0 : s0 + b]
                renoise = cpu_generator(seed + s0 + 7919)

                def blend(x, scheduler, t_next, zi=zi, kb=kb, renoise=renoise):
                    if t_next is None:
                        known = zi
                    else:
                        eps = torch.randn(zi.shape, generator=renoise).to(dev)
                        tb = t_next.reshape(1).repeat(zi.shape[0]).to(dev)
                        known = scheduler.add_noise(zi, eps, tb)
                    return kb * known + (1 - kb) * x

            scheduler = make_scheduler(sampler, self.sched_cfg)
            z = sample(
                model_fn,
                noise,
                scheduler,
                steps,
                generator=gen,
                callback=callback,
                start_step=start,
                init=zi,
                progress=progress,
                blend=blend,
            )
            outs.append(self.decode(z).float().cpu())
        return torch.cat(outs)

    # ----- user-facing recipes ---------------------------------------------------------------
    def _run(
        self,
        prompt: str | Sequence[str],
        n: int,
        params_extra: dict[str, Any],
        save_steps: Sequence[int] | None,
        callback: Callable[[Any], None] | None,
        **kw: Any,
    ) -> PipelineOutput:
        from ..sampling import resolve_sampler

        _check_int("n", n, 1, 100_000)
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if not isinstance(prompt, str) and len(prompts) != n:
            n = len(prompts)
        kept: list[tuple[int, torch.Tensor]] = []
        wanted = set(save_steps or [])

        def on_step(info: Any) -> None:
            if info.i + 1 in wanted:
                kept.append((info.i + 1, self.decode(info.x0).float().cpu()))
            if callback is not None:
                callback(info)

        x = self.generate_tensor(prompts, callback=on_step, **kw)
        images = tensor_to_pil(x)
        neg = kw.get("negative")
        params = []
        for i in range(n):
            p: dict[str, Any] = {
                "prompt": prompts[i],
                "negative_prompt": neg if isinstance(neg, str) else (neg[i] if neg else ""),
                "steps": kw.get("steps", 20),
                "sampler": resolve_sampler(kw.get("sampler", "dpmpp-2m")).label,
                "cfg_scale": kw.get("guidance_scale", 2.0),
                "seed": kw.get("seed", 0) + i,
                "size": f"{images[i].width}x{images[i].height}",
                "model_hash": self.model_hash,
                "model": self.path.name if self.path else None,
                "family": "latent-diffusion",
                **params_extra,
            }
            params.append(p)
        return PipelineOutput(images=images, params=params, steps_x0=_merge_chunks(kept))

    def __call__(
        self,
        prompt: str | Sequence[str] = "",
        negative_prompt: str | Sequence[str] | None = None,
        n: int = 1,
        seed: int = 0,
        steps: int = 20,
        guidance_scale: float = 2.0,
        sampler: str = "dpmpp-2m",
        size: int | tuple[int, int] | None = None,
        save_steps: Sequence[int] | None = None,
        callback: Callable[[Any], None] | None = None,
        progress: bool = False,
    ) -> PipelineOutput:
        """Text to image: n images of `prompt` (or one per prompt in a list)."""
        w, h = (size, size) if isinstance(size, int) or size is None else size
        return self._run(
            prompt,
            n,
            {},
            save_steps,
            callback,
            negative=negative_prompt,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            height=h,
            width=w,
            progress=progress,
        )

    def img2img(
        self,
        image: str | Path | Image.Image,
        prompt: str = "",
        strength: float = 0.6,
        *,
        mode: str = "img2img",
        negative_prompt: str | None = None,
        n: int = 1,
        seed: int = 0,
        steps: int = 20,
        guidance_scale: float = 2.0,
        sampler: str = "dpmpp-2m",
        save_steps: Sequence[int] | None = None,
        callback: Callable[[Any], None] | None = None,
        progress: bool = False,
    ) -> PipelineOutput:
        """SDEdit: noise the encoded image to `strength` (0 keeps it, 1 ignores it), denoise."""
        strength = _check_strength(strength)
        im = open_image(image)
        x = self._image_tensor(im, None)
        return self._run(
            prompt,
            n,
            {"mode": mode, "denoising_strength": strength, "init_size": f"{im.width}x{im.height}"},
            save_steps,
            callback,
            negative=negative_prompt,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            init=x,
            strength=strength,
            progress=progress,
        )

    def sketch(
        self, image: str | Path | Image.Image, prompt: str = "", strength: float = 0.8, **kw
    ):
        """Structure from a rough drawing (colored blobs where things should be): SDEdit."""
        return self.img2img(image, prompt, strength, mode="sketch", **kw)

    def inpaint(
        self,
        image: str | Path | Image.Image,
        mask: str | Path | Image.Image,
        prompt: str = "",
        *,
        mask_blur: float | None = None,
        negative_prompt: str | None = None,
        n: int = 1,
        seed: int = 0,
        steps: int = 20,
        guidance_scale: float = 2.0,
        sampler: str = "dpmpp-2m",
        save_steps: Sequence[int] | None = None,
        callback: Callable[[Any], None] | None = None,
        progress: bool = False,
        _mode: str = "inpaint",
    ) -> PipelineOutput:
        """Repaint where `mask` is white (>= 128); keep the rest (feathered at the border)."""
        import warnings

        im = open_image(image)
        mk = open_image(mask, "mask").convert("L")
        if mk.size != im.size:
            ra, rb = mk.width / mk.height, im.width / im.height
            if abs(ra - rb) > 0.01:
                raise ImagesynthError(
                    f"mask is {mk.width}x{mk.height} but the image is {im.width}x{im.height}: "
                    "different aspect ratios; make a mask of the image's size"
                )
            warnings.warn(
                f"mask {mk.width}x{mk.height} resized to the image's {im.width}x{im.height}",
                stacklevel=2,
            )
            mk = mk.resize(im.size, Image.NEAREST)
        x = self._image_tensor(im, None)
        hard = (pil_to_tensor(mk.point(lambda v: 255 if v >= 128 else 0)) + 1) / 2  # (1,H,W)
        if float(hard.sum()) == 0:
            warnings.warn("the mask is empty (all black): nothing to repaint", stacklevel=2)
        radius = max(0.5, im.width / 64) if mask_blur is None else float(mask_blur)
        soft = mk.point(lambda v: 255 if v >= 128 else 0).filter(ImageFilter.GaussianBlur(radius))
        soft_t = ((pil_to_tensor(soft) + 1) / 2).clamp(0, 1)
        # Grow the pixel mask by the blur so repainted content is never cut by the paste-back
        soft_t = torch.maximum(soft_t, hard)
        out = self._run(
            prompt,
            n,
            {"mode": _mode, "mask_blur": radius},
            save_steps,
            callback,
            negative=negative_prompt,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            sampler=sampler,
            init=x,
            mask=hard.unsqueeze(0),
            progress=progress,
        )
        # Paste the known pixels back (only the feathered border mixes old and new)
        images = []
        base = x[0]
        for img in out.images:
            gen = pil_to_tensor(img)
            mixed = soft_t * gen + (1 - soft_t) * base
            images.append(tensor_to_pil(mixed.unsqueeze(0))[0])
        out.images = images
        return out

    def outpaint(
        self,
        image: str | Path | Image.Image,
        prompt: str = "",
        *,
        left: int = 0,
        right: int = 0,
        top: int = 0,
        bottom: int = 0,
        **kw: Any,
    ) -> PipelineOutput:
        """Extend the canvas by the given pixels and inpaint the new border."""
        im = open_image(image).convert("RGB")
        pads = {"left": left, "right": right, "top": top, "bottom": bottom}
        for k, v in pads.items():
            _check_int(k, v, 0, 4096)
        if not any(pads.values()):
            raise ImagesynthError("outpainting needs --left, --right, --top or --bottom > 0")
        w, h = im.width + left + right, im.height + top + bottom
        if w % self.factor or h % self.factor:
            raise ImagesynthError(
                f"the padded canvas {w}x{h} is not a multiple of {self.factor}; "
                f"use paddings that are multiples of {self.factor}"
            )
        arr = torch.from_numpy(np.array(im)).permute(2, 0, 1).float()
        canvas = F.pad(arr.unsqueeze(0), (left, right, top, bottom), mode="replicate")[0]
        canvas_im = Image.fromarray(canvas.permute(1, 2, 0).byte().numpy())
        mask = Image.new("L", (w, h), 255)
        mask.paste(0, (left, top, left + im.width, top + im.height))
        out = self.inpaint(canvas_im, mask, prompt, _mode="outpaint", **kw)
        for p in out.params:
            p.update({"outpaint": pads})
        return out


def _feather(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """A small separable Gaussian blur of a (B, 1, h, w) mask (edges replicated)."""
    if sigma <= 0:
        return m
    r = max(1, math.ceil(2 * sigma))
    xs = torch.arange(-r, r + 1, dtype=m.dtype, device=m.device)
    k = torch.exp(-(xs**2) / (2 * sigma**2))
    k = k / k.sum()
    m = F.pad(m, (r, r, r, r), mode="replicate")
    m = F.conv2d(m, k.view(1, 1, 1, -1))
    return F.conv2d(m, k.view(1, 1, -1, 1))
