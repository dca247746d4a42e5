"""Feature extractors for set metrics: `domain:NAME`, `inception:PATH` and `random`.

An `Extractor` turns uint8 images (N, C, H, W) into penultimate features (N, D) for FID,
KID and precision / recall, and logits (N, K) for the Inception Score and class accuracy.
Images are first converted to the extractor's channels (gray replicated to RGB; RGB to
ITU-R 601 luma) and resized to its input size with the filter its protocol records.

- `domain:NAME`: a small CNN (`DomainNet`, ~200 k parameters) trained on a real dataset by
  `train_domain_extractor` and cached as a model directory with its held-out accuracy.
  Its numbers compare with other `domain:NAME` numbers of the same weights only.
- `inception:PATH`: the FID Inception-v3 (`inception.py`) from a local weights file; numbers
  comparable with papers when the file is pytorch-fid's.
- `random`: a fixed randomly initialised DomainNet, for smoke tests only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError, ImagesynthError, ModelFileError

log = logging.getLogger("imagesynth")

EXTRACTOR_FAMILY = "extractor"
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as Pillow's convert("L")
# dataset -> training recipe of its domain extractor
DOMAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"size": 16, "label_mode": None, "n_train": None, "n_test": None, "epochs": 12},
    "shapes": {
        "size": 32,
        "label_mode": "color_shape",
        "n_train": 6000,
        "n_test": 1000,
        "epochs": 8,
    },
    "folder": {"size": 32, "label_mode": None, "n_train": None, "n_test": None, "epochs": 20},
}


def cache_dir() -> Path:
    """$IMAGESYNTH_CACHE or ~/.cache/imagesynth (as `estimator.devices.cache_dir`)."""
    env = os.environ.get("IMAGESYNTH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imagesynth"


class DomainNet(nn.Module):
    """A small CNN classifier; its 256-d penultimate layer is the feature space.

    (B, C, S, S) in [-1, 1] -> conv 32 | pool | conv 64, 64 | pool | conv 128 | global average
    -> fc 256 (features) -> fc K (logits); ~165 k parameters, ~15 s per 10,000 32 px images
    on 2 CPU cores. Fully convolutional up to the pool, so the
    perceptual distance (`lpips.DomainPerceptual`) works at any size.
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.block1 = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(),
        )  # fmt: skip
        self.block3 = nn.Sequential(
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU()
        )
        self.fc = nn.Linear(4 * w, 256)
        self.head = nn.Linear(256, num_classes)
        self.num_features = 256

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ReLU outputs of the three conv blocks: (B, w, S), (B, 2w, S/2), (B, 4w, S/4)."""
        h1 = self.block1(x)
        h2 = self.block2(F.max_pool2d(h1, 2))
        h3 = self.block3(F.max_pool2d(h2, 2))
        return [h1, h2, h3]

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.feature_maps(x)[-1].mean((2, 3))  # (B, 4w)
        feats = F.relu(self.fc(h))  # (B, 256)
        return feats, self.head(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_both(x)[1]


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) float -> `channels` channels: gray replicated, RGB to ITU-R 601 luma."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and channels == 1:
        w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)
    raise ImagesynthError(f"cannot convert {c}-channel images to {channels} channels")


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in 0..255 -> float32 in [-1, 1]; float input is passed through."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    return images.float()


@dataclass
class Extractor:
    """A feature network plus the preprocessing that belongs to its protocol."""

    spec: str  # "domain:digits-16", "inception", "random"
    net: nn.Module  # has forward_both(x) -> (features, logits)
    sha256: str  # of the weights file (or of the tensors, for `random`)
    channels: int  # input channels the network takes
    input_size: int | None  # images are resized to this (None: used as they come)
    resize: str  # resize filter, e.g. "bilinear-antialias"
    num_features: int
    class_names: list[str] = field(default_factory=list)
    accuracy: float | None = None  # held-out real accuracy (domain extractors)
    data: dict[str, Any] | None = None  # what a domain extractor was trained on
    path: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def protocol(self) -> dict[str, Any]:
        return {
            "extractor": self.spec,
            "extractor_sha256": self.sha256,
            "feature_dim": self.num_features,
            "extractor_channels": self.channels,
            "resize_filter": self.resize if self.input_size else "none",
            "resize_size": self.input_size,
        }

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [-1, 1] images -> the network's input (channels, size, range)."""
        x = convert_channels(to_float(images), self.channels)
        size = self.input_size
        if size and tuple(x.shape[-2:]) != (size, size):
            antialias = self.resize.endswith("antialias")
            x = F.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias
            )
        return x

    @torch.no_grad()
    def extract(
        self, images: torch.Tensor, batch: int = 250, progress: bool = False, desc: str = "features"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, D) and logits (N, K) as float32 numpy, in batches."""
        self.net.eval().to(memory_format=torch.channels_last)
        device = next(self.net.parameters()).device
        feats, logits = [], []
        for i in tqdm(
            range(0, len(images), batch), desc=desc, unit="batch", disable=not progress or None
        ):
            x = self.prepare(images[i : i + batch]).to(device)
            x = x.contiguous(memory_format=torch.channels_last)  # ~2x faster convs on CPU
            f, lg = self.net.forward_both(x)
            feats.append(f.float().cpu())
            logits.append(lg.float().cpu())
        if not feats:
            raise ImagesynthError("no images to extract features from")
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()


# ---------------------------------------------------------------------------- domain


def domain_name(data: str, size: int | None = None, label_mode: str | None = None) -> str:
    """Cache name of a domain extractor: `digits-16`, `shapes-32`, `shapes_shape-32`."""
    from ..data.base import parse_data_spec

    kind, path = parse_data_spec(data)
    defaults = DOMAIN_DEFAULTS.get(kind)
    if defaults is None:
        raise ImagesynthError(
            f"no domain extractor recipe for dataset {kind!r}; expected one of: "
            f"{', '.join(DOMAIN_DEFAULTS)}"
        )
    base = kind
    if path is not None:
        digest = hashlib.sha256(str(Path(path).expanduser().resolve()).encode()).hexdigest()
        base = f"folder{digest[:8]}"
    if label_mode and label_mode != defaults["label_mode"]:
        base += f"_{label_mode}"
    return f"{base}-{size or defaults['size']}"


def domain_dir(name: str) -> Path:
    return cache_dir() / "extractors" / name


def _labelled_tensors(ds: Any, n: int | None, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from ..training.data import load_tensor_data

    if n is not None and hasattr(ds, "length"):
        ds.length = n  # shapes: render only what is used
    data = load_tensor_data(ds, progress=progress)
    if data.labels is None or ds.num_classes < 2:
        raise DataError(
            f"dataset {ds.name!r} has {ds.num_classes} class(es); a domain extractor needs "
            "labelled data with at least 2 classes (use --extractor random or inception:PATH)"
        )
    keep = data.labels >= 0
    return data.images[keep], data.labels[keep]


def train_domain_extractor(
    data: str = "digits",
    *,
    size: int | None = None,
    label_mode: str | None = None,
    epochs: int | None = None,
    n_train: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Train `DomainNet` on a dataset's train split; save it (with test accuracy) as a model dir.

    Cached: an existing directory is reused unless `force`. Returns its path.
    """
    from ..data import get_dataset
    from ..data.base import parse_data_spec
    from ..io.model_dir import Component, save_model

    kind, _ = parse_data_spec(data)
    defaults = DOMAIN_DEFAULTS.get(kind)
    if defaults is None:
        raise ImagesynthError(
            f"no domain extractor recipe for dataset {kind!r}; expected one of: "
            f"{', '.join(DOMAIN_DEFAULTS)}"
        )
    size = size or defaults["size"]
    label_mode = label_mode or defaults["label_mode"]
    epochs = epochs or defaults["epochs"]
    n_train = n_train or defaults["n_train"]
    path = Path(out) if out else domain_dir(domain_name(data, size, label_mode))
    if (path / "imagesynth.json").is_file() and not force:
        return path
    opts: dict[str, Any] = {"size": size}
    if label_mode:
        opts["label_mode"] = label_mode
    train_ds = get_dataset(data, split="train", **opts)
    test_ds = get_dataset(data, split="test", **opts)
    t0 = time.perf_counter()
    x, y = _labelled_tensors(train_ds, n_train, progress)
    xt, yt = _labelled_tensors(test_ds, defaults["n_test"], progress)
    channels, k = x.shape[1], train_ds.num_classes
    batch = 64
    net = fit_classifier(x, y, k, epochs=epochs, seed=seed, progress=progress, desc=path.name)
    net.eval()
    acc_test = _accuracy(net, xt, yt)
    acc_train = _accuracy(net, x, y)
    log.info("domain extractor %s: held-out accuracy %.4f", path.name, acc_test)
    config = {
        "arch": "domain-cnn",
        "channels": channels,
        "num_classes": k,
        "width": 32,
        "input_size": size,
        "class_names": list(train_ds.class_names),
    }
    save_model(
        path,
        Component(config, net.state_dict()),
        family=EXTRACTOR_FAMILY,
        dataset={**train_ds.describe(), "spec": data, "n_train": len(x), "n_test": len(xt)},
        recipe={"epochs": epochs, "batch": batch, "lr": 4e-3, "seed": seed, "shift_px": 1},
        metrics={
            "test_accuracy": acc_test,
            "train_accuracy": acc_train,
            "train_seconds": round(time.perf_counter() - t0, 2),
        },
    )
    return path


