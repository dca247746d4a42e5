"""Prompt adherence for `shapes`: read shape, color, size, position, relation and background
back from the pixels of an image and score them against what its caption asked for.

Classical image analysis written from the dataset's spec (`imagesynth.data.shapes`), never by
re-rendering: background = the background color most of the border votes for; every pixel is
unmixed as `pixel - bg = alpha * (color - bg)` against each palette color, in RGB where the
renderer's Lanczos mixing happens (this undoes anti-aliased edges, and measuring from the
observed background undoes a uniform color cast); pixels with `alpha >= 0.5` are split into
connected components per color, small fragments join the object they touch, specks are
dropped. Each object's soft coverage (re-measured along its own observed color) gives its
shape, from the fill of its extent (square 1, circle pi/4, triangle 1/2) and the vertical skew
of its mass (a triangle, apex up, is bottom-heavy), and its size, from its extent relative to
the image (0.3 vs 0.5 of the side); position is the 3x3 cell of its box centre; the relation
of two objects compares their box centres on the dominant axis, as the dataset places them.

    scene = read_scene(image)                       # what is in the picture
    verdict = judge(image, "a red circle above a blue square on a white background")
    verdict.color, verdict.relation, verdict.all_ok
    judge_many(images, captions)                    # per-attribute rates
    dataset_agreement(size=32, n=2000)              # the judge on real `shapes` images
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import numpy as np
from PIL import Image

from ..data.shapes import (
    _POSITION_PHRASES,  # the dataset's own paraphrase tables, so the parser stays in sync
    _RELATION_PHRASES,
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
)
from ..errors import ImagesynthError

ATTRIBUTES: tuple[str, ...] = (
    "count",
    "shape",
    "color",
    "size",
    "position",
    "relation",
    "background",
)

_COLOR_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float64)  # (6, 3)
_BG_NAMES = list(BACKGROUNDS)
_BG_PALETTE = np.array([BACKGROUNDS[b] for b in _BG_NAMES], dtype=np.float64)  # (3, 3)

MIN_AREA = 0.012  # components smaller than this fraction of the image are specks or fragments
MAX_RESIDUAL = 75.0  # RGB distance from a color's bg->color line beyond which a pixel is "other"
BG_MAX_DIST = 90.0  # border color farther than this from every background: background unreadable
SIZE_SPLIT = sum(SIZES.values()) / len(SIZES)  # 0.4: extent / side below it is "small"
TRIANGLE_SKEW = -0.22  # vertical skew of mass: triangle -0.57 (apex up), circle, square 0
SQUARE_FILL = 0.92  # coverage / (width x height): square 1, circle pi/4 = 0.785


@dataclass
class SceneObject:
    """One object read from an image (coordinates in pixels, x right, y down)."""

    color: str
    shape: str
    size: str
    position: str  # one of shapes.POSITIONS: the 3x3 cell of the box centre
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (end exclusive) of the alpha >= 0.5 pixels
    center: tuple[float, float]  # box centre (what the dataset positions)
    centroid: tuple[float, float]  # centre of mass of the soft coverage
    area: float  # soft coverage in pixels
    extent: float  # larger of the soft width and height, as a fraction of the image side
    fill: float  # coverage / (soft width x soft height)
    skew: float  # vertical skewness of the coverage (negative: bottom-heavy)


@dataclass
class Scene:
    """What `read_scene` found: the background name (None if unreadable) and the objects."""

    background: str | None
    objects: list[SceneObject] = field(default_factory=list)
    width: int = 0
    height: int = 0

    @property
    def readable(self) -> bool:
        """Whether at least one object was found."""
        return bool(self.objects)


@dataclass
class Verdict:
    """Per-attribute adherence: True / False for what the prompt asked, None for the rest."""

    count: bool | None = None
    shape: bool | None = None
    color: bool | None = None
    size: bool | None = None
    position: bool | None = None
    relation: bool | None = None
    background: bool | None = None
    readable: bool = False
    scene: Scene | None = None

    @property
    def checks(self) -> dict[str, bool]:
        """The asked attributes and whether each holds."""
        return {a: v for a in ATTRIBUTES if (v := getattr(self, a)) is not None}

    @property
    def all_ok(self) -> bool:
        """Every asked attribute holds (False for an unreadable image)."""
        return self.readable and all(self.checks.values())


# ---------------------------------------------------------------------------------------------
# Reading pixels


def _as_array(image: Any) -> np.ndarray:
    """(H, W, 3) float64 in 0..255 from a PIL image, a uint8 array or a float array in 0..1."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or min(a.shape[:2]) < 8:
        raise ImagesynthError(f"image must be RGB of shape (H, W, 3), H, W >= 8, got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.floating):
        if a.min() < -0.01 or a.max() > 1.01:
            raise ImagesynthError(
                f"a float image must lie in [0, 1], got range [{a.min():.3g}, {a.max():.3g}]"
            )
        return np.clip(a, 0.0, 1.0) * 255.0
    raise ImagesynthError(f"image must be uint8 or float in [0, 1], got dtype {a.dtype}")


def _background(px: np.ndarray) -> tuple[str | None, np.ndarray, np.ndarray]:
    """Background name, its observed RGB and its palette RGB (the observed one if unreadable):
    the palette background most border pixels are closest to (object colors compete, so an
    object touching the border does not vote)."""
    border = np.concatenate([px[0], px[-1], px[1:-1, 0], px[1:-1, -1]])  # (N, 3)
    allp = np.concatenate([_BG_PALETTE, _PALETTE])  # (9, 3)
    d = np.linalg.norm(border[:, None, :] - allp[None], axis=2)  # (N, 9)
    nearest = d.argmin(1)
    votes = np.bincount(nearest, minlength=len(allp))[: len(_BG_NAMES)]
    k = int(votes.argmax())
    mine = border[nearest == k] if votes[k] else border
    rgb = np.median(mine, axis=0)
    if votes[k] == 0 or np.linalg.norm(rgb - _BG_PALETTE[k]) > BG_MAX_DIST:
        rgb = np.median(border, axis=0)
        return None, rgb, rgb
    return _BG_NAMES[k], rgb, _BG_PALETTE[k]


def _unmix(px: np.ndarray, bg: np.ndarray, bg_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the palette color whose step from the background best explains the pixel's
    step from the observed background (`px - bg ~ alpha * (color - bg_ref)`, which undoes a
    uniform color cast), and alpha: labels (H, W) in -1..5 (-1: background or unexplained),
    alpha (H, W, 6)."""
    h, w, _ = px.shape
    p = px.reshape(-1, 3) - bg  # (N, 3)
    dirs = _PALETTE - bg_ref  # (6, 3)
    norm2 = np.maximum((dirs**2).sum(1), 1.0)  # (6,)
    alpha = np.clip(p @ dirs.T / norm2, 0.0, 1.0)  # (N, 6)
    resid = np.linalg.norm(p[:, None, :] - alpha[..., None] * dirs[None], axis=2)  # (N, 6)
    best = resid.argmin(1)
    a = alpha[np.arange(len(p)), best]
    ok = (a >= 0.5) & (resid[np.arange(len(p)), best] <= MAX_RESIDUAL)
    return np.where(ok, best, -1).reshape(h, w), alpha.reshape(h, w, len(_PALETTE))


def _cell(cx: float, cy: float, w: int, h: int) -> int:
    col = min(max(int(cx * 3 // w), 0), 2)
    row = min(max(int(cy * 3 // h), 0), 2)
    return row * 3 + col


def _measure(
    region: np.ndarray, hard: np.ndarray, cov: np.ndarray, color: int, w: int, h: int
) -> SceneObject:
    """Geometry of one object from its hard mask and its soft coverage `cov` inside `region`."""
    soft = np.where(region, cov, 0.0)  # (H, W)
    soft = np.where(soft >= 0.15, soft, 0.0)  # noise on the background ring is not coverage
    area = float(soft.sum())
    rows, cols = soft.sum(1), soft.sum(0)  # (H,), (W,)
    # Width / height: the largest mean over 3 adjacent rows / columns (objects of 8+ pixels); a
    # plain max would pick the noisiest row and make a noisy square look like a circle.
    box = np.ones(3 if min(rows.max(), cols.max()) >= 8 else 1)
    width = float(np.convolve(rows, box / box.size, "same").max())
    height = float(np.convolve(cols, box / box.size, "same").max())
    ys = np.arange(h) + 0.5
    xs = np.arange(w) + 0.5
    my = float((rows * ys).sum() / area)
    mx = float((cols * xs).sum() / area)
    var = float((rows * (ys - my) ** 2).sum() / area)
    skew = float((rows * (ys - my) ** 3).sum() / area / max(var, 1e-6) ** 1.5)
    fill = area / max(width * height, 1e-6)
    if skew < TRIANGLE_SKEW:
        shape = "triangle"
    elif fill >= SQUARE_FILL:
        shape = "square"
    else:
        shape = "circle"
    yy, xx = np.nonzero(hard)
    x0, x1, y0, y1 = int(xx.min()), int(xx.max()) + 1, int(yy.min()), int(yy.max()) + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    extent = max(rows.max() / w, cols.max() / h)  # raw maxima: a triangle's base is one row
    return SceneObject(
        color=_COLOR_NAMES[color],
        shape=shape,
        size="small" if extent < SIZE_SPLIT else "large",
        position=POSITIONS[_cell(cx, cy, w, h)],
        bbox=(x0, y0, x1, y1),
        center=(cx, cy),
        centroid=(mx, my),
        area=area,
        extent=extent,
        fill=fill,
        skew=skew,
    )


def read_scene(image: Any, min_area: float = MIN_AREA) -> Scene:
    """Background and objects of an RGB image (PIL, uint8 array, or float array in [0, 1]).

    Objects are connected same-color regions of at least `min_area` x H x W pixels, largest
    first; smaller fragments touching one join it, isolated specks are ignored.
    """
    from scipy import ndimage

    px = _as_array(image)
    h, w, _ = px.shape
    background, bg_rgb, bg_ref = _background(px)
    labels, alpha = _unmix(px, bg_rgb, bg_ref)
    min_px = min_area * h * w

    comps: list[tuple[int, np.ndarray]] = []  # (color, mask) of objects
    frags: list[tuple[int, np.ndarray]] = []
    for k in range(len(_COLOR_NAMES)):
        lab, n = ndimage.label(labels == k)
        for i in range(1, n + 1):
            m = lab == i
            (comps if m.sum() >= min_px else frags).append((k, m))
    comps.sort(key=lambda c: -int(c[1].sum()))
    if not comps:
        return Scene(background, [], w, h)
    # A fragment (anti-aliased fringe read as another hue) joins the object it touches most.
    cross = ndimage.generate_binary_structure(2, 1)
    grown = [ndimage.binary_dilation(m, cross) for _, m in comps]
    for _, f in frags:
        touch = [int((g & f).sum()) for g in grown]
        if max(touch) > 0:
            j = int(np.argmax(touch))
            comps[j] = (comps[j][0], comps[j][1] | f)
    taken = np.zeros((h, w), bool)
    for _, m in comps:
        taken |= m
    objects = []
    for k, m in comps:
        region = ndimage.binary_dilation(m, cross, iterations=1) & ~(taken & ~m)
        # Coverage along the object's own observed color (median of its interior), so that a
        # color off the palette neither thins nor fattens its anti-aliased edge.
        core = ndimage.binary_erosion(m, cross)
        step = np.median(px[core if core.sum() >= 4 else m], axis=0) - bg_rgb  # (3,)
        if step @ step >= 400.0:
            cov = np.clip((px - bg_rgb) @ step / (step @ step), 0.0, 1.0)  # (H, W)
        else:
            cov = alpha[..., k]
        objects.append(_measure(region, m, cov, k, w, h))
    return Scene(background, objects, w, h)


def relation_between(a: SceneObject, b: SceneObject) -> str:
    """Where `a` is relative to `b` (one of shapes.RELATIONS), by the dominant axis of their
    box centres."""
    dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


# ---------------------------------------------------------------------------------------------
# What a prompt asks for


def _phrase_table(table: dict[str, tuple[str, ...]]) -> list[tuple[re.Pattern[str], str]]:
    """(pattern, canonical) for every wording, longest first so "at the top left" wins."""
    pairs = [(p, canon) for canon, phrases in table.items() for p in phrases]
    pairs.sort(key=lambda pc: -len(pc[0]))
    return [(re.compile(rf"\b{re.escape(p)}\b"), canon) for p, canon in pairs]


_POSITION_PATTERNS = _phrase_table(_POSITION_PHRASES)
_RELATION_PATTERNS = _phrase_table(_RELATION_PHRASES)
_OBJECT_RE = re.compile(
    rf"\b(?:(?P<size>{'|'.join(SIZES)})\s+)?(?:(?P<color>{'|'.join(COLORS)})\s+)?"
    rf"(?P<shape>{'|'.join(SHAPES)})\b"
)
_BG_RE = re.compile(rf"\b(?P<bg>{'|'.join(BACKGROUNDS)})\s+background\b")


def parse_caption(caption: str) -> dict[str, Any]:
    """Attributes a `shapes` caption asks for (templated or paraphrased); see `asked_attributes`.

    Words the caption leaves out (a size, a color, the background) are not asked for.
    """
    text = " ".join(caption.lower().replace("grey", "gray").replace(",", " ").split())
    text = text.rstrip(".")
    asked: dict[str, Any] = {"background": None, "relation": None}
    m = _BG_RE.search(text)
    if m:
        asked["background"] = m["bg"]
        text = text[: m.start()] + " | " + text[m.end() :]
    objects = []
    for m in _OBJECT_RE.finditer(text):
        obj = {k: v for k, v in m.groupdict().items() if v is not None}
        objects.append(obj)
    if not objects:
        raise ImagesynthError(f"caption names no {'/'.join(SHAPES)}: {caption!r}")
    if len(objects) > 2:
        raise ImagesynthError(f"caption names {len(objects)} objects, expected 1 or 2: {caption!r}")
    rest = _OBJECT_RE.sub(" | ", text)
    asked["count"] = len(objects)
    table = _RELATION_PATTERNS if len(objects) == 2 else _POSITION_PATTERNS
    for pattern, canon in table:
        if pattern.search(rest):
            if len(objects) == 2:
                asked["relation"] = canon
            else:
                objects[0]["position"] = canon
            break
    asked["objects"] = objects
    return asked


def asked_attributes(prompt: str | dict[str, Any]) -> dict[str, Any]:
    """What a prompt asks for, from a caption or a dataset `Item.attributes` dict.

    Returns `{"count": 1|2, "background": name|None, "relation": name|None, "objects": [{"shape",
    "color", "size"?, "position"?}, ...]}`; for an attributes dict, only what its plain caption
    states (two-object captions name neither size nor position, so those are not asked).
    """
    if isinstance(prompt, str):
        return parse_caption(prompt)
    if not isinstance(prompt, dict) or "objects" not in prompt:
        raise ImagesynthError(
            f"prompt must be a caption or a shapes attributes dict, got {type(prompt).__name__}"
        )
    objs = prompt["objects"]
    count = int(prompt.get("count", len(objs)))
    keep = ("shape", "color", "size", "position") if count == 1 else ("shape", "color")
    return {
        "count": count,
        "background": prompt.get("background"),
        "relation": prompt.get("relation") if count == 2 else None,
        "objects": [{k: o[k] for k in keep if o.get(k) is not None} for o in objs],
    }


# ---------------------------------------------------------------------------------------------
# Judging


def _assign(asked: list[dict[str, Any]], found: list[SceneObject]) -> list[SceneObject | None]:
    """Detected object for each asked one: the assignment agreeing best (color counts twice,
    then shape, size, position); asked objects beyond those found get None."""

    def score(a: dict[str, Any], o: SceneObject) -> int:
        return (
            2 * (a.get("color") == o.color)
            + (a.get("shape") == o.shape)
            + (a.get("size") == o.size)
            + (a.get("position") == o.position)
        )

    n = min(len(asked), len(found))
    best, best_score = None, -1
    for idx in permutations(range(len(found)), n):
        s = sum(score(asked[i], found[j]) for i, j in enumerate(idx))
        if s > best_score:
            best, best_score = idx, s
    out: list[SceneObject | None] = [found[j] for j in best or ()]
    return out + [None] * (len(asked) - n)


def judge(image: Any, asked: str | dict[str, Any], scene: Scene | None = None) -> Verdict:
    """Score an image against a prompt (caption, attributes dict or `asked_attributes` output).

    Only attributes the prompt names are checked; an image with no object is unreadable and
    fails them all. Pass `scene` to reuse a `read_scene` result.
    """
    ask = asked_attributes(asked)
    scene = scene if scene is not None else read_scene(image)
    v = Verdict(readable=scene.readable, scene=scene)
    objs = ask["objects"]
    if not scene.readable:
        for a in _asked_keys(ask):
            setattr(v, a, False)
        return v
    found = scene.objects[: max(len(objs), 1) + 2]  # the largest few are enough to match
    matched = _assign(objs, found)
    v.count = len(scene.objects) == ask["count"]
    pairs = list(zip(objs, matched, strict=True))
    for key in ("shape", "color", "size", "position"):
        if any(key in o for o in objs):
            ok = all(m is not None and getattr(m, key) == o[key] for o, m in pairs if key in o)
            setattr(v, key, ok)
    if ask.get("relation") is not None:
        a, b = [*matched, None, None][:2]
        v.relation = a is not None and b is not None and relation_between(a, b) == ask["relation"]
    if ask.get("background") is not None:
        v.background = scene.background == ask["background"]
    return v


def _asked_keys(ask: dict[str, Any]) -> list[str]:
    keys = ["count"]
    keys += [
        k for k in ("shape", "color", "size", "position") if any(k in o for o in ask["objects"])
    ]
    keys += [k for k in ("relation", "background") if ask.get(k) is not None]
    return keys


def judge_many(images: Any, asked_list: Any) -> dict[str, Any]:
    """Rates over a batch: `{attribute: fraction true among images that asked it, "all": ...,
    "unreadable": ..., "n": ...}`."""
    images, asked_list = list(images), list(asked_list)
    if len(images) != len(asked_list):
        raise ImagesynthError(
            f"images and prompts differ in length: {len(images)} vs {len(asked_list)}"
        )
    if not images:
        raise ImagesynthError("judge_many needs at least one image")
    hits: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    all_ok, unreadable = [], []
    for image, asked in zip(images, asked_list, strict=True):
        v = judge(image, asked)
        for a, ok in v.checks.items():
            hits[a].append(ok)
        all_ok.append(v.all_ok)
        unreadable.append(not v.readable)
    out: dict[str, Any] = {a: float(np.mean(h)) for a, h in hits.items() if h}
    out.update(all=float(np.mean(all_ok)), unreadable=float(np.mean(unreadable)), n=len(images))
    return out


# ---------------------------------------------------------------------------------------------
# The judge on real dataset images


def degrade(image: Image.Image, noise: float = 0.0, blur: float = 0.0, seed: int = 0) -> np.ndarray:
    """Make a real image look generated: Gaussian blur of radius `blur` px, then Gaussian noise
    of std `noise` (in [0, 1] units); returns uint8 (H, W, 3)."""
    from PIL import ImageFilter

    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    if noise > 0:
        a = a + np.random.default_rng(seed).normal(0.0, noise * 255.0, a.shape)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _mutations(ask: dict[str, Any], rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """One wrong prompt per attribute the prompt names: {attribute: prompt with it changed}."""
    out = {}
    o0 = ask["objects"][0]
    used = {o["color"] for o in ask["objects"]}

    def changed(**kw: Any) -> dict[str, Any]:
        new = {**ask, "objects": [dict(o) for o in ask["objects"]]}
        for k, v in kw.items():
            if k in ("background", "relation"):
                new[k] = v
            else:
                new["objects"][0][k] = v
        return new

    def other(options: Any, avoid: Any) -> str:
        choices = [x for x in options if x not in avoid]
        return choices[int(rng.integers(len(choices)))]

    out["shape"] = changed(shape=other(SHAPES, {o0["shape"]}))
    out["color"] = changed(color=other(COLORS, used))
    out["background"] = changed(background=other(BACKGROUNDS, {ask["background"]}))
    if ask["count"] == 1:
        out["size"] = changed(size=other(SIZES, {o0["size"]}))
        out["position"] = changed(position=other(POSITIONS, {o0["position"]}))
    else:
        out["relation"] = changed(relation=other(RELATIONS, {ask["relation"]}))
    return out


def dataset_agreement(
    size: int = 32,
    n: int = 2000,
    split: str = "test",
    seed: int = 0,
    noise: float = 0.0,
    blur: float = 0.0,
    captions: bool = False,
    paraphrase: bool = False,
) -> dict[str, Any]:
    """Agreement of the judge with the ground truth on `n` real `shapes` items.

    `positive[a]`: fraction of items whose own prompt the judge accepts on attribute `a`
    (and `all`: on every attribute); `negative[a]`: fraction of prompts with `a` changed to a
    wrong value that the judge rejects on `a`. `captions` judges against the (optionally
    paraphrased) caption text instead of the attributes dict; `failures` lists failing indices.
    """
    from ..data import get_dataset

    ds = get_dataset("shapes", size=size, split=split, seed=seed, length=n, paraphrase=paraphrase)
    rng = np.random.default_rng(seed)
    pos: dict[str, list[bool]] = {a: [] for a in (*ATTRIBUTES, "all")}
    neg: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    failures: list[int] = []
    for i in range(n):
        item = ds[i]
        image = degrade(item.image, noise, blur, seed=i) if noise or blur else item.image
        scene = read_scene(image)
        ask = asked_attributes(item.caption if captions else item.attributes)
        v = judge(image, ask, scene=scene)
        for a, ok in v.checks.items():
            pos[a].append(ok)
        pos["all"].append(v.all_ok)
        if not v.all_ok:
            failures.append(i)
        for a, wrong in _mutations(asked_attributes(item.attributes), rng).items():
            neg[a].append(getattr(judge(image, wrong, scene=scene), a) is False)
    return {
        "size": size,
        "n": n,
        "noise": noise,
        "blur": blur,
        "positive": {a: float(np.mean(h)) for a, h in pos.items() if h},
        "negative": {a: float(np.mean(h)) for a, h in neg.items() if h},
        "failures": failures,
    }
