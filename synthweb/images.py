"""The bytes behind each planned image URL: clean JPEGs, near duplicates, truncated JPEGs, non-image HTML and
decompression-bomb PNGs. Every function is deterministic in its inputs (same plan, same bytes)."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from synthweb.plan import ImageEntry
from synthweb.scenes import render

NON_IMAGE_HTML = (
    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Page not found</title></head><body>"
    "<h1>Oops! This image has moved</h1><p>Please sign in to view our gallery.</p>"
    "<a href=\"/\">Home</a></body></html>\n"
).encode()


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)  # no timestamps or EXIF: bytes depend on pixels and quality only
    return buf.getvalue()


def image_bytes(e: ImageEntry) -> bytes:
    """Bytes the server returns for `e` (callers skip entries with no file or a shared one)."""
    v = e.variant
    kind = v["kind"]
    if kind in ("clean", "truncated"):
        assert e.spec is not None and e.width and e.height
        data = _jpeg(render(e.spec, (e.width, e.height), seed=e.render_seed), v["quality"])
        if kind == "truncated":  # cut halfway through the scan: the header still parses, the pixels do not
            sos = data.find(b"\xff\xda")
            return data[: sos + (len(data) - sos) // 2]
        return data
    if kind == "near_dup":
        assert e.spec is not None
        # The original's pixels, rebuilt from its spec, size and render seed (the original shares them).
        img = render(e.spec, tuple(v["orig_size"]), seed=_orig_seed(e))
        if v["how"] == "resize":
            img = img.resize(tuple(v["size"]), Image.BICUBIC)
        elif v["how"] == "crop":
            img = img.crop(tuple(v["box"]))
        return _jpeg(img, v["quality"])
    if kind == "non_image":
        return NON_IMAGE_HTML
    if kind == "decompression_bomb":
        assert e.width is not None
        return bomb_png(e.width)
    raise ValueError(f"{e.url}: nothing to render for variant {kind!r}")


def _orig_seed(e: ImageEntry) -> int:
    seed = e.variant.get("orig_seed")
    if seed is None:
        raise ValueError(f"{e.url}: near duplicate without the original's render seed")
    return int(seed)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


_BOMB_CACHE: dict[int, bytes] = {}


def bomb_png(side: int) -> bytes:
    """A valid 1-bit grayscale PNG of side x side pixels, all black: side=40000 declares 1.6 gigapixels
    (200 MB raw) in ~200 KB. Built by hand because Pillow would have to hold the whole image in memory."""
    if side in _BOMB_CACHE:
        return _BOMB_CACHE[side]
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # width, height, bit depth 1, grayscale
    row = b"\x00" * (1 + side // 8)  # filter byte 0 + side/8 bytes of pixels
    comp = zlib.compressobj(9)
    parts, block = [], row * 1000
    for start in range(0, side, 1000):
        n = min(1000, side - start)
        parts.append(comp.compress(block if n == 1000 else row * n))
    parts.append(comp.flush())
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))
    _BOMB_CACHE[side] = data
    return data