def fit_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch: int = 64,
    progress: bool = True,
    desc: str = "classifier",
) -> DomainNet:
    """Train a DomainNet on uint8 images (N, C, H, W) and labels: Adam, one-cycle LR, +-1 px shifts.

    Give `epochs` or a fixed number of `steps` (equal updates for every training set).
    """
    if len(x) < 2 or len(x) != len(y):
        raise DataError(
            f"a classifier needs >= 2 labelled images, got {len(x)} images / {len(y)} labels"
        )
    torch.manual_seed(seed)
    net = DomainNet(x.shape[1], num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch, len(x))
    per_epoch = max(1, len(x) // batch)
    total = steps if steps is not None else (epochs or 10) * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=total, pct_start=0.2)
    bar = tqdm(total=total, desc=f"train {desc}", disable=not progress or None)
    net.train()
    done = 0
    while done < total:
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, per_epoch * batch, batch):
            if done == total:
                break
            idx = perm[i : i + batch]
            xb = to_float(x[idx])
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()  # +-1 px shifts
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return net.eval()


@torch.no_grad()
def accuracy(net: DomainNet, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of a classifier on uint8 images."""
    return _accuracy(net, x, y)


@torch.no_grad()
def _accuracy(net: DomainNet, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = torch.cat([net(to_float(x[i : i + 500])) for i in range(0, len(x), 500)])
    return float((logits.argmax(1) == y).float().mean())


def load_domain_extractor(path: str | os.PathLike, spec: str | None = None) -> Extractor:
    """A domain extractor from its model directory, checking the weights' recorded sha256."""
    from ..io.model_dir import load_model, load_weights, sha256_file

    path = Path(path)
    files = load_model(path)
    if files.family != EXTRACTOR_FAMILY:
        raise ModelFileError(f"{path} holds a {files.family!r} model, not a feature extractor")
    entry = files.info["components"][""]
    weights, expected = path / entry["weights"], entry.get("sha256")
    hint = "retrain it with `imagesynth eval train-extractor --force`"
    if not weights.is_file():
        raise ModelFileError(
            f"extractor weights {weights} are missing (expected sha256 {expected}); {hint}"
        )
    actual = sha256_file(weights)
    if expected and actual != expected:
        raise ModelFileError(
            f"extractor weights {weights} have sha256 {actual[:16]}..., expected {expected} "
            f"(recorded in imagesynth.json): the file is corrupt or was replaced; {hint}"
        )
    cfg = files.config
    net = DomainNet(cfg["channels"], cfg["num_classes"], cfg.get("width", 32))
    try:
        net.load_state_dict(load_weights(weights))
    except RuntimeError as exc:
        raise ModelFileError(f"{weights} does not fit its config.json: {str(exc)[:200]}") from None
    name = path.name if spec is None else spec.partition(":")[2]
    return Extractor(
        spec=f"domain:{name}",
        net=net.eval(),
        sha256=actual,
        channels=cfg["channels"],
        input_size=cfg["input_size"],
        resize="bilinear-antialias",
        num_features=net.num_features,
        class_names=list(cfg["class_names"]),
        accuracy=files.info.get("metrics", {}).get("test_accuracy"),
        data=files.info.get("dataset"),
        path=path,
    )


_DOMAIN_RE = re.compile(r"(?P<data>[a-z]+)(?:_(?P<mode>[a-z_]+?))?(?:-(?P<size>\d+))?")


def resolve_domain(name: str, *, train: bool = True, progress: bool = True) -> Path:
    """`digits`, `digits-16`, `shapes_shape-32`, `folder:PATH` or a model dir -> its directory."""
    as_path = Path(name).expanduser()
    if (as_path / "imagesynth.json").is_file():
        return as_path
    if name.startswith("folder:"):
        data, size, mode = name, None, None
    else:
        m = _DOMAIN_RE.fullmatch(name)
        if not m or m["data"] not in DOMAIN_DEFAULTS or m["data"] == "folder":
            raise ImagesynthError(
                f"unknown domain extractor {name!r}; expected digits, shapes, "
                "folder:PATH (optionally NAME-SIZE, e.g. digits-16) or a model directory"
            )
        data, mode = m["data"], m["mode"]
        size = int(m["size"]) if m["size"] else None
    path = domain_dir(domain_name(data, size, mode))
    if (path / "imagesynth.json").is_file():
        return path
    if not train:
        raise ModelFileError(
            f"domain extractor {name!r} is not trained yet (looked in {path}); run "
            f"`imagesynth eval train-extractor --data {data}`"
        )
    log.info("training the domain extractor %s once (cached in %s)", name, path)
    return train_domain_extractor(data, size=size, label_mode=mode, progress=progress)


def random_extractor(channels: int = 3, seed: int = 0) -> Extractor:
    """A fixed random DomainNet: features for smoke tests, comparable with nothing else."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = DomainNet(channels, 10).eval()
    torch.random.set_rng_state(gen_state)
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return Extractor(
        spec="random",
        net=net,
        sha256=h.hexdigest(),
        channels=channels,
        input_size=None,
        resize="none",
        num_features=net.num_features,
        class_names=[],
    )


def inception_extractor(path: str | os.PathLike, expected_sha256: str | None = None) -> Extractor:
    from .inception import INPUT_SIZE, NUM_FEATURES, NUM_LOGITS, load_fid_inception

    net, digest = load_fid_inception(path, expected_sha256)
    return Extractor(
        spec="inception",
        net=net,
        sha256=digest,
        channels=3,
        input_size=INPUT_SIZE,
        resize="bilinear",  # pytorch-fid: F.interpolate(bilinear, align_corners=False)
        num_features=NUM_FEATURES,
        class_names=[str(i) for i in range(NUM_LOGITS)],
        path=Path(path),
    )


def load_extractor(
    spec: str,
    *,
    train: bool = True,
    expected_sha256: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> Extractor:
    """`domain:NAME`, `inception:PATH` or `random` -> an Extractor (training domain ones once)."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "domain" and arg:
        ext = load_domain_extractor(resolve_domain(arg, train=train, progress=progress), spec)
        if expected_sha256 and ext.sha256 != expected_sha256.lower():
            raise ModelFileError(f"{ext.path} has sha256 {ext.sha256}, expected {expected_sha256}")
    elif kind == "inception" and arg:
        ext = inception_extractor(arg, expected_sha256)
    elif kind == "random" and not arg:
        ext = random_extractor()
    else:
        raise ImagesynthError(
            f"unknown extractor {spec!r}; expected domain:NAME, inception:PATH or random"
        )
    if device:
        ext.net.to(device)
    return ext
