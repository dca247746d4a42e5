"""Sampling from autoregressive models: gated PixelCNN, VQ-VAE (reconstruction only) and the
transformer prior over VQ-VAE tokens. Same call contract as `DiffusionPipeline`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import ImagesynthError
from ..io.images import pil_to_array, tensor_to_pil
from ..seeding import check_seed
from .diffusion import PipelineOutput, _check_labels, _default_device

# options of other families that `imagesynth sample` may pass through
_FOREIGN = {"truncation": "truncation applies to GANs"}


def _open(path: str | Path, family: str, allow_pickle: bool) -> Any:
    from ..io.model_dir import load_model

    files = load_model(path, allow_pickle=allow_pickle)
    if files.family != family:
        raise ImagesynthError(f"{path} holds a {files.family!r} model, not a {family} model")
    return files


def _check_common(
    n: int, seed: int, guidance_scale: float | None, save_steps: Any, extra: dict[str, Any]
) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ImagesynthError(f"n must be a positive integer, got {n!r}")
    check_seed(seed)
    if guidance_scale is not None:
        raise ImagesynthError(
            "classifier-free guidance (--cfg) is for diffusion models; autoregressive models "
            "take --temperature and --top-k"
        )
    if save_steps:
        raise ImagesynthError("--save-steps shows denoising steps; autoregressive models have none")
    for key in extra:
        why = _FOREIGN.get(key, "it is not an option of autoregressive models")
        raise ImagesynthError(f"option {key!r} is not supported here: {why}")


def _images_uint8(images: Any, channels: int) -> torch.Tensor:
    """PIL images or a uint8 / [-1, 1] float tensor -> uint8 (B, C, H, W)."""
    if isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images[None]
        if x.dtype != torch.uint8:
            x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x
    if isinstance(images, Image.Image):
        images = [images]
    mode = "L" if channels == 1 else "RGB"
    arrs = [torch.from_numpy(pil_to_array(im.convert(mode)).copy()) for im in images]
    return torch.stack(arrs).permute(0, 3, 1, 2)


class _ARPipeline:
    """Shared parts: class labels, per-image params, model hash."""

    family = ""
    main_component = ""

    def __init__(self, info: dict[str, Any], path: Path | None, num_classes: int, size: int):
        self.info, self.path, self.num_classes, self.size = info, path, num_classes, size
        self.class_names = (info.get("dataset") or {}).get("class_names") or [
            str(i) for i in range(num_classes)
        ]

    @property
    def model_hash(self) -> str | None:
        comp = (self.info.get("components") or {}).get(self.main_component) or {}
        return str(comp.get("sha256", ""))[:10] or None

    def _labels(self, class_labels: Sequence[int] | None, n: int) -> list[int] | None:
        labels = _check_labels(class_labels, n, self.num_classes)
        if self.num_classes and labels is None:  # no class asked: round-robin
            labels = [i % self.num_classes for i in range(n)]
        return labels

    def _params(
        self, n: int, seed: int, labels: list[int] | None, temperature: float, top_k: int | None
    ) -> list[dict[str, Any]]:
        out = []
        for i in range(n):
            p: dict[str, Any] = {
                "prompt": "" if labels is None else f"class {self.class_names[labels[i]]}",
                "sampler": f"{self.family} ancestral",
                "temperature": temperature,
                "top_k": top_k,
                "seed": seed + i,
                "size": f"{self.size}x{self.size}",
                "model_hash": self.model_hash,
                "model": self.path.name if self.path else None,
                "family": self.family,
            }
            if labels is not None:
                p["class_label"] = labels[i]
            out.append(p)
        return out


class PixelCNNPipeline(_ARPipeline):
    """`imagesynth.load(MODEL_DIR)` for a gated PixelCNN: generates pixel by pixel."""

    family = "pixelcnn"
    main_component = "pixelcnn"

    def __init__(self, net: torch.nn.Module, info: dict[str, Any], path: Path | None = None):
        super().__init__(info, path, net.cfg.num_classes, net.cfg.size)
        self.net = net.eval()
        self.levels, self.channels = net.cfg.levels, net.cfg.channels

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> PixelCNNPipeline:
        from ..models.pixelcnn import load_pixelcnn

        files = _open(path, "pixelcnn", allow_pickle)
        net = load_pixelcnn(files).to(device or _default_device())
        return cls(net, files.info, Path(path))

    def __call__(
        self,
        n: int = 1,
        seed: int = 0,
        sampler: str | None = None,  # accepted and ignored (one way to sample)
        steps: int | None = None,  # accepted and ignored (one step per pixel)
        class_labels: Sequence[int] | None = None,
        guidance_scale: float | None = None,
        save_steps: Sequence[int] | None = None,
        progress: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        **extra: Any,
    ) -> PipelineOutput:
        """n images, one pixel at a time; image i uses the random numbers of seed + i."""
        from ..models.pixelcnn import generate

        _check_common(n, seed, guidance_scale, save_steps, extra)
        labels = self._labels(class_labels, n)
        x = generate(
            self.net, n=n, seed=seed, labels=labels, temperature=temperature, top_k=top_k,
            progress=progress,
        )  # fmt: skip
        params = self._params(n, seed, labels, temperature, top_k)
        for p in params:
            p["levels"] = self.levels
        return PipelineOutput(images=tensor_to_pil(x), params=params, steps_x0=None)

    @torch.no_grad()
    def bits_per_dim(self, images: Any, class_labels: Sequence[int] | None = None) -> torch.Tensor:
        """Per-image NLL in bits per dimension; images must be on the model's level grid."""
        from ..models.pixelcnn import bits_per_dim, check_levels

        x = _images_uint8(images, self.channels)
        if tuple(x.shape[1:]) != (self.channels, self.size, self.size):
            raise ImagesynthError(
                f"images are {tuple(x.shape[1:])}; this PixelCNN takes "
                f"({self.channels}, {self.size}, {self.size})"
            )
        check_levels(x, self.levels)
        labels = _check_labels(class_labels, x.shape[0], self.num_classes)
        if self.num_classes and labels is None:
            raise ImagesynthError("this PixelCNN is class-conditional: give class_labels")
        dev = next(self.net.parameters()).device
        y = torch.tensor(labels, device=dev) if labels is not None else None
        return bits_per_dim(self.net, x.to(dev), y).cpu()


