import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imagesynth.io.pngmeta import (
    format_parameters,
    parse_parameters,
    png_bytes,
    read_png_metadata,
    save_png,
)

PARAMS = {
    "prompt": "a red circle, at the top left\non a white background",
    "negative_prompt": "blurry, low quality",
    "steps": 20,
    "sampler": "DPM++ 2M",
    "cfg_scale": 3.0,
    "seed": 1234567890123,
    "width": 32,
    "height": 32,
    "model_hash": "1a2b3c4d5e",
    "model": "shapes-t2i",
    "note": 'has "quotes", commas: and colons',
}


def _chunk(ctype: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(ctype + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", crc)


def _insert_before_iend(png: bytes, chunks: bytes) -> bytes:
    i = png.rindex(b"IEND") - 4
    return png[:i] + chunks + png[i:]


def test_a1111_text_format():
    text = format_parameters(PARAMS)
    lines = text.split("\n")
    assert lines[0] == "a red circle, at the top left"
    assert lines[2] == "Negative prompt: blurry, low quality"
    assert lines[3].startswith("Steps: 20, Sampler: DPM++ 2M, CFG scale: 3.0, Seed: 1234567890123")
    assert "Size: 32x32, Model hash: 1a2b3c4d5e, Model: shapes-t2i" in lines[3]


def test_parse_round_trip():
    parsed = parse_parameters(format_parameters(PARAMS))
    for key in ("prompt", "negative_prompt", "steps", "sampler", "cfg_scale", "seed", "note"):
        assert parsed[key] == PARAMS[key], key
    assert (parsed["width"], parsed["height"]) == (32, 32)
    assert isinstance(parsed["cfg_scale"], float)


def test_parse_real_a1111_text():
    text = (
        "masterpiece, a cat\nNegative prompt: lowres\nSteps: 28, Sampler: Euler a, "
        "Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: abc123, "
        'Model: sd15, Lora hashes: "a: 1, b: 2", Version: v1.9.0'
    )
    p = parse_parameters(text)
    assert p["prompt"] == "masterpiece, a cat" and p["negative_prompt"] == "lowres"
    assert p["sampler"] == "Euler a" and p["schedule"] == "Karras" and p["cfg_scale"] == 7
    assert p["lora_hashes"] == "a: 1, b: 2" and (p["width"], p["height"]) == (512, 768)


def test_save_and_read_png(tmp_path):
    path = save_png(Image.new("RGB", (8, 8), (1, 2, 3)), tmp_path / "x.png", PARAMS)
    meta = read_png_metadata(path)
    assert meta.problems == []
    assert meta.imagesynth["seed"] == PARAMS["seed"] and meta.params["note"] == PARAMS["note"]
    assert meta.parameters == format_parameters(PARAMS)
    with Image.open(path) as im:  # Pillow sees the same chunks
        assert im.text["parameters"] == meta.parameters
    assert read_png_metadata(path.read_bytes()).imagesynth == meta.imagesynth


def test_unicode_prompt_round_trips(tmp_path):
    params = {"prompt": "un chat élégant 🐱 — 猫", "seed": 1}
    meta = read_png_metadata(save_png(Image.new("L", (4, 4)), tmp_path / "u.png", params))
    assert meta.params["prompt"] == params["prompt"]
    assert parse_parameters(meta.parameters)["prompt"] == params["prompt"]


def test_garbage_chunks_are_tolerated(tmp_path):
    good = png_bytes(Image.new("RGB", (4, 4)), {"prompt": "ok", "seed": 3})
    junk = b"".join(
        [
            _chunk(b"tEXt", b"noseparator"),
            _chunk(b"tEXt", b"x\x00bad crc", crc=123),
            _chunk(b"iTXt", b"broken"),
            _chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"a" * (8 << 20))),
            _chunk(b"zTXt", b"badz\x00\x00not zlib at all"),
            _chunk(b"tEXt", b"big\x00" + b"b" * (2 << 20)),
            _chunk(b"iTXt", b"imagesynth\x00\x00\x00\x00\x00{not json"),  # duplicate: first wins
        ]
    )
    meta = read_png_metadata(_insert_before_iend(good, junk))
    assert meta.imagesynth == {"metadata_version": 1, "prompt": "ok", "seed": 3}
    assert len(meta.problems) >= 5
    assert "big" not in meta.text and "bomb" not in meta.text


def test_broken_json_and_non_png(tmp_path):
    base = png_bytes(Image.new("RGB", (4, 4)), {"prompt": "p"})
    i = base.index(b"iTXtimagesynth") - 4  # drop our chunk, add a broken one
    n = struct.unpack(">I", base[i : i + 4])[0]
    stripped = base[:i] + base[i + 12 + n :]
    broken = _insert_before_iend(stripped, _chunk(b"iTXt", b"imagesynth\x00\x00\x00\x00\x00[1,"))
    meta = read_png_metadata(broken)
    assert meta.imagesynth is None and any("JSON" in p for p in meta.problems)
    assert meta.params["prompt"] == "p"  # falls back to the A1111 text
    assert read_png_metadata(b"GIF89a....").problems == ["not a PNG file"]
    assert read_png_metadata(base[:40]).problems  # truncated: no exception


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_reader_never_raises_on_random_bytes(data):
    read_png_metadata(b"\x89PNG\r\n\x1a\n" + data)


@settings(max_examples=40, deadline=None)
@given(
    prompt=st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), max_size=40),
    steps=st.integers(1, 1000),
    cfg=st.floats(0, 30, allow_nan=False),
)
def test_a1111_round_trip_property(prompt, steps, cfg):
    params = {"prompt": prompt.strip(), "steps": steps, "cfg_scale": cfg, "seed": 5}
    back = parse_parameters(format_parameters(params))
    assert back["steps"] == steps and back["seed"] == 5
    assert back["cfg_scale"] == pytest.approx(cfg)
