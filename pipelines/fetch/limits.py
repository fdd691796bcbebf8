"""The pixel cap, from the image header alone: a decompression bomb (a few hundred KB declaring gigapixels) is
refused before any decoder allocates its pixels.

`declared_size(prefix)` parses only the header with Pillow's lazy `Image.open` (it reads the format's
header chunks, never the pixel data). It is called on the first bytes of the body while the rest is still
unread, so a bomb usually costs one read of 64 KiB; a header that does not fit the prefix is parsed again
from the whole (byte-capped) body. Formats Pillow cannot parse give None: the decoder downstream
(img2dataset's OpenCV, capped by OPENCV_IO_MAX_IMAGE_PIXELS) is the second line of defence.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from pipelines.fetch.errors import TOO_MANY_PIXELS, FetchError

HEADER_PREFIX_BYTES = 64 * 1024

# Pillow warns (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that; we enforce our own cap on
# the declared size instead, so the warning only adds noise to worker logs.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) the header declares, or None if Pillow cannot read a header from `data`.

    Raises FetchError(too_many_pixels) when Pillow itself refuses the size (more than twice its
    MAX_IMAGE_PIXELS): the exact size is then unknown but certainly a bomb."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError as exc:
        raise FetchError(TOO_MANY_PIXELS, str(exc)) from None
    except Exception:  # noqa: BLE001 - any parse failure just means "not known from these bytes"
        return None


def check_pixels(data: bytes, max_pixels: int, url: str, final: bool) -> bool:
    """True once the header was read and is within the cap; False if it could not be read yet.

    With final=True (the whole body is in `data`) an unreadable header is left to the decoder."""
    size = declared_size(data)
    if size is None:
        return final
    w, h = size
    if w * h > max_pixels:
        raise FetchError(TOO_MANY_PIXELS, f"{url!r}: header declares {w}x{h} = {w * h} pixels, "
                                          f"over pipeline.download.max_image_pixels={max_pixels}")
    return True
