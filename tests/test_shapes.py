"""The `shapes` dataset follows its spec: determinism, geometry, captions, labels and errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagesynth.data.base import DATASETS
from imagesynth.data.shapes import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    ShapesDataset,
    caption_for,
)
from imagesynth.errors import DataError

N = 1000  # samples for the statistical checks at S=32


def expected_caption(attributes: dict) -> str:
    """The plain caption written out from the spec, independently of the module's code."""

    def article(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    objects, bg = attributes["objects"], attributes["background"]
    if attributes["count"] == 1:
        o = objects[0]
        return f"a {o['size']} {o['color']} {o['shape']} {o['position']} on a {bg} background"
    a, b = objects
    return (
        f"{article(a['color'])} {a['color']} {a['shape']} {attributes['relation']} "
        f"{article(b['color'])} {b['color']} {b['shape']} on a {bg} background"
    )


def arrays(item) -> tuple[np.ndarray, list[np.ndarray]]:
    return np.asarray(item.image).astype(int), [np.asarray(m) for m in item.masks]


def inside_point(obj: dict) -> tuple[int, int]:
    """Pixel (x, y) deep inside the object: its centre, or a triangle's incentre (lower)."""
    cx, cy = obj["center"]
    if obj["shape"] == "triangle":
        b = obj["box"][2] - obj["box"][0]
        cy = obj["box"][3] - b / (1 + math.sqrt(5))  # inradius of a b-wide, b-tall triangle
    return int(cx), int(cy)


def check_item(item, s: int) -> None:
    """Invariants every item has at any size."""
    attrs = item.attributes
    assert item.image.mode == "RGB" and item.image.size == (s, s)
    assert json.loads(json.dumps(attrs)) == attrs
    assert item.caption == expected_caption(attrs)
    assert attrs["count"] == len(attrs["objects"]) == len(item.masks)
    assert attrs["background"] in BACKGROUNDS
    for obj, mask in zip(attrs["objects"], item.masks, strict=True):
        m = np.asarray(mask)
        assert mask.mode == "L" and mask.size == (s, s)
        assert set(np.unique(m)) <= {0, 255} and m.any()
        x0, y0, x1, y1 = obj["box"]
        b = {"small": 0.3, "large": 0.5}[obj["size"]] * s
        assert x1 - x0 == pytest.approx(b) and y1 - y0 == pytest.approx(b)
        assert min(x0, y0) >= 0 and max(x1, y1) <= s
        assert obj["center"] == pytest.approx([(x0 + x1) / 2, (y0 + y1) / 2])
        ys, xs = np.nonzero(m)
        # the mask lies within its box (one pixel of slack for rounding)
        assert xs.min() >= x0 - 1 and xs.max() + 1 <= x1 + 1
        assert ys.min() >= y0 - 1 and ys.max() + 1 <= y1 + 1


@pytest.fixture(scope="module")
def items32() -> list:
    ds = ShapesDataset(size=32, seed=0, length=N)
    return list(ds)


# --- determinism ---------------------------------------------------------------------------


def same(a, b) -> bool:
    return (
        a.image.tobytes() == b.image.tobytes()
        and a.attributes == b.attributes
        and a.caption == b.caption
        and a.label == b.label
        and [m.tobytes() for m in a.masks] == [m.tobytes() for m in b.masks]
    )


def test_same_seed_and_index_give_identical_items_in_any_order() -> None:
    forward = [ShapesDataset(seed=7)[i] for i in range(40)]
    ds = ShapesDataset(seed=7)
    order = np.random.default_rng(1).permutation(40)
    shuffled = {int(i): ds[int(i)] for i in order}
    assert all(same(forward[i], shuffled[i]) for i in range(40))
    again = ShapesDataset(seed=7, length=100)  # the length does not change items
    assert all(same(forward[i], again[i]) for i in (39, 3, 0))


def test_any_index_can_be_drawn_beyond_the_length() -> None:
    short = ShapesDataset(seed=3, length=5)
    long = ShapesDataset(seed=3, length=2_000_000)
    assert same(short._get(1_234_567), long[1_234_567])
    with pytest.raises(IndexError):
        short[5]
    assert same(short[-1], short[4])


def test_seeds_and_splits_draw_different_items() -> None:
    def images(**kw) -> list[bytes]:
        ds = ShapesDataset(**kw)
        return [ds[i].image.tobytes() for i in range(30)]

    base = images(seed=0)
    for other in (images(seed=1), images(seed=0, split="test")):
        assert sum(a != b for a, b in zip(base, other, strict=True)) >= 25
    test_attrs = ShapesDataset(split="test")[0].attributes
    assert test_attrs["split"] == "test"


# --- geometry over many samples ------------------------------------------------------------


def test_one_and_two_object_proportions(items32) -> None:
    ones = sum(it.attributes["count"] == 1 for it in items32)
    sd = math.sqrt(N * 0.6 * 0.4)
    assert abs(ones - 0.6 * N) < 4 * sd
    assert all(it.attributes["count"] in (1, 2) for it in items32)


def test_every_attribute_value_occurs(items32) -> None:
    objs = [o for it in items32 for o in it.attributes["objects"]]
    assert {o["color"] for o in objs} == set(COLORS)
    assert {o["shape"] for o in objs} == set(SHAPES)
    assert {o["size"] for o in objs} == {"small", "large"}
    assert {it.attributes["background"] for it in items32} == set(BACKGROUNDS)
    assert {o["position"] for o in objs if "position" in o} == set(POSITIONS)
    assert {it.attributes.get("relation") for it in items32} - {None} == set(RELATIONS)


def test_items_are_valid_and_captions_exact(items32) -> None:
    for it in items32:
        check_item(it, 32)
    captions = [it.caption for it in items32]
    assert any("an orange" in c for c in captions)
    assert not any(re.search(r"\ba [aeiou]", c) for c in captions)


@pytest.mark.parametrize("s", [32, 64, 128])
def test_object_interiors_have_the_exact_color(items32, s: int) -> None:
    items = items32 if s == 32 else [ShapesDataset(size=s, seed=5)[i] for i in range(12)]
    for it in items:
        image, _ = arrays(it)
        for obj in it.attributes["objects"]:
            x, y = inside_point(obj)
            assert np.abs(image[y, x] - COLORS[obj["color"]]).max() <= 2, (it.caption, obj)


@pytest.mark.parametrize("s", [32, 64, 128])
def test_mask_boxes_have_the_spec_sides(items32, s: int) -> None:
    items = items32 if s == 32 else [ShapesDataset(size=s, seed=5)[i] for i in range(12)]
    for it in items:
        for obj, m in zip(it.attributes["objects"], arrays(it)[1], strict=True):
            ys, xs = np.nonzero(m)
            side = {"small": 0.3, "large": 0.5}[obj["size"]] * s
            assert abs(xs.max() - xs.min() + 1 - side) <= 2, (it.caption, obj)
            assert abs(ys.max() - ys.min() + 1 - side) <= 2, (it.caption, obj)


def test_one_object_sits_in_its_grid_cell(items32) -> None:
    s, jitter = 32, 32 / 24
    for it in items32:
        if it.attributes["count"] != 1:
            continue
        (obj,) = it.attributes["objects"]
        row, col = divmod(POSITIONS.index(obj["position"]), 3)
        b = obj["box"][2] - obj["box"][0]
        for c, k in zip(obj["center"], (col, row), strict=True):
            target = min(max((k + 0.5) * s / 3, b / 2), s - b / 2)
            assert abs(c - target) <= jitter + 1e-9  # jitter, then the clamp to the canvas
            assert k * s / 3 <= c <= (k + 1) * s / 3


def test_two_objects_follow_their_relation(items32) -> None:
    s, jitter = 32, 32 / 24
    for it in items32:
        attrs = it.attributes
        if attrs["count"] != 2:
            continue
        subject, other = attrs["objects"]
        assert subject["color"] != other["color"]
        assert subject["size"] == other["size"] == "small"
        m0, m1 = arrays(it)[1]
        assert not np.logical_and(m0, m1).any(), it.caption
        rel = attrs["relation"]
        axis = 0 if rel in ("to the left of", "to the right of") else 1
        gap = other["center"][axis] - subject["center"][axis]
        if rel in ("to the right of", "below"):
            gap = -gap
        assert 0.4 * s - 2 * jitter - 1e-9 <= gap <= 0.4 * s + 2 * jitter + 1e-9
        for o in (subject, other):
            assert abs(o["center"][1 - axis] - s / 2) <= jitter + 1e-9


def test_uncovered_corners_are_the_background(items32) -> None:
    s, reach = 32, 3  # Lanczos at 4x reaches 3 output pixels from an edge
    checked = 0
    for it in items32:
        image, _ = arrays(it)
        bg = BACKGROUNDS[it.attributes["background"]]
        for x, y in ((0, 0), (s - 1, 0), (0, s - 1), (s - 1, s - 1)):
            near = any(
                o["box"][0] - reach < x + 1
                and x < o["box"][2] + reach
                and o["box"][1] - reach < y + 1
                and y < o["box"][3] + reach
                for o in it.attributes["objects"]
            )
            if not near:
                assert tuple(image[y, x]) == bg, it.caption
                checked += 1
    assert checked > 2 * N


# --- labels, paraphrase, arguments ---------------------------------------------------------


@pytest.mark.parametrize(("mode", "count"), [("shape", 3), ("color", 6), ("color_shape", 18)])
def test_label_modes(mode: str, count: int) -> None:
    ds = ShapesDataset(label_mode=mode)
    assert ds.num_classes == len(ds.class_names) == count
    assert ds.describe()["label_mode"] == mode
    for i in range(60):
        it = ds[i]
        subject = it.attributes["objects"][0]  # the caption's first-named object
        name = {
            "shape": subject["shape"],
            "color": subject["color"],
            "color_shape": f"{subject['color']} {subject['shape']}",
        }[mode]
        assert 0 <= it.label < count and ds.class_names[it.label] == name
    if mode == "color_shape":
        assert ds.class_names[:4] == ["red circle", "red square", "red triangle", "green circle"]


_ONE_DIRS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_ONE_DIRS |= {"left": "left", "right": "right"}
_TWO_DIRS = {"left": "left", "right": "right", "above": "up", "higher": "up"}
_TWO_DIRS |= {"below": "down", "beneath": "down", "lower": "down"}


def directions(caption: str, count: int) -> list[str]:
    table = _ONE_DIRS if count == 1 else _TWO_DIRS
    found = [table[w] for w in re.findall(r"[a-z]+", caption) if w in table]
    if count == 1 and not found:  # no side named: the centre of the canvas
        assert re.search(r"\b(center|middle)\b", caption), caption
    return sorted(found)


def test_paraphrase_rewords_without_changing_meaning() -> None:
    plain, para = ShapesDataset(seed=2), ShapesDataset(seed=2, paraphrase=True)
    changed = 0
    for i in range(200):
        a, b = plain[i], para[i]
        attrs = a.attributes
        assert a.image.tobytes() == b.image.tobytes() and a.attributes == b.attributes
        assert a.caption == caption_for(attrs) and b.caption == caption_for(attrs, True)
        assert b.caption == ShapesDataset(seed=2, paraphrase=True)[i].caption
        words = re.findall(r"[a-z]+", b.caption)
        expected = [w for o in attrs["objects"] for w in (o["color"], o["shape"])]
        named = [w for w in words if w in COLORS or w in SHAPES]
        assert named == expected, b.caption  # same objects, in the same order
        assert f"{attrs['background']} background" in b.caption
        if attrs["count"] == 1:
            assert attrs["objects"][0]["size"] in words
        count = attrs["count"]
        assert directions(b.caption, count) == directions(a.caption, count), b.caption
        changed += a.caption != b.caption
    assert changed > 100


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"size": 8}, "8"),
        ({"size": 600}, "600"),
        ({"size": 32.0}, "32.0"),
        ({"seed": -1}, "-1"),
        ({"seed": 2**40}, str(2**40)),
        ({"seed": "a"}, "'a'"),
        ({"length": 0}, "0"),
        ({"label_mode": "shapes"}, "'shapes'"),
        ({"paraphrase": "yes"}, "'yes'"),
        ({"split": "val"}, "'val'"),
        ({"channels": 1}, "channels must be 3, got 1"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs: dict, shown: str) -> None:
    with pytest.raises(DataError) as info:
        ShapesDataset(**kwargs)
    message = str(info.value)
    assert shown in message and next(iter(kwargs)) in message


def test_registered_with_its_facts() -> None:
    info = DATASETS["shapes"]
    ds = info.factory(size=48)
    assert isinstance(ds, ShapesDataset) and not info.takes_path
    assert ds.name == "shapes" and ds.flip_ok is False and ds.channels == 3
    facts = ds.describe()
    assert facts["size"] == 48 and facts["length"] == 10_000 and facts["split"] == "train"


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    index=st.integers(0, 2**32 - 1),
    size=st.integers(16, 96),
    split=st.sampled_from(["train", "test"]),
)
def test_any_seed_index_and_size_gives_a_valid_item(
    seed: int, index: int, size: int, split: str
) -> None:
    it = ShapesDataset(size=size, seed=seed, split=split)._get(index)
    check_item(it, size)
    if it.attributes["count"] == 2:
        m0, m1 = (np.asarray(m) for m in it.masks)
        assert not np.logical_and(m0, m1).any()
