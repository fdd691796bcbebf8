"""Image checks and fingerprints of the filter stage: byte size, header-first pixel check, full decode, pHash,
colour signature.

The file size is checked before anything is parsed, and the pixel count is read from the header (PIL's
Image.open is lazy) BEFORE anything is decoded, so a decompression bomb costs nothing; a full `.load()` then
catches truncated or corrupt files (PIL refuses truncated images unless told otherwise, which we never do).

`phash_hex` is imagehash.phash bit for bit (benchmarks/phash_vs_imagehash.py checks it on the synthetic web and
on adversarial images, and measures both):

    PYTHONPATH=. .venv/bin/python benchmarks/phash_vs_imagehash.py --images 5000
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

# Signature grid: mean RGB of GRID x GRID cells; pHash works on grayscale, this keeps the colours.
GRID = 4
# pHash geometry (imagehash's defaults): 32x32 grayscale, the 8x8 lowest DCT frequencies, one bit each.
PHASH_SIZE, PHASH_LOW = 32, 8
# Rows 0..7 of the unnormalised DCT-II matrix scipy.fftpack.dct uses: y_k = 2 sum_n x_n cos(pi k (2n+1) / 2N).
# The 8x8 low-frequency block is then C @ P @ C.T: 2 small matrix products instead of two full 32-point DCTs.
_DCT_LOW = np.array([[2.0 * math.cos(math.pi * k * (2 * n + 1) / (2 * PHASH_SIZE)) for n in range(PHASH_SIZE)]
                     for k in range(PHASH_LOW)])
# Coefficients are below 4*255*1024 ~ 1e6, so the products and scipy's FFT path agree to ~1e-8; a coefficient
# closer than this to the median could fall on the other side in imagehash's arithmetic, so such an image is
# hashed by imagehash itself (in practice: exact ties, e.g. flat or symmetric images).
_TIE_TOLERANCE = 1e-6
# First bytes of the formats img2dataset leaves in its tars (and of what a rejected sample may hold).
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"BM", "bmp"))


@dataclass
class ImageVerdict:
    reason: str | None  # drop reason or None
    width: int = 0
    height: int = 0
    phash: str = ""  # 16 hex digits
    colour_sig: str = ""  # GRID*GRID*3 bytes as hex, see colour_signature
    format: str = ""  # PIL format name ("JPEG", "PNG"...)
    detail: str = ""  # why, in numbers, when dropped ("20x20: shorter side 20 < min_side 32")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_extension(data: bytes) -> str:
    """A WebDataset member extension for raw image bytes, from their magic number ("bin" if unknown)."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "bin"


def colour_signature(img: Image.Image) -> str:
    """Mean RGB of a GRID x GRID grid (box-filtered), one byte per channel per cell, as hex."""
    small = img.convert("RGB").resize((GRID, GRID), Image.Resampling.BOX)
    return small.tobytes().hex()


def signature_values(sig: str) -> list[int]:
    return list(bytes.fromhex(sig))


def phash_hex(img: Image.Image) -> str:
    """64-bit pHash as 16 hex digits, identical to str(imagehash.phash(img)).

    Same grayscale conversion and LANCZOS resize as imagehash (those decide the bits, so they stay PIL's);
    only the 8x8 low-frequency DCT block is computed, with two matrix products, instead of two full DCTs.
    """
    gray = img.convert("L").resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS)
    low = _DCT_LOW @ np.asarray(gray, dtype=np.float64) @ _DCT_LOW.T
    ordered = np.sort(low, axis=None)  # np.median's value (mean of the middle two of 64), without its overhead
    half = PHASH_LOW * PHASH_LOW // 2
    median = (ordered[half - 1] + ordered[half]) / 2
    if np.abs(low - median).min() <= _TIE_TOLERANCE:
        return str(imagehash.phash(img))
    return np.packbits(low > median).tobytes().hex()


def _check_bytes(n: int, min_bytes: int, max_bytes: int) -> ImageVerdict | None:
    if n < min_bytes:
        return ImageVerdict("too_few_bytes", detail=f"{n} bytes < min_bytes {min_bytes}")
    if max_bytes and n > max_bytes:
        return ImageVerdict("too_many_bytes", detail=f"{n} bytes > max_bytes {max_bytes}")
    return None


def inspect_image(data: bytes, *, max_pixels: int, min_side: int, max_aspect_ratio: float,
                  min_bytes: int = 0, max_bytes: int = 0) -> ImageVerdict:
    """Judge one image's bytes, cheapest check first; fingerprints are only computed for images that pass.

    max_bytes 0 means no upper limit on the file size.
    """
    if (verdict := _check_bytes(len(data), min_bytes, max_bytes)) is not None:
        return verdict
    try:
        with warnings.catch_warnings():
            # PIL warns (and raises above 2x MAX_IMAGE_PIXELS) on huge headers: our own limit decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return ImageVerdict("too_many_pixels", detail=str(exc)[:200])
    except Exception as exc:  # UnidentifiedImageError, SyntaxError from broken headers, ...
        return ImageVerdict("corrupt_image", detail=f"{type(exc).__name__}: {exc}"[:200])
    w, h = img.size
    fmt = img.format or ""
    if w * h > max_pixels:
        return ImageVerdict("too_many_pixels", w, h, format=fmt,
                            detail=f"{w}x{h} = {w * h} px > max_pixels {max_pixels}")
    try:
        img.load()
    except Exception as exc:  # OSError "image file is truncated", decoder errors
        return ImageVerdict("corrupt_image", w, h, format=fmt, detail=f"{type(exc).__name__}: {exc}"[:200])
    if min(w, h) < min_side:
        return ImageVerdict("too_small", w, h, format=fmt,
                            detail=f"{w}x{h}: shorter side {min(w, h)} < min_side {min_side}")
    ratio = max(w, h) / max(1, min(w, h))
    if ratio > max_aspect_ratio:
        return ImageVerdict("aspect_ratio", w, h, format=fmt,
                            detail=f"{w}x{h}: aspect ratio {ratio:.2f} > max_aspect_ratio {max_aspect_ratio:g}")
    return ImageVerdict(None, w, h, phash_hex(img), colour_signature(img), fmt)


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
