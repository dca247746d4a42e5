"""`shapes`: procedural colored circles, squares and triangles with exact captions.

Every item is a pure function of (seed, split, index): one object on a 3x3 grid (60 %) or two
small objects in a spatial relation (40 %), drawn at 4x and downsampled with Lanczos, with its
caption, class label, per-object masks and boxes, and its attributes as JSON. Any size 16..512.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import DataError
from .base import ImageDataset, Item, check_size, register_dataset

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 200, 40),
    "purple": (150, 60, 190),
    "orange": (245, 130, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.3, "large": 0.5}  # box side as a fraction of S
POSITIONS: tuple[str, ...] = (  # row-major over the 3x3 grid
    "at the top left",
    "at the top",
    "at the top right",
    "on the left",
    "in the center",
    "on the right",
    "at the bottom left",
    "at the bottom",
    "at the bottom right",
)
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
LABEL_MODES: tuple[str, ...] = ("shape", "color", "color_shape")
SPLITS: tuple[str, ...] = ("train", "test")

P_ONE = 0.6  # probability of a one-object image
SCALE = 4  # supersampling factor for smooth edges
PAIR_OFFSET = 0.2  # two objects: centres at S/2 -+ 0.2 S on the relation's axis
JITTER = 1 / 24  # uniform jitter of +-S/24 on each axis
MAX_SEED = 2**32  # SeedSequence splits bigger ints into several words, which could collide
_TEST_TAG = 1  # appended to the entropy of the test split; a 0 would collide with train

# Paraphrase tables: each entry lists wordings with the same meaning, the plain one first.
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "at the top left": ("at the top left", "in the upper left corner", "in the top left corner"),
    "at the top": ("at the top", "at the top center", "in the top middle"),
    "at the top right": (
        "at the top right",
        "in the upper right corner",
        "in the top right corner",
    ),
    "on the left": ("on the left", "on the left side", "at the middle left"),
    "in the center": ("in the center", "in the middle", "at the center"),
    "on the right": ("on the right", "on the right side", "at the middle right"),
    "at the bottom left": (
        "at the bottom left",
        "in the lower left corner",
        "in the bottom left corner",
    ),
    "at the bottom": ("at the bottom", "at the bottom center", "in the bottom middle"),
    "at the bottom right": (
        "at the bottom right",
        "in the lower right corner",
        "in the bottom right corner",
    ),
}
_RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "to the left of": ("to the left of", "on the left side of", "left of"),
    "to the right of": ("to the right of", "on the right side of", "right of"),
    "above": ("above", "higher than", "positioned above"),
    "below": ("below", "beneath", "lower than"),
}
# Frames never reorder the two objects: the first-named one is the subject and the label.
_ONE_FRAMES: tuple[str, ...] = (
    "{obj} {pos} on {bg}",
    "{obj} {pos} against {bg}",
    "{obj} on {bg}, {pos}",
    "there is {obj} {pos} on {bg}",
)
_TWO_FRAMES: tuple[str, ...] = (
    "{a} {rel} {b} on {bg}",
    "{a} {rel} {b} against {bg}",
    "on {bg}, {a} {rel} {b}",
    "there is {a} {rel} {b} on {bg}",
)


def with_article(phrase: str) -> str:
    """Prefix `a` or `an` (before a vowel sound: "an orange square")."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _choose(options: tuple[str, ...], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def caption_for(
    attributes: dict[str, Any], paraphrase: bool = False, rng: np.random.Generator | None = None
) -> str:
    """Caption for an item's attributes: the exact template, or a same-meaning paraphrase."""
    if paraphrase and rng is None:
        rng = item_rng(attributes["seed"], attributes["index"], attributes.get("split", "train"))
        # Replay the scene draws (their number does not depend on the size) so the wording is
        # the one the dataset gives this item.
        _draw_scene(rng, 32)
    pick = rng if paraphrase else None
    objects = attributes["objects"]
    bg = f"a {attributes['background']} background"
    if attributes["count"] == 1:
        o = objects[0]
        obj = with_article(f"{o['size']} {o['color']} {o['shape']}")
        pos = _choose(_POSITION_PHRASES[o["position"]], pick)
        return _choose(_ONE_FRAMES, pick).format(obj=obj, pos=pos, bg=bg)
    a, b = (with_article(f"{o['color']} {o['shape']}") for o in objects)
    rel = _choose(_RELATION_PHRASES[attributes["relation"]], pick)
    return _choose(_TWO_FRAMES, pick).format(a=a, rel=rel, b=b, bg=bg)


def item_rng(seed: int, index: int, split: str = "train") -> np.random.Generator:
    """The generator that draws item `index`: a pure function of (seed, split, index)."""
    entropy = [seed, index] if split == "train" else [seed, index, _TEST_TAG]
    return np.random.default_rng(entropy)


def _clamp(c: float, b: float, s: int) -> float:
    return float(min(max(c, b / 2), s - b / 2))


def _object(shape: str, color: str, size: str, cx: float, cy: float, s: int) -> dict[str, Any]:
    b = SIZES[size] * s
    cx, cy = _clamp(cx, b, s), _clamp(cy, b, s)
    box = [cx - b / 2, cy - b / 2, cx + b / 2, cy + b / 2]
    return {"shape": shape, "color": color, "size": size, "box": box, "center": [cx, cy]}


