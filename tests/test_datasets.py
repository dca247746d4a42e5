import numpy as np
import pytest

from imagesynth.data import get_dataset, list_datasets, parse_data_spec
from imagesynth.data.digits import load_digits_arrays, split_indices
from imagesynth.data.export import export_dataset, preview_grid
from imagesynth.errors import DataError, ImagesynthError
from imagesynth.io.pngmeta import read_png_metadata


def _pixels(item):
    return np.asarray(item.image)


def test_registry_lists_all():
    assert [d.name for d in list_datasets()] == ["digits", "folder", "photos", "shapes", "textures"]
    assert parse_data_spec("folder:/a:b") == ("folder", "/a:b")
    with pytest.raises(ImagesynthError, match="expected one of: digits, folder, photos"):
        get_dataset("mnist")
    with pytest.raises(DataError, match="needs a path"):
        get_dataset("folder")
    with pytest.raises(DataError, match="takes no path"):
        get_dataset("digits:/x")
    with pytest.raises(DataError, match=r"no option 'colour'.*valid options"):
        get_dataset("digits", colour=1)


def test_digits_matches_scikit_learn():
    from sklearn.datasets import load_digits

    images, labels = load_digits_arrays()
    ref = load_digits()
    assert images.shape == (1797, 8, 8)
    np.testing.assert_array_equal(labels, ref.target)
    np.testing.assert_allclose(images / 255.0 * 16.0, ref.images, atol=0.04)


def test_digits_split_is_fixed_stratified_and_disjoint():
    s = split_indices()
    assert len(s["train"]) + len(s["test"]) == 1797
    assert not set(s["train"]) & set(s["test"])
    _, labels = load_digits_arrays()
    counts = np.bincount(labels[s["test"]], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~20 % of each class
    assert len(get_dataset("digits", split="test")) == len(s["test"])


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("resample", ["nearest", "bilinear"])
def test_digits_sizes(size, resample):
    ds = get_dataset("digits", size=size, resample=resample)
    item = ds[5]
    assert item.image.size == (size, size) and item.image.mode == "L"
    assert item.caption == f"a handwritten digit {item.label}" and 0 <= item.label < 10
    assert np.array_equal(
        _pixels(ds[5]), _pixels(get_dataset("digits", size=size, resample=resample)[5])
    )
    if resample == "nearest" and size == 16:  # nearest upscaling repeats each source pixel 2x2
        src = load_digits_arrays()[0][item.attributes["source_index"]]
        np.testing.assert_array_equal(_pixels(item)[::2, ::2], src)
    rgb = get_dataset("digits", size=size, channels=3)[0]
    assert rgb.image.mode == "RGB"


def test_digits_bad_options():
    for kw, match in [
        ({"size": 4}, "size"),
        ({"split": "val"}, "split"),
        ({"resample": "lanczos9"}, "resample"),
        ({"channels": 2}, "channels"),
    ]:
        with pytest.raises(DataError, match=match):
            get_dataset("digits", **kw)


@pytest.mark.parametrize("name", ["photos", "textures"])
def test_crops_are_seeded_and_any_size(name):
    a = get_dataset(name, size=48, seed=1)
    b = get_dataset(name, size=48, seed=1)
    c = get_dataset(name, size=48, seed=2)
    for i in (0, 7, 999):
        assert np.array_equal(_pixels(a[i]), _pixels(b[i]))
        assert a[i].image.size == (48, 48) and a[i].image.mode == "RGB"
    assert any(not np.array_equal(_pixels(a[i]), _pixels(c[i])) for i in range(5))
    assert not np.array_equal(
        _pixels(a[0]), _pixels(get_dataset(name, size=48, seed=1, split="test")[0])
    )
    labels = {a[i].label for i in range(60)}
    assert labels == set(range(a.num_classes))
    x0, y0, x1, y1 = a[3].attributes["box"]
    assert x1 - x0 == y1 - y0 > 0
    assert get_dataset(name, size=200)[0].image.size == (200, 200)


def test_photos_subset_and_errors():
    ds = get_dataset("photos", images="astronaut,coffee", size=32)
    assert ds.class_names == ["astronaut", "coffee"]
    with pytest.raises(ImagesynthError, match="unknown photos image 'dog'"):
        get_dataset("photos", images="dog")
    with pytest.raises(DataError, match="min_crop"):
        get_dataset("textures", min_crop=0.0)


def test_preview_and_export_round_trip(tmp_path):
    ds = get_dataset("shapes", size=32, label_mode="color")
    grid, idx = preview_grid(ds, n=10)
    assert idx == list(range(10)) and grid.size[0] > 32 * 3
    out = export_dataset(ds, tmp_path / "exp", n=12)
    back = get_dataset(f"folder:{out}", size=32)
    assert len(back) == 12
    by_caption = sorted(back[i].caption for i in range(12))
    assert by_caption == sorted(ds[i].caption for i in range(12))
    # export writes lossless PNGs: pixels identical, class = subfolder
    first = next(i for i in range(12) if back[i].attributes["file"].endswith("000000.png"))
    assert np.array_equal(_pixels(back[first]), _pixels(ds[0]))
    assert back.class_names[back[first].label] == ds.class_names[ds[0].label]
    meta = read_png_metadata(out / back[first].attributes["file"])
    assert meta.params["dataset"] == "shapes" and meta.params["index"] == 0
    with pytest.raises(DataError, match="not empty"):
        export_dataset(ds, out, n=1)
