"""A GPT-style transformer prior over a trained VQ-VAE's token grid (van den Oord et al. 2017
sec. 4; Esser et al. 2021 "Taming Transformers" use the same recipe at scale).

Tokens are read in raster order; the sequence starts with a class start token (one per
class, or a single one for unconditional models), so p(tokens | class) = prod_t
p(token_t | class, tokens_<t). Attention is `scaled_dot_product_attention(is_causal=True)`
in training (no attention matrix is built here); sampling keeps a key/value cache and feeds
one token per step, so generating T tokens costs T small steps, not T full passes.
The VQ-VAE's codes of every training image are computed once in `prepare()`; the
trainer's random flips are ignored (codes of the unflipped images are used).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ImagesynthError
from ..training.family import DataInfo, Family, Phase
from .pixelcnn import check_sampling_args, sample_logits, uniforms

SAMPLE_BATCH = 256


@dataclass
class GPTConfig:
    """Network shape (saved as the model's transformer/config.json)."""

    vocab: int = 256  # VQ-VAE codebook size
    tokens: int = 16  # grid h * w
    num_classes: int = 0
    dim: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0

    @property
    def starts(self) -> int:
        return max(1, self.num_classes)


class KVCache:
    """Keys and values of the tokens fed so far, per layer: (B, nh, t, hs)."""

    def __init__(self, layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        # (B, nh, T, hs)
        if cache is not None:
            if cache.k[layer] is not None:
                k = torch.cat([cache.k[layer], k], 2)
                v = torch.cat([cache.v[layer], v], 2)
            cache.k[layer], cache.v[layer] = k, v
        # one new query attends to every cached key: no mask; a full sequence: causal mask
        causal = k.shape[2] == t and t > 1
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, 4 * cfg.dim),
            nn.GELU(),
            nn.Linear(4 * cfg.dim, cfg.dim),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class TokenTransformer(nn.Module):
    """Decoder-only transformer: logits of token t from the start token and tokens < t."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads:
            raise ImagesynthError(f"dim {cfg.dim} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab + cfg.starts, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.pos, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def start_tokens(self, labels: torch.Tensor | None, b: int, device: Any) -> torch.Tensor:
        if labels is None:
            return torch.full((b,), self.cfg.vocab, dtype=torch.long, device=device)
        return labels.to(device) + self.cfg.vocab

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, T) -> logits (B, T, vocab) predicting codes[:, t] from codes[:, :t]."""
        b, t = codes.shape
        inp = torch.cat([self.start_tokens(labels, b, codes.device)[:, None], codes[:, :-1]], 1)
        x = self.drop(self.tok(inp) + self.pos[:, :t])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def step(self, token: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        """Feed one token (B,) at position `pos` (0 = the start token); logits (B, vocab)."""
        x = self.tok(token)[:, None] + self.pos[:, pos : pos + 1]
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.head(self.ln_f(x))[:, 0]


@torch.no_grad()
def sample_tokens(
    net: TokenTransformer,
    labels: torch.Tensor | None,
    u: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    on_token: Callable[[], None] | None = None,
    keep_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes (B, T) drawn with uniforms u (B, T), using the key/value cache."""
    cfg = net.cfg
    dev = next(net.parameters()).device
    b = u.shape[0]
    cache = KVCache(cfg.layers)
    token = net.start_tokens(labels, b, dev)
    out = torch.zeros(b, cfg.tokens, dtype=torch.long, device=dev)
    kept = torch.zeros(b, cfg.tokens, cfg.vocab) if keep_logits else None
    u = u.to(dev)
    for t in range(cfg.tokens):
        logits = net.step(token, t, cache)
        if kept is not None:
            kept[:, t] = logits.float().cpu()
        token = sample_logits(logits, u[:, t], temperature, top_k)
        out[:, t] = token
        if on_token is not None:
            on_token()
    return out, kept


def generate(
    net: nn.Module,
    vqvae: nn.Module,
    *,
    n: int,
    seed: int,
    labels: list[int] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """n images (n, C, H, W) in [-1, 1]: tokens from the prior, pixels from the VQ-VAE."""
    from tqdm.auto import tqdm

    net = getattr(net, "module", net)
    cfg: GPTConfig = net.cfg
    check_sampling_args(temperature, top_k, cfg.vocab)
    grid = math.isqrt(cfg.tokens)
    was_training = net.training
    net.eval()
    bar = tqdm(total=n * cfg.tokens, desc="transformer", unit="tok", disable=not progress or None)
    outs = []
    try:
        for start in range(0, n, SAMPLE_BATCH):
            b = min(SAMPLE_BATCH, n - start)
            u = uniforms([seed + start + i for i in range(b)], cfg.tokens)
            y = torch.tensor(labels[start : start + b]) if labels is not None else None
            codes, _ = sample_tokens(
                net, y, u, temperature=temperature, top_k=top_k, on_token=lambda b=b: bar.update(b)
            )
            dev = next(vqvae.parameters()).device
            with torch.no_grad():
                x = vqvae.decode_codes(codes.view(b, grid, grid).to(dev)).clamp(-1, 1)
            outs.append(x.float().cpu())
    finally:
        bar.close()
        net.train(was_training)
    return torch.cat(outs)


@torch.no_grad()
def interpolate(
    net: nn.Module,
    vqvae: nn.Module,
    *,
    from_seed: int,
    to_seed: int,
    frames: int,
    label: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """`frames` images (frames, C, H, W) in [-1, 1] between the samples of two seeds.

    The prior has no continuous latent, so the path runs through the VQ-VAE's: the two
    samples' quantized latents z_q = e[codes] (B, D, h, w), the decoder's input, are blended
    linearly, (1 - t) z_q(a) + t z_q(b), and each blend is decoded. The end frames are the
    two samples exactly (the images `sample` gives for those seeds and class).
    """
    net = getattr(net, "module", net)
    cfg: GPTConfig = net.cfg
    check_sampling_args(temperature, top_k, cfg.vocab)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ImagesynthError(f"frames must be an integer >= 2, got {frames!r}")
    if cfg.num_classes and label is None:
        raise ImagesynthError("this transformer prior is class-conditional: give a class")
    if label is not None and not (cfg.num_classes and 0 <= label < cfg.num_classes):
        top = f"0..{cfg.num_classes - 1}" if cfg.num_classes else "none (unconditional model)"
        raise ImagesynthError(f"class index {label} out of range; expected {top}")
    grid = math.isqrt(cfg.tokens)
    was_training = net.training
    net.eval()
    try:
        y = None if label is None else torch.tensor([label, label])
        codes, _ = sample_tokens(
            net, y, uniforms([from_seed, to_seed], cfg.tokens), temperature=temperature,
            top_k=top_k,
        )  # fmt: skip
    finally:
        net.train(was_training)
    dev = next(vqvae.parameters()).device
    z = F.embedding(codes.view(2, grid, grid).to(dev), vqvae.quantizer.embed)  # (2, h, w, D)
    z = z.permute(0, 3, 1, 2)  # (2, D, h, w)
    t = torch.linspace(0, 1, frames, device=dev).view(-1, 1, 1, 1)
    blend = (1 - t) * z[:1] + t * z[1:]  # (frames, D, h, w)
    return vqvae.decoder(blend).clamp(-1, 1).float().cpu()


# ----- the family ----------------------------------------------------------------------------
@dataclass
class TransformerOptions:
    """Family options (saved in the model's config.json)."""

    vqvae: str = ""  # model directory of a trained VQ-VAE (required)
    dim: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.1
    sample_temperature: float = 1.0
    sample_top_k: int | None = None

    def validate(self) -> TransformerOptions:
        if not self.vqvae:
            raise ImagesynthError(
                "the transformer prior needs a trained VQ-VAE: --vqvae MODEL_DIR "
                "(train one with `imagesynth train vqvae`)"
            )
        for name in ("dim", "layers", "heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ImagesynthError(f"{name} must be a positive integer, got {v!r}")
        if self.dim % self.heads:
            raise ImagesynthError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not 0 <= self.dropout < 1:
            raise ImagesynthError(f"dropout must be in [0, 1), got {self.dropout}")
        return self


class TransformerFamily(Family):
    """Trains the token prior on the frozen VQ-VAE's codes of the training images."""

    name = "transformer"
    ema_nets = ("transformer",)

    def __init__(self, opts: TransformerOptions, data: DataInfo) -> None:
        super().__init__()
        from ..api import resolve_model_dir
        from .vqvae import load_vqvae

        self.opts, self.data = opts.validate(), data
        self.vqvae, files = load_vqvae(resolve_model_dir(opts.vqvae))
        self.vqvae_files = files
        vcfg = self.vqvae.cfg
        if vcfg.channels != data.channels or vcfg.size != data.size:
            raise ImagesynthError(
                f"the VQ-VAE was trained on {vcfg.channels}-channel {vcfg.size} px images; the "
                f"data is {data.channels}-channel {data.size} px: use --size {vcfg.size}"
            )
        check_sampling_args(opts.sample_temperature, opts.sample_top_k, vcfg.codebook_size)
        self.net_cfg = GPTConfig(
            vocab=vcfg.codebook_size,
            tokens=vcfg.grid * vcfg.grid,
            num_classes=data.num_classes,
            dim=opts.dim,
            layers=opts.layers,
            heads=opts.heads,
            dropout=opts.dropout,
        )
        self.nets["transformer"] = TokenTransformer(self.net_cfg)
        self.codes: torch.Tensor | None = None  # (N, T) codes of the training images

    def config(self) -> dict[str, Any]:
        return {
            "options": dataclasses.asdict(self.opts),
            "transformer": dataclasses.asdict(self.net_cfg),
            "vqvae": dataclasses.asdict(self.vqvae.cfg),
            "data": dataclasses.asdict(self.data),
        }

    @torch.no_grad()
    def prepare(self, data: Any, device: torch.device) -> None:
        """Encode every training image to its token grid once."""
        from tqdm.auto import tqdm

        self.vqvae.to(device)
        parts = []
        for chunk in tqdm(data.images.split(256), desc="encode tokens", unit="batch", disable=None):
            x = chunk.to(device, torch.float32).div(127.5).sub(1)
            parts.append(self.vqvae.encode_codes(x).flatten(1).cpu())
        self.codes = torch.cat(parts)
        self.vqvae.to("cpu")

    def phases(self) -> list[Phase]:
        return [Phase("nll", ["transformer"], self.loss)]

    def loss(
        self, nets: dict[str, nn.Module], batch: dict[str, Any], gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.codes is None:
            raise ImagesynthError("prepare() must run before training")
        dev = batch["images"].device
        codes = self.codes[batch["index"]].to(dev)
        labels = batch.get("labels") if self.net_cfg.num_classes else None
        logits = nets["transformer"](codes, labels)
        nll = F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())
        return nll, {"bits_per_token": float(nll.detach()) / math.log(2)}

    def sample(self, nets: dict[str, nn.Module], n: int, seed: int) -> torch.Tensor:
        k = self.data.num_classes
        dev = next(nets["transformer"].parameters()).device
        self.vqvae.to(dev)
        try:
            return generate(
                nets["transformer"],
                self.vqvae,
                n=n,
                seed=seed,
                labels=[i % k for i in range(n)] if k else None,
                temperature=self.opts.sample_temperature,
                top_k=self.opts.sample_top_k,
            )
        finally:
            self.vqvae.to("cpu")

    def sample_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": self.opts.sample_temperature,
            "top_k": self.opts.sample_top_k,
        }
        if self.data.num_classes:
            params["class_labels"] = "i % num_classes"
        return params

    def save(self, path: Path, nets: dict[str, nn.Module], record: dict[str, Any]) -> Path:
        """A self-contained model dir: transformer/ and a copy of the VQ-VAE in vqvae/."""
        from ..io.model_dir import Component, save_model

        net = getattr(nets["transformer"], "module", nets["transformer"])
        return save_model(
            path,
            {
                "transformer": Component(dataclasses.asdict(self.net_cfg), net.state_dict()),
                "vqvae": Component(dataclasses.asdict(self.vqvae.cfg), self.vqvae.state_dict()),
            },
            family="transformer",
            config=self.config(),
            dataset=record.get("dataset"),
            recipe={**(record.get("recipe") or {}), "vqvae_source": str(self.opts.vqvae)},
            metrics=record.get("metrics"),
        )


def load_transformer(files: Any) -> TokenTransformer:
    """The prior of an opened transformer model directory."""
    net = TokenTransformer(GPTConfig(**files.component_config("transformer")))
    net.load_state_dict({k: v.float() for k, v in files.state_dict("transformer").items()})
    return net.eval().requires_grad_(False)