def _draw_scene(rng: np.random.Generator, s: int) -> dict[str, Any]:
    """Draw the attributes of one scene on an S-pixel canvas (no seed / index keys yet)."""
    colors, shapes = list(COLORS), SHAPES
    one = bool(rng.random() < P_ONE)
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    j = JITTER * s

    def jitter() -> float:
        return float(rng.uniform(-j, j))

    if one:
        color = colors[int(rng.integers(len(colors)))]
        shape = shapes[int(rng.integers(len(shapes)))]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        cell = int(rng.integers(9))
        row, col = divmod(cell, 3)
        cx = (col + 0.5) * s / 3 + jitter()
        cy = (row + 0.5) * s / 3 + jitter()
        obj = _object(shape, color, size, cx, cy, s)
        obj["position"] = POSITIONS[cell]
        return {"background": background, "count": 1, "objects": [obj]}

    i = int(rng.integers(len(colors)))
    k = int(rng.integers(len(colors) - 1))
    pair_colors = [colors[i], colors[k + (k >= i)]]  # two different colors
    pair_shapes = [shapes[int(rng.integers(len(shapes)))] for _ in range(2)]
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    # The subject (first named) sits at the smaller coordinate for "to the left of" / "above".
    sign = -1.0 if relation in ("to the left of", "above") else 1.0
    objects = []
    for n in range(2):
        along = s / 2 + (sign if n == 0 else -sign) * PAIR_OFFSET * s + jitter()
        across = s / 2 + jitter()
        horizontal = relation in ("to the left of", "to the right of")
        cx, cy = (along, across) if horizontal else (across, along)
        objects.append(_object(pair_shapes[n], pair_colors[n], "small", cx, cy, s))
    return {"background": background, "count": 2, "objects": objects, "relation": relation}


def _paint(draw: ImageDraw.ImageDraw, obj: dict[str, Any], fill: Any) -> None:
    """Paint one object's shape at SCALE x, covering the box's pixels [x0, x1) x [y0, y1)."""
    x0, y0, x1, y1 = (round(v * SCALE) for v in obj["box"])
    x1, y1 = x1 - 1, y1 - 1  # PIL boxes include their end pixel
    if obj["shape"] == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj["shape"] == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:  # triangle, apex up, base down, filling its box
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)


def render(attributes: dict[str, Any], s: int) -> tuple[Image.Image, list[Image.Image]]:
    """Render the RGB image and one 0/255 mask per object for a scene on an S-pixel canvas."""
    big = s * SCALE
    image = Image.new("RGB", (big, big), BACKGROUNDS[attributes["background"]])
    draw = ImageDraw.Draw(image)
    masks = []
    for obj in attributes["objects"]:
        _paint(draw, obj, COLORS[obj["color"]])
        mask = Image.new("L", (big, big), 0)
        _paint(ImageDraw.Draw(mask), obj, 255)
        small = np.asarray(mask.resize((s, s), Image.LANCZOS))
        masks.append(Image.fromarray(np.where(small >= 128, 255, 0).astype(np.uint8), "L"))
    return image.resize((s, s), Image.LANCZOS), masks


def _class_names(label_mode: str) -> list[str]:
    if label_mode == "shape":
        return list(SHAPES)
    if label_mode == "color":
        return list(COLORS)
    return [f"{c} {s}" for c in COLORS for s in SHAPES]  # color-major


def label_for(obj: dict[str, Any], label_mode: str) -> int:
    """Class index of an object under `label_mode` (shape, color or color_shape)."""
    shape, color = SHAPES.index(obj["shape"]), list(COLORS).index(obj["color"])
    if label_mode == "shape":
        return shape
    if label_mode == "color":
        return color
    return color * len(SHAPES) + shape


@register_dataset(
    "shapes", "procedural colored shapes with exact captions, labels, masks (any size, infinite)"
)
class ShapesDataset(ImageDataset):
    """Colored circles, squares and triangles with exact captions; index -> item is pure."""

    name = "shapes"
    flip_ok = False  # captions say left / right

    def __init__(
        self,
        size: int = 32,
        seed: int = 0,
        length: int = 10_000,
        label_mode: str = "shape",
        paraphrase: bool = False,
        split: str = "train",
        channels: int = 3,
    ) -> None:
        self.size = check_size(size, 16, 512)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
            raise DataError(f"seed must be an integer in 0..{MAX_SEED - 1}, got {seed!r}")
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= MAX_SEED:
            raise DataError(f"length must be an integer in 1..{MAX_SEED}, got {length!r}")
        if label_mode not in LABEL_MODES:
            raise DataError(
                f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}"
            )
        if not isinstance(paraphrase, bool):
            raise DataError(f"paraphrase must be True or False, got {paraphrase!r}")
        if split not in SPLITS:
            raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if isinstance(channels, bool) or channels != 3:
            raise DataError(f"shapes are RGB: channels must be 3, got {channels!r}")
        self.seed, self.length, self.label_mode = seed, length, label_mode
        self.paraphrase, self.split, self.channels = paraphrase, split, channels
        self.class_names = _class_names(label_mode)

    def __len__(self) -> int:
        return self.length

    def _get(self, index: int) -> Item:
        """Item `index`; any index in 0..2**32-1 works, not only those below len()."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_SEED:
            raise IndexError(f"shapes index must be an integer in 0..{MAX_SEED - 1}, got {index!r}")
        rng = item_rng(self.seed, index, self.split)
        attributes = _draw_scene(rng, self.size)
        attributes.update(index=index, seed=self.seed, split=self.split)
        # Paraphrase draws come after the scene draws, so they never change the image.
        caption = caption_for(attributes, self.paraphrase, rng)
        image, masks = render(attributes, self.size)
        label = label_for(attributes["objects"][0], self.label_mode)
        return Item(image=image, label=label, caption=caption, attributes=attributes, masks=masks)

    def describe(self) -> dict[str, Any]:
        """Base facts plus the options that fix every item."""
        facts = super().describe()
        facts.update(
            seed=self.seed, split=self.split, label_mode=self.label_mode, paraphrase=self.paraphrase
        )
        return facts
