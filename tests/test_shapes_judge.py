"""The `shapes` judge reads real images back to their attributes and rejects wrong prompts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagesynth.data.shapes import ShapesDataset
from imagesynth.errors import ImagesynthError
from imagesynth.metrics.shapes_judge import (
    asked_attributes,
    dataset_agreement,
    judge,
    judge_many,
    parse_caption,
    read_scene,
)


def drawn(
    objects: list[tuple[str, tuple[int, int, int], tuple[int, int, int, int]]], bg=(255,) * 3
):
    """A 64 px scene drawn here with PIL (not the dataset's renderer): (shape, rgb, box)."""
    image = Image.new("RGB", (256, 256), bg)
    draw = ImageDraw.Draw(image)
    for shape, rgb, box in objects:
        x0, y0, x1, y1 = (4 * v for v in box)
        if shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        elif shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=rgb)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=rgb)
    return image.resize((64, 64), Image.LANCZOS)


@pytest.mark.parametrize(("size", "n", "noise", "blur"), [(32, 300, 0, 0), (32, 150, 0.05, 0.6)])
def test_agrees_with_ground_truth_on_real_images(size, n, noise, blur):
    r = dataset_agreement(size=size, n=n, noise=noise, blur=blur)
    assert set(r["positive"]) == {
        "count",
        "shape",
        "color",
        "size",
        "position",
        "relation",
        "background",
        "all",
    }
    for attribute, rate in r["positive"].items():  # accepts the item's own prompt
        assert rate >= 0.98, (attribute, rate, r["failures"][:10])
    for attribute, rate in r["negative"].items():  # rejects a prompt with that attribute wrong
        assert rate >= 0.98, (attribute, rate)


def test_agrees_at_64_px():
    r = dataset_agreement(size=64, n=80)
    assert r["positive"]["all"] >= 0.98 and min(r["negative"].values()) >= 0.98


@pytest.mark.parametrize("paraphrase", [False, True])
def test_caption_parser_matches_attributes(paraphrase):
    ds = ShapesDataset(size=16, split="test", paraphrase=paraphrase)
    for i in range(200):
        item = ds[i]
        assert parse_caption(item.caption) == asked_attributes(item.attributes), item.caption


def test_read_scene_reports_what_is_drawn():
    image = drawn(
        [("square", (220, 40, 40), (4, 4, 36, 36)), ("triangle", (40, 90, 220), (44, 44, 60, 60))]
    )
    scene = read_scene(image)
    assert scene.background == "white" and len(scene.objects) == 2
    big, small = scene.objects  # largest first
    assert (big.color, big.shape, big.size, big.position) == (
        "red",
        "square",
        "large",
        "at the top left",
    )
    assert (small.color, small.shape, small.size) == ("blue", "triangle", "small")
    assert small.position == "at the bottom right"
    assert big.bbox == (4, 4, 36, 36)
    circle = read_scene(drawn([("circle", (240, 200, 40), (22, 22, 42, 42))], bg=(0, 0, 0)))
    assert circle.background == "black"
    assert [(o.color, o.shape, o.size, o.position) for o in circle.objects] == [
        ("yellow", "circle", "small", "in the center")
    ]


def test_blank_image_is_unreadable_and_fails_everything():
    blank = Image.new("RGB", (32, 32), (255, 255, 255))
    v = judge(blank, "a small red circle in the center on a white background")
    assert not v.readable and not v.all_ok
    assert v.checks and not any(v.checks.values())
    rates = judge_many([blank, np.zeros((32, 32, 3), np.uint8)], ["a red circle"] * 2)
    assert rates["unreadable"] == 1.0 and rates["all"] == 0.0


def test_wrong_color_shape_size_position_background_are_caught():
    image = drawn([("circle", (220, 40, 40), (40, 2, 60, 22))])  # small red circle, top right
    good = "a small red circle at the top right on a white background"
    assert judge(image, good).all_ok
    v = judge(image, "a small blue circle at the top right on a white background")
    assert v.color is False and v.shape and v.size and v.position and v.background
    assert judge(image, "a small red square at the top right on a white background").checks == {
        "count": True,
        "shape": False,
        "color": True,
        "size": True,
        "position": True,
        "background": True,
    }
    assert judge(image, "a large red circle at the top right on a white background").size is False
    assert (
        judge(image, "a small red circle at the top left on a white background").position is False
    )
    assert (
        judge(image, "a small red circle at the top right on a gray background").background is False
    )


def test_swapped_positions_break_the_relation():
    ds = ShapesDataset(size=32, split="test")
    pairs = [
        it for it in (ds[i] for i in range(60)) if it.attributes.get("relation") == "to the left of"
    ]
    assert len(pairs) >= 3
    for item in pairs:
        assert judge(item.image, item.caption).all_ok
        mirrored = np.ascontiguousarray(np.asarray(item.image)[:, ::-1])  # shapes are symmetric
        v = judge(mirrored, item.caption)
        assert v.relation is False, item.caption
        assert v.shape and v.color and v.count and v.background
        swapped = item.caption.replace("to the left of", "to the right of")
        assert judge(mirrored, swapped).all_ok


def test_count_specks_and_extra_objects():
    one = np.array(drawn([("square", (40, 170, 70), (20, 20, 40, 40))]))
    noisy = one.copy()
    noisy[[2, 60, 5], [60, 3, 5]] = (220, 40, 40)  # isolated red specks are ignored
    assert judge(noisy, "a small green square in the center").all_ok
    two = drawn(
        [("square", (40, 170, 70), (20, 20, 40, 40)), ("circle", (150, 60, 190), (2, 2, 18, 18))]
    )
    v = judge(two, "a small green square in the center")
    assert v.count is False and v.color and v.shape and not v.all_ok
    assert judge(two, "a green square to the right of a purple circle").all_ok
    assert judge(two, "a green square below a purple circle").relation is False  # diagonal: x wins


def test_judge_many_rates_and_partial_prompts():
    ds = ShapesDataset(size=32, split="test")
    items = [ds[i] for i in range(20)]
    wrong = [
        {
            **it.attributes,
            "background": "gray" if it.attributes["background"] != "gray" else "white",
        }
        for it in items
    ]
    rates = judge_many([it.image for it in items] * 2, [it.attributes for it in items] + wrong)
    assert rates["n"] == 40 and rates["background"] == 0.5 and rates["all"] == 0.5
    assert rates["shape"] == rates["color"] == 1.0
    ask = asked_attributes("a red circle")  # says nothing of size, place or background
    assert ask == {
        "background": None,
        "relation": None,
        "count": 1,
        "objects": [{"color": "red", "shape": "circle"}],
    }
    assert set(judge(drawn([("circle", (220, 40, 40), (2, 2, 22, 22))]), ask).checks) == {
        "count",
        "shape",
        "color",
    }


def test_inputs_are_checked_and_float_images_accepted():
    image = drawn([("triangle", (245, 130, 30), (10, 10, 42, 42))], bg=(128, 128, 128))
    as_float = np.asarray(image, dtype=np.float32) / 255
    assert judge(as_float, "a large orange triangle on a gray background").all_ok
    with pytest.raises(ImagesynthError, match="shape"):
        read_scene(np.zeros((32, 32), np.uint8))
    with pytest.raises(ImagesynthError, match=r"\[0, 1\]"):
        read_scene(np.full((32, 32, 3), 255.0))
    with pytest.raises(ImagesynthError, match="names no"):
        asked_attributes("a red blob")
    with pytest.raises(ImagesynthError, match="differ in length"):
        judge_many([image], [])
