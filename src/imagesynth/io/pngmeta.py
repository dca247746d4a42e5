"""PNG generation metadata: AUTOMATIC1111's `parameters` text and our exact `imagesynth` JSON.

Every image a command writes carries both, so it can be regenerated from itself:

    a red circle on a white background
    Negative prompt: blurry
    Steps: 20, Sampler: DPM++ 2M, CFG scale: 3.0, Seed: 7, Size: 32x32, Model: t2i

Reading walks the PNG chunks itself (no pixel decoding) and tolerates garbage: bad CRCs,
truncated files, oversize or bomb-compressed chunks and broken JSON are skipped, never raised.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .atomic import atomic_path, to_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 1 << 20  # a text chunk (raw or decompressed) above 1 MiB is ignored
MAX_READ_BYTES = 64 << 20  # never read more than this much of a file looking for chunks
METADATA_VERSION = 1

# our JSON key -> AUTOMATIC1111 label, in A1111's order; other keys follow, title-cased
A1111_LABELS = {
    "steps": "Steps",
    "sampler": "Sampler",
    "schedule": "Schedule type",
    "cfg_scale": "CFG scale",
    "seed": "Seed",
    "size": "Size",
    "model_hash": "Model hash",
    "model": "Model",
    "denoising_strength": "Denoising strength",
}
_LABEL_TO_KEY = {v: k for k, v in A1111_LABELS.items()}
_NOT_IN_SETTINGS = {"prompt", "negative_prompt", "width", "height"}
# A1111's parser: `Key: value` pairs, value either a JSON string or up to the next comma
_PAIR_RE = re.compile(r'\s*([\w][\w \-/+.()]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        text = repr(value)  # keep "3.0" so a round trip returns a float
    elif isinstance(value, (dict, list, tuple)):
        text = to_json(value)
    else:
        text = str(value)
    if any(c in text for c in ',:"\n') or text != text.strip():
        return json.dumps(text)
    return text


def format_parameters(params: Mapping[str, Any]) -> str:
    """AUTOMATIC1111 `parameters` text from our params dict (prompt, negative_prompt, ...)."""
    lines = [str(params.get("prompt") or "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    settings: dict[str, Any] = {}
    if "size" not in params and "width" in params and "height" in params:
        settings["Size"] = f"{params['width']}x{params['height']}"
    for key, value in params.items():
        if key in _NOT_IN_SETTINGS or value is None:
            continue
        label = A1111_LABELS.get(key) or key.replace("_", " ").capitalize()
        settings[label] = value
    order = list(A1111_LABELS.values())
    ranked = sorted(settings, key=lambda k: order.index(k) if k in order else len(order))
    lines.append(", ".join(f"{k}: {_format_value(settings[k])}" for k in ranked))
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    text = text.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text[1:-1]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _is_settings_line(line: str) -> bool:
    """A1111 takes a last line with >= 3 `Key: value` pairs; we also take 1-2 known labels."""
    pairs = _PAIR_RE.findall(line)
    if len(pairs) >= 3:
        return True
    known = set(A1111_LABELS.values())
    return bool(pairs) and all(label.strip() in known for label, _ in pairs)


def parse_parameters(text: str) -> dict[str, Any]:
    """Parse AUTOMATIC1111 `parameters` text into a dict (labels mapped back to our keys)."""
    lines = text.strip().split("\n")
    out: dict[str, Any] = {}
    settings_line = ""
    if lines and _is_settings_line(lines[-1]):
        settings_line = lines.pop()
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out["prompt"] = "\n".join(prompt)
    out["negative_prompt"] = "\n".join(negative)
    for label, value in _PAIR_RE.findall(settings_line):
        label = label.strip()
        key = _LABEL_TO_KEY.get(label, label.lower().replace(" ", "_"))
        out[key] = _parse_value(value)
    size = out.get("size")
    if isinstance(size, str) and re.fullmatch(r"\d+x\d+", size):
        w, h = size.split("x")
        out["width"], out["height"] = int(w), int(h)
    return out


def save_png(image: Image.Image, path: str | os.PathLike, params: Mapping[str, Any]) -> Path:
    """Write `image` as PNG carrying `params` as A1111 `parameters` and `imagesynth` JSON."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", format_parameters(params))  # iTXt if not latin-1
    info.add_itxt("imagesynth", to_json({"metadata_version": METADATA_VERSION, **params}))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def png_bytes(image: Image.Image, params: Mapping[str, Any]) -> bytes:
    """The same PNG as `save_png`, in memory (for the server)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", format_parameters(params))
    info.add_itxt("imagesynth", to_json({"metadata_version": METADATA_VERSION, **params}))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


@dataclass
class PngMetadata:
    """What a PNG says about how it was made; empty fields when it says nothing usable."""

    text: dict[str, str] = field(default_factory=dict)  # every readable text chunk
    parameters: str | None = None  # the raw A1111 text
    params: dict[str, Any] = field(default_factory=dict)  # parsed: ours if present, else A1111
    imagesynth: dict[str, Any] | None = None  # our exact JSON
    problems: list[str] = field(default_factory=list)  # chunks skipped, and why


def _inflate(data: bytes) -> bytes | None:
    """zlib-decompress at most MAX_TEXT_BYTES (a decompression bomb gives None)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_TEXT_BYTES + 1)
    except zlib.error:
        return None
    return None if len(out) > MAX_TEXT_BYTES or d.unconsumed_tail else out


