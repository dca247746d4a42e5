"""Sampling from latent-variable generators: GANs and VAEs (`imagesynth.load(MODEL_DIR)`).

Image i of a call starts from the latent z of seed + i (drawn on the CPU), so it does not
depend on n, the batch or the device. Class-conditional models sample classes round-robin
unless labels are given. `truncation` psi scales z toward its mean (psi = 1: off).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ImagesynthError
from ..io.images import pil_to_tensor, tensor_to_pil
from ..seeding import check_seed
from .diffusion import PipelineOutput, _check_labels, _default_device

UNSUPPORTED = {
    "temperature": "temperature applies to autoregressive families; use truncation (--truncation)",
    "top_k": "top-k applies to autoregressive families",
}


def _check_n(n: int, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ImagesynthError(f"{what} must be a positive integer, got {n!r}")
    return n


class LatentGeneratorPipeline:
    """A GAN generator or a VAE decoder behind one sampling interface."""

    uses_sampler = False  # `sampler` / `steps` mean nothing here (the CLI refuses them)

    def __init__(self, family: str, net: torch.nn.Module, info: dict[str, Any], path: Path | None):
        self.family, self.net, self.info, self.path = family, net.eval(), info, path
        self.num_classes = int(getattr(net, "num_classes", 0))
        self.z_dim = int(net.z_dim)
        names = (info.get("dataset") or {}).get("class_names") or []
        self.class_names = (
            list(names)
            if len(names) == self.num_classes
            else [str(i) for i in range(self.num_classes)]
        )
        self.reconstruction = "l2"
        self.size = int(getattr(net, "size", 0))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> LatentGeneratorPipeline:
        from ..io.model_dir import load_model

        files = load_model(path, allow_pickle=allow_pickle)
        if files.family == "gan":
            from ..models.gan import generator_from_config

            cfg = files.component_config("generator")
            net: torch.nn.Module = generator_from_config(cfg)
            state = files.state_dict("generator")
        elif files.family == "vae":
            from ..models.vae import vae_from_config

            cfg = files.component_config("vae")
            net = vae_from_config(cfg)
            state = files.state_dict("vae")
        else:
            raise ImagesynthError(f"{path} holds a {files.family!r} model, not a gan or vae")
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            msg = str(exc)[:200]
            raise ImagesynthError(f"{path}: weights do not match the config: {msg}") from None
        net.size = cfg["size"]
        pipe = cls(
            files.family, net.float().to(device or _default_device()), files.info, Path(path)
        )
        pipe.reconstruction = cfg.get("reconstruction", "l2")
        return pipe

    @property
    def model_hash(self) -> str | None:
        comps = self.info.get("components") or {}
        first = next(iter(comps.values()), {})
        return str(first.get("sha256", ""))[:10] or None

    # ----- core --------------------------------------------------------------------------
    def _labels(self, class_labels: Sequence[int] | None, n: int) -> list[int] | None:
        labels = _check_labels(class_labels, n, self.num_classes)
        if self.num_classes and labels is None:
            labels = [i % self.num_classes for i in range(n)]
        return labels

    def _decode(self, z: torch.Tensor, labels: list[int] | None) -> torch.Tensor:
        y = None if labels is None else torch.tensor(labels)
        if self.family == "gan":
            from ..models.gan import generate

            return generate(self.net, z, y)
        from ..models.vae import decode_images

        return decode_images(self.net, z, y, self.reconstruction)

    def _params(self, seeds: list[int], labels: list[int] | None, **extra: Any) -> list[dict]:
        out = []
        for i, s in enumerate(seeds):
            p: dict[str, Any] = {
                "prompt": "" if labels is None else f"class {self.class_names[labels[i]]}",
                "seed": s,
                "size": f"{self.size}x{self.size}",
                "sampler": self.family,
                "model_hash": self.model_hash,
                "model": self.path.name if self.path else None,
                "family": self.family,
                **extra,
            }
            if labels is not None:
                p["class_label"] = labels[i]
            out.append(p)
        return out

    def __call__(
        self,
        n: int = 1,
        seed: int = 0,
        sampler: str | None = None,
        steps: int | None = None,
        class_labels: Sequence[int] | None = None,
        guidance_scale: float | None = None,
        save_steps: Sequence[int] | None = None,
        progress: bool = False,
        truncation: float | None = None,
        callback: Callable[[Any], None] | None = None,
        **extra: Any,
    ) -> PipelineOutput:
        """n images; `sampler` / `steps` are ignored (one network pass per image)."""
        from ..models.gan import check_truncation, latents

        for key in extra:
            if key in UNSUPPORTED:
                raise ImagesynthError(f"{self.family} models do not take {key}: {UNSUPPORTED[key]}")
            raise ImagesynthError(f"{self.family} pipeline got an unknown option {key!r}")
        if guidance_scale is not None:
            raise ImagesynthError(
                f"{self.family} models have no classifier-free guidance (--cfg); use --class"
            )
        if save_steps:
            raise ImagesynthError(
                f"{self.family} models generate in one pass: there are no steps to save"
            )
        _check_n(n)
        check_seed(seed)
        psi = 1.0 if truncation is None else check_truncation(truncation)
        labels = self._labels(class_labels, n)
        seeds = [seed + i for i in range(n)]
        x = self._decode(latents(seeds, self.z_dim) * psi, labels)
        extra_params = {"truncation": psi} if truncation is not None else {}
        return PipelineOutput(
            images=tensor_to_pil(x), params=self._params(seeds, labels, **extra_params)
        )

    def interpolate(
        self,
        from_seed: int,
        to_seed: int,
        frames: int = 16,
        class_label: int | None = None,
        truncation: float | None = None,
    ) -> PipelineOutput:
        """`frames` images along the great circle (slerp) between the z of two seeds."""
        from ..models.gan import check_truncation, latents, slerp

        check_seed(from_seed)
        check_seed(to_seed)
        if _check_n(frames, "frames") < 2:
            raise ImagesynthError(f"frames must be >= 2, got {frames}")
        psi = 1.0 if truncation is None else check_truncation(truncation)
        za, zb = latents([from_seed, to_seed], self.z_dim)
        ts = [i / (frames - 1) for i in range(frames)]
        z = torch.stack([slerp(za, zb, t) for t in ts]) * psi
        labels = self._labels(None if class_label is None else [class_label], frames)
        x = self._decode(z, labels)
        params = self._params([from_seed] * frames, labels)
        for p, t in zip(params, ts, strict=True):
            p.update({"interpolate_to_seed": to_seed, "t": round(t, 4), "truncation": psi})
        return PipelineOutput(images=tensor_to_pil(x), params=params)

    def traverse(
        self,
        seed: int = 0,
        dims: Sequence[int] | int = 8,
        span: float = 3.0,
        steps: int = 9,
        class_label: int | None = None,
        image: Image.Image | None = None,
    ) -> Image.Image:
        """A latent-traversal grid: one row per latent dimension, `steps` values in +-span.

        The base z is the seed's (or, for a VAE given `image`, that image's posterior mean).
        `dims`: a list of indices, or a count (a VAE picks its most informative dimensions,
        those whose posterior means vary most over random decodes; a GAN the first ones).
        """
        from ..io.images import make_grid
        from ..models.gan import latents

        check_seed(seed)
        _check_n(steps, "steps")
        if not span > 0:
            raise ImagesynthError(f"span must be > 0, got {span}")
        labels1 = self._labels(None if class_label is None else [class_label], 1)
        if image is not None:
            if self.family != "vae":
                raise ImagesynthError("traversal from an image needs a VAE (it has an encoder)")
            base = self._encode([image], labels1)[0]
        else:
            base = latents([seed], self.z_dim)[0]
        if isinstance(dims, int):
            count = min(_check_n(dims, "dims"), self.z_dim)
            order = self._informative_dims() if self.family == "vae" else list(range(self.z_dim))
            dims = order[:count]
        dims = [int(d) for d in dims]
        bad = [d for d in dims if not 0 <= d < self.z_dim]
        if bad:
            raise ImagesynthError(f"latent dimension {bad[0]} out of range 0..{self.z_dim - 1}")
        values = torch.linspace(-span, span, steps)
        rows = []
        for d in dims:
            z = base.repeat(steps, 1)
            z[:, d] = values
            rows.append(z)
        z = torch.cat(rows)
        labels = None if labels1 is None else labels1 * len(z)
        return make_grid(tensor_to_pil(self._decode(z, labels)), nrow=steps)

    @torch.no_grad()
    def _informative_dims(self) -> list[int]:
        """VAE latent dimensions by the variance of their posterior means over random samples."""
        z = torch.randn(256, self.z_dim, generator=torch.Generator().manual_seed(0))
        labels = self._labels(None, 256)
        x = self._decode(z, labels)
        y = None if labels is None else torch.tensor(labels)
        dev = next(self.net.parameters()).device
        mu, _ = self.net.encode(x.to(dev), None if y is None else y.to(dev))
        return mu.var(0).argsort(descending=True).tolist()

    @torch.no_grad()
    def _encode(self, images: Sequence[Image.Image], labels: list[int] | None) -> torch.Tensor:
        x = self._as_tensor(images)
        dev = next(self.net.parameters()).device
        y = None if labels is None else torch.tensor(labels, device=dev)
        mu, _ = self.net.encode(x.to(dev), y)
        return mu.float().cpu()

    def _as_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        channels = int(self.net.channels)
        out = []
        for im in images:
            if not isinstance(im, Image.Image):
                raise ImagesynthError(f"expected PIL images, got {type(im).__name__}")
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.BICUBIC)
            out.append(pil_to_tensor(im))
        return torch.stack(out)

    def reconstruct(
        self, images: Sequence[Image.Image], class_labels: Sequence[int] | None = None
    ) -> PipelineOutput:
        """VAE reconstructions (decoded posterior means) of PIL images, resized to the model."""
        if self.family != "vae":
            raise ImagesynthError(
                f"reconstruct needs a VAE (it has an encoder), not a {self.family}"
            )
        images = list(images)
        if not images:
            raise ImagesynthError("reconstruct needs at least one image")
        labels = _check_labels(class_labels, len(images), self.num_classes)
        if self.num_classes and labels is None:
            raise ImagesynthError("this VAE is class-conditional: give class_labels")
        z = self._encode(images, labels)
        x = self._decode(z, labels)
        params = self._params([0] * len(images), labels)
        for p in params:
            p["prompt"] = "reconstruction"
        return PipelineOutput(images=tensor_to_pil(x), params=params)


def strip_columns(frames: int) -> int:
    """Images per row of an interpolation strip (one row up to 16 frames)."""
    return frames if frames <= 16 else math.ceil(math.sqrt(frames))