class VQVAEPipeline(_ARPipeline):
    """A VQ-VAE model directory: encodes and reconstructs; it does not generate alone."""

    family = "vqvae"
    main_component = "vqvae"

    def __init__(self, net: torch.nn.Module, info: dict[str, Any], path: Path | None = None):
        super().__init__(info, path, 0, net.cfg.size)
        self.net = net.eval()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> VQVAEPipeline:
        from ..models.vqvae import load_vqvae

        _open(path, "vqvae", allow_pickle)
        net, files = load_vqvae(path, allow_pickle)
        return cls(net.to(device or _default_device()), files.info, Path(path))

    def __call__(self, *args: Any, **kwargs: Any) -> PipelineOutput:
        where = self.path or "MODEL_DIR"
        raise ImagesynthError(
            f"{where} is a VQ-VAE: it reconstructs images but does not sample them alone; "
            f"train a transformer prior on it: imagesynth train transformer --vqvae {where} "
            "--data ..."
        )

    @torch.no_grad()
    def encode(self, images: Any) -> torch.Tensor:
        """Token grids (B, h, w) of PIL images or image tensors."""
        x = _images_uint8(images, self.net.cfg.channels)
        cfg = self.net.cfg
        if tuple(x.shape[1:]) != (cfg.channels, cfg.size, cfg.size):
            raise ImagesynthError(
                f"images are {tuple(x.shape[1:])}; this VQ-VAE takes "
                f"({cfg.channels}, {cfg.size}, {cfg.size})"
            )
        dev = next(self.net.parameters()).device
        return self.net.encode_codes(x.to(dev).float().div(127.5).sub(1)).cpu()

    @torch.no_grad()
    def reconstruct(self, images: Any) -> list[Image.Image]:
        """Encode to tokens and decode back (PIL in, PIL out)."""
        codes = self.encode(images)
        dev = next(self.net.parameters()).device
        return tensor_to_pil(self.net.decode_codes(codes.to(dev)).clamp(-1, 1).cpu())


class TransformerPipeline(_ARPipeline):
    """A transformer prior over VQ-VAE tokens: samples tokens, decodes them to pixels."""

    family = "transformer"
    main_component = "transformer"

    def __init__(
        self,
        net: torch.nn.Module,
        vqvae: torch.nn.Module,
        info: dict[str, Any],
        path: Path | None = None,
    ) -> None:
        super().__init__(info, path, net.cfg.num_classes, vqvae.cfg.size)
        self.net, self.vqvae = net.eval(), vqvae.eval()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | None = None, allow_pickle: bool = False
    ) -> TransformerPipeline:
        from ..models.token_transformer import load_transformer
        from ..models.vqvae import load_vqvae

        files = _open(path, "transformer", allow_pickle)
        vqvae, _ = load_vqvae(path, allow_pickle)
        dev = device or _default_device()
        return cls(load_transformer(files).to(dev), vqvae.to(dev), files.info, Path(path))

    def __call__(
        self,
        n: int = 1,
        seed: int = 0,
        sampler: str | None = None,  # accepted and ignored
        steps: int | None = None,  # accepted and ignored (one step per token)
        class_labels: Sequence[int] | None = None,
        guidance_scale: float | None = None,
        save_steps: Sequence[int] | None = None,
        progress: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        **extra: Any,
    ) -> PipelineOutput:
        """n images, one token at a time (KV cache); image i uses seed + i."""
        from ..models.token_transformer import generate

        _check_common(n, seed, guidance_scale, save_steps, extra)
        labels = self._labels(class_labels, n)
        x = generate(
            self.net, self.vqvae, n=n, seed=seed, labels=labels, temperature=temperature,
            top_k=top_k, progress=progress,
        )  # fmt: skip
        params = self._params(n, seed, labels, temperature, top_k)
        return PipelineOutput(images=tensor_to_pil(x), params=params, steps_x0=None)
