"""Tests for the `folder` dataset and `load_image`: layouts, modes, fits, captions, bad files."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from imagesynth.data.base import DATASETS, get_dataset
from imagesynth.data.folder import FolderDataset, load_image
from imagesynth.errors import DataError

GOOD = [
    "birds/old.bmp",
    "birds/pal.png",
    "birds/photo.webp",
    "cats/red.png",
    "cats/wide.png",
    "dogs/alpha.png",
    "dogs/deep16.png",
    "dogs/gray.jpg",
]
BAD = ["birds/broken.png", "birds/trunc.png"]


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _wide() -> Image.Image:
    """40x20: red left quarter, noise in the middle, blue right quarter."""
    a = _noise(20, 40, seed=1)
    a[:, :10] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    return Image.fromarray(a)


def _make_tree(root: Path) -> Path:
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "birds").mkdir()
    (root / ".secret").mkdir()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(root / "cats/red.png")
    (root / "cats/red.txt").write_text("  a red cat \n")
    _wide().save(root / "cats/wide.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "cats/.hidden.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / ".secret/x.png")
    gray = np.tile(np.linspace(0, 255, 30).astype(np.uint8), (30, 1))
    Image.fromarray(gray).save(root / "dogs/gray.jpg", quality=95)
    rgba = np.zeros((32, 32, 4), np.uint8)  # left half transparent black, right half opaque red
    rgba[:, 16:] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(root / "dogs/alpha.png")
    deep = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(deep).save(root / "dogs/deep16.png")  # mode I;16
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (8, 0, 16, 16))
    pal.save(root / "birds/pal.png", transparency=0)  # left half transparent, right blue
    Image.fromarray(_noise(32, 32, seed=2)).save(root / "birds/photo.webp")
    Image.new("RGB", (20, 20), (10, 20, 30)).save(root / "birds/old.bmp")
    (root / "birds/broken.png").write_bytes(np.random.default_rng(3).bytes(400))
    real = _png_bytes(Image.fromarray(_noise(64, 64, seed=4)))
    (root / "birds/trunc.png").write_bytes(real[: len(real) // 2])
    (root / "notes.txt").write_text("not an image")
    rows = [
        {"file_name": "dogs/gray.jpg", "text": "a gray dog", "photographer": "ann"},
        {"file_name": "cats/red.png", "text": "loses to the sidecar"},
        "{not json",
        {"text": "no file_name"},
    ]
    (root / "metadata.jsonl").write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"
    )
    (root / "birds/metadata.jsonl").write_text(
        json.dumps({"file_name": "old.bmp", "caption": "an old bird"}) + "\n"
    )
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_tree(tmp_path_factory.mktemp("pics"))


@pytest.fixture(scope="module")
def ds(tree: Path) -> FolderDataset:
    return FolderDataset(tree, size=16)


def _by_file(ds: FolderDataset) -> dict[str, object]:
    return {item.attributes["file"]: item for item in ds}


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def test_registered() -> None:
    info = DATASETS["folder"]
    assert info.takes_path and info.factory is FolderDataset


def test_counts_classes_labels(ds: FolderDataset) -> None:
    assert len(ds) == len(GOOD)
    assert [ds[i].attributes["file"] for i in range(len(ds))] == GOOD
    assert ds.class_names == ["birds", "cats", "dogs"]
    assert ds.num_classes == 3
    for item in ds:
        cls = item.attributes["file"].split("/")[0]
        assert item.attributes["class"] == cls
        assert item.label == ds.class_names.index(cls)
    assert ds.skipped == 2 and ds.found == 10
    d = ds.describe()
    assert d["root"] == str(ds.root) and d["skipped"] == 2 and d["length"] == len(GOOD)
    assert d["name"] == "folder" and ds.flip_ok


def test_captions_and_attributes(ds: FolderDataset) -> None:
    items = _by_file(ds)
    assert items["cats/red.png"].caption == "a red cat"  # sidecar wins over metadata.jsonl
    assert items["dogs/gray.jpg"].caption == "a gray dog"
    assert items["dogs/gray.jpg"].attributes == {
        "file": "dogs/gray.jpg",
        "class": "dogs",
        "photographer": "ann",
    }
    assert items["birds/old.bmp"].caption == "an old bird"  # subfolder jsonl, `caption` key
    assert items["cats/wide.png"].caption is None


@pytest.mark.parametrize(("channels", "mode"), [(3, "RGB"), (1, "L")])
def test_every_item_square_in_mode(tree: Path, channels: int, mode: str) -> None:
    ds = FolderDataset(tree, size=12, channels=channels, cache=False)
    for item in ds:
        assert item.image.size == (12, 12)
        assert item.image.mode == mode
    assert ds.describe()["channels"] == channels


def test_sixteen_bit_scaled(ds: FolderDataset, tree: Path) -> None:
    a = _arr(_by_file(ds)["dogs/deep16.png"].image)
    assert a.min() < 30 and a.max() > 225  # a full 0..255 ramp, not all black or all white
    # at its own size nothing is resampled: values are exactly the 16-bit ones / 257
    full = _arr(load_image(tree / "dogs/deep16.png", 32, "crop", channels=1))
    expect = np.rint(np.linspace(0, 65535, 32) / 257)
    assert np.abs(full - expect[None, :]).max() <= 1
    mem = Image.fromarray(np.full((8, 8), 32896, np.uint16))
    assert mem.mode == "I;16"
    assert np.all(_arr(load_image(mem, 8, channels=1)) == 128)


def test_alpha_composited_on_white(ds: FolderDataset) -> None:
    items = _by_file(ds)
    for name, right in [("dogs/alpha.png", (255, 0, 0)), ("birds/pal.png", (0, 0, 255))]:
        a = _arr(items[name].image)
        assert np.abs(a[:, :6] - 255).max() <= 2, name  # transparent half -> white
        assert np.abs(a[:, -6:] - right).max() <= 2, name


def test_fit_modes_differ_and_are_square(tree: Path) -> None:
    out = {fit: load_image(tree / "cats/wide.png", 16, fit) for fit in ("crop", "pad", "resize")}
    for im in out.values():
        assert im.size == (16, 16) and im.mode == "RGB"
    arrs = {k: _arr(v) for k, v in out.items()}
    assert not np.array_equal(arrs["crop"], arrs["pad"])
    assert not np.array_equal(arrs["crop"], arrs["resize"])
    assert not np.array_equal(arrs["pad"], arrs["resize"])
    # resize squashes the red and blue quarters in; crop keeps only the middle noise
    assert np.abs(arrs["resize"][:, 0] - (255, 0, 0)).max() <= 10
    assert np.abs(arrs["crop"][:, 0] - (255, 0, 0)).max() > 50
    # pad: bars above and below, each row the same colour
    assert (arrs["pad"][0] == arrs["pad"][0, 0]).all()


def test_upscale_and_exact_size() -> None:
    small = Image.fromarray(_noise(5, 9))
    for fit in ("crop", "pad", "resize"):
        assert load_image(small, 64, fit).size == (64, 64)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("I;16B", (10, 6), 1000),
        Image.fromarray(np.arange(60, dtype=np.int32).reshape(6, 10) * 1000),
        Image.fromarray(np.linspace(0, 1, 60, dtype=np.float32).reshape(6, 10)),
        Image.new("CMYK", (10, 6), (0, 255, 0, 0)),
        Image.new("1", (10, 6), 1),
        Image.new("LA", (10, 6), (0, 0)),
        Image.new("L", (10, 6), 7),
        Image.new("YCbCr", (10, 6), (100, 120, 130)),
    ],
    ids=lambda im: im.mode,
)
@pytest.mark.parametrize("channels", [1, 3])
def test_load_image_modes(image: Image.Image, channels: int) -> None:
    out = load_image(image, 8, "crop", channels)
    assert out.size == (8, 8) and out.mode == ("RGB" if channels == 3 else "L")
    if image.mode == "LA":  # fully transparent -> white
        assert _arr(out).min() == 255
    if image.mode == "I":  # 0..59000 int32: fills the 8-bit range
        assert _arr(out).max() > 200


def test_exif_orientation_applied() -> None:
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 20:] = 255  # left black, right white
    plain = Image.fromarray(a)
    rotated = Image.open(io.BytesIO(_png_with_orientation(plain, 6)))
    got = _arr(load_image(rotated, 8, "resize"))
    # orientation 6 = rotate 90 degrees clockwise for display: the white half ends up at the bottom
    assert got[:2].max() < 30 and got[-2:].min() > 225
    assert not np.array_equal(got, _arr(load_image(plain, 8, "resize")))


def _png_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "PNG", exif=exif)
    return buf.getvalue()


def test_bad_files_warned_once_each(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="imagesynth"):
        FolderDataset(tree, size=8)
    messages = [r.getMessage() for r in caplog.records if r.name == "imagesynth"]
    for bad in BAD:
        assert sum(m.startswith(f"skipping {bad}: ") for m in messages) == 1, messages
    assert sum(m.startswith("skipped ") for m in messages) == 1
    assert f"skipped 2 of 10 files in {tree} (unreadable or truncated)" in messages
    assert any("truncated" in m for m in messages if m.startswith("skipping birds/trunc.png"))
    assert sum("metadata.jsonl line" in m for m in messages) == 2  # bad JSON, no file_name
    assert len(messages) == 5
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_truncated_large_jpeg_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # big enough that the JPEG draft (reduced-scale decode) path is taken at size 8
    Image.fromarray(_noise(8, 8)).save(tmp_path / "ok.png")
    buf = io.BytesIO()
    Image.fromarray(_noise(200, 160)).save(buf, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with caplog.at_level(logging.WARNING, logger="imagesynth"):
        ds = FolderDataset(tmp_path, size=8)
    assert len(ds) == 1 and ds.skipped == 1
    assert any(r.getMessage().startswith("skipping cut.jpg: ") for r in caplog.records)


def test_no_classes_when_flat(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.PNG")  # upper-case extension
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "b.jpeg")
    ds = FolderDataset(tmp_path, size=8)
    assert ds.class_names == [] and ds.num_classes == 0
    assert [(i.attributes["file"], i.label, i.attributes["class"]) for i in ds] == [
        ("a.PNG", None, None),
        ("b.jpeg", None, None),
    ]


def test_mixed_layout_root_class(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "top.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "sub/deeper/x.png")  # class = first folder only
    ds = FolderDataset(tmp_path, size=8)
    assert ds.class_names == ["_root", "sub"]
    assert [(i.attributes["class"], i.label) for i in ds] == [("sub", 1), ("_root", 0)]


def test_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as e:
        FolderDataset(missing)
    assert str(missing) in str(e.value)
    file = tmp_path / "f.png"
    Image.new("RGB", (8, 8)).save(file)
    with pytest.raises(DataError, match="not a directory") as e:
        FolderDataset(file)
    assert str(file) in str(e.value)
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(empty / ".hidden/x.png")
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found") as e:
        FolderDataset(empty)
    assert str(empty) in str(e.value) and ".png" in str(e.value) and ".webp" in str(e.value)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    (junk / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 2 image files") as e:
        FolderDataset(junk)
    assert str(junk) in str(e.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fit": "zoom"}, "fit must be one of crop, pad, resize; got 'zoom'"),
        ({"channels": 2}, "channels must be 1"),
        ({"split": "val"}, "split must be one of all, train, test; got 'val'"),
        ({"test_fraction": 0}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"test_fraction": True}, "test_fraction"),
        ({"size": 4}, "size must be an integer in 8..1024, got 4"),
    ],
)
def test_bad_options(tree: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(DataError, match=match):
        FolderDataset(tree, **kwargs)


def test_splits_disjoint_and_covering(tree: Path) -> None:
    train = FolderDataset(tree, size=8, split="train", test_fraction=0.3)
    test = FolderDataset(tree, size=8, split="test", test_fraction=0.3)
    a = {i.attributes["file"] for i in train}
    b = {i.attributes["file"] for i in test}
    assert a and b and not a & b
    assert a | b == set(GOOD)
    assert train.class_names == test.class_names  # labels agree across splits
    again = FolderDataset(tree, size=8, split="test", test_fraction=0.3)
    assert {i.attributes["file"] for i in again} == b
    other = FolderDataset(tree, size=8, split="test", test_fraction=0.3, seed=1)
    assert {i.attributes["file"] for i in other} != b


def test_cache_identical_and_reads_once(tree: Path, tmp_path: Path) -> None:
    cached = FolderDataset(tree, size=16, cache=True)
    fresh = FolderDataset(tree, size=16, cache=False)
    for x, y in zip(cached, fresh, strict=True):
        assert x.attributes == y.attributes and x.caption == y.caption
        assert np.array_equal(_arr(x.image), _arr(y.image))
    # callers get copies: drawing on one item does not change the next read
    first = cached[0].image
    first.paste((1, 2, 3), (0, 0, 16, 16))
    assert np.array_equal(_arr(cached[0].image), _arr(fresh[0].image))
    # once cached, the files are not needed any more
    Image.new("RGB", (8, 8), "red").save(tmp_path / "x.png")
    small = FolderDataset(tmp_path, size=8)  # cache=None: small, so cached
    (tmp_path / "x.png").unlink()
    assert small[0].image.size == (8, 8)
    assert small._cache is not None


def test_uncached_vanished_file_is_data_error(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "x.png")
    ds = FolderDataset(tmp_path, size=8, cache=False)
    (tmp_path / "x.png").unlink()
    with pytest.raises(DataError, match=r"x\.png"):
        ds[0]


def test_deterministic(tree: Path) -> None:
    a = FolderDataset(tree, size=16, fit="pad", cache=False)
    b = FolderDataset(tree, size=16, fit="pad", cache=False)
    for x, y in zip(a, b, strict=True):
        assert x.attributes == y.attributes and x.label == y.label
        assert np.array_equal(_arr(x.image), _arr(y.image))


def test_get_dataset_spec(tree: Path) -> None:
    ds = get_dataset(f"folder:{tree}", size=8, split="train")
    assert isinstance(ds, FolderDataset) and ds.size == 8
    with pytest.raises(DataError, match="no option 'zoom'"):
        get_dataset(f"folder:{tree}", zoom=2)
