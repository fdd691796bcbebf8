"""Image checks and fingerprints of the filter stage: header-first size check, full decode, pHash, colour signature.

The pixel count is read from the header (PIL's Image.open is lazy) BEFORE anything is decoded, so a
decompression bomb costs nothing; a full `.load()` then catches truncated or corrupt files (PIL refuses
truncated images unless told otherwise, which we never do).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
from PIL import Image

# Signature grid: mean RGB of GRID x GRID cells; pHash works on grayscale, this keeps the colours.
GRID = 4


@dataclass
class ImageVerdict:
    reason: str | None  # drop reason or None
    width: int = 0
    height: int = 0
    phash: str = ""  # 16 hex digits
    colour_sig: str = ""  # GRID*GRID*3 bytes as hex, see colour_signature
    format: str = ""  # PIL format name ("JPEG", "PNG"...)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def colour_signature(img: Image.Image) -> str:
    """Mean RGB of a GRID x GRID grid (box-filtered), one byte per channel per cell, as hex."""
    small = img.convert("RGB").resize((GRID, GRID), Image.Resampling.BOX)
    return small.tobytes().hex()


def signature_values(sig: str) -> list[int]:
    return list(bytes.fromhex(sig))


def inspect_image(data: bytes, *, max_pixels: int, min_side: int, max_aspect_ratio: float) -> ImageVerdict:
    """Judge one image's bytes; fingerprints are only computed for images that pass."""
    try:
        with warnings.catch_warnings():
            # PIL warns (and raises above 2x MAX_IMAGE_PIXELS) on huge headers: our own limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return ImageVerdict("too_many_pixels")
    except Exception:  # UnidentifiedImageError, SyntaxError from broken headers, ...
        return ImageVerdict("corrupt_image")
    w, h = img.size
    fmt = img.format or ""
    if w * h > max_pixels:
        return ImageVerdict("too_many_pixels", w, h, format=fmt)
    try:
        img.load()
    except Exception:  # OSError "image file is truncated", decoder errors
        return ImageVerdict("corrupt_image", w, h, format=fmt)
    if min(w, h) < min_side:
        return ImageVerdict("too_small", w, h, format=fmt)
    if max(w, h) / max(1, min(w, h)) > max_aspect_ratio:
        return ImageVerdict("aspect_ratio", w, h, format=fmt)
    return ImageVerdict(None, w, h, str(imagehash.phash(img)), colour_signature(img), fmt)


def to_jpeg(data: bytes, quality: int = 95) -> bytes:
    """Original bytes if they already are a JPEG, else a JPEG re-encoding (the shard contract is <uid>.jpg)."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode not in ("RGB", "L"):
        # Transparent pixels go on white, not black: what a browser would show on a page.
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, (255, 255, 255))
        img.paste(rgba, mask=rgba.split()[3])
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()