def _text_chunk(ctype: bytes, data: bytes) -> tuple[str, str] | str:
    """(keyword, text) of a tEXt / zTXt / iTXt chunk, or a reason string when unusable."""
    key, sep, rest = data.partition(b"\x00")
    if not sep or not 1 <= len(key) <= 79:
        return "bad keyword"
    keyword = key.decode("latin-1")
    if ctype == b"tEXt":
        return keyword, rest.decode("latin-1")
    if ctype == b"zTXt":
        raw = _inflate(rest[1:])
        if raw is None:
            return "bad or oversize compressed text"
        return keyword, raw.decode("latin-1")
    # iTXt: compression flag, method, language\0, translated keyword\0, text
    if len(rest) < 2:
        return "truncated iTXt"
    flag, body = rest[0], rest[2:]
    parts = body.split(b"\x00", 2)
    if len(parts) < 3:
        return "truncated iTXt"
    payload = parts[2]
    if flag:
        payload = _inflate(payload)
        if payload is None:
            return "bad or oversize compressed text"
    return keyword, payload.decode("utf-8", errors="replace")


def read_png_metadata(source: str | os.PathLike | bytes) -> PngMetadata:
    """Read generation metadata from a PNG path or bytes; never raises on bad content."""
    if isinstance(source, bytes):
        stream: Any = io.BytesIO(source)
    else:
        stream = open(source, "rb")  # noqa: SIM115  (closed below)
    meta = PngMetadata()
    try:
        if stream.read(8) != PNG_SIGNATURE:
            meta.problems.append("not a PNG file")
            return meta
        consumed = 8
        while consumed < MAX_READ_BYTES:
            head = stream.read(8)
            if len(head) < 8:
                meta.problems.append("file ends before IEND")
                break
            length, ctype = struct.unpack(">I4s", head)
            consumed += 12 + length
            if ctype in (b"tEXt", b"zTXt", b"iTXt") and length <= 4 * MAX_TEXT_BYTES:
                data = stream.read(length)
                crc = stream.read(4)
                if len(data) < length or len(crc) < 4:
                    meta.problems.append(f"truncated {ctype.decode('latin-1')} chunk")
                    break
                if struct.unpack(">I", crc)[0] != zlib.crc32(ctype + data) & 0xFFFFFFFF:
                    meta.problems.append(f"bad CRC in {ctype.decode('latin-1')} chunk")
                    continue
                parsed = _text_chunk(ctype, data)
                if isinstance(parsed, str):
                    meta.problems.append(parsed)
                elif len(parsed[1]) > MAX_TEXT_BYTES:
                    meta.problems.append(f"oversize text chunk {parsed[0]!r}")
                else:
                    meta.text.setdefault(parsed[0], parsed[1])
            elif ctype == b"IEND":
                break
            else:
                if ctype in (b"tEXt", b"zTXt", b"iTXt"):
                    meta.problems.append(f"oversize {ctype.decode('latin-1')} chunk skipped")
                stream.seek(length + 4, io.SEEK_CUR)  # skip data + CRC without reading
    finally:
        stream.close()
    meta.parameters = meta.text.get("parameters")
    if meta.parameters is not None:
        try:
            meta.params = parse_parameters(meta.parameters)
        except Exception as exc:  # a parser bug must not break reading an image
            meta.problems.append(f"unparseable parameters: {exc}")
    raw_json = meta.text.get("imagesynth")
    if raw_json is not None:
        try:
            value = json.loads(raw_json)
            if isinstance(value, dict):
                meta.imagesynth = value
                meta.params = {k: v for k, v in value.items() if k != "metadata_version"}
            else:
                meta.problems.append("imagesynth chunk is not a JSON object")
        except json.JSONDecodeError as exc:
            meta.problems.append(f"imagesynth chunk is not valid JSON ({exc.msg})")
    return meta
