"""Image decoding on the training device: batched JPEG decode + resize + normalise, same output as `preprocess`.

Why: PIL decode+resize does about 205 images/s per core (measured on an H200 host), so 16 loader cores cannot
feed a ViT-B/32 that consumes 4,700+ samples/s; torchvision's `decode_jpeg(device="cuda")` on a batch
(nvJPEG) measured 10.4k images/s. In "raw" loader mode (`training.data.make_loader(..., raw=True)`) the
loader workers only parse the tar, check the caption and the image header, and ship the undecoded bytes packed
in one `RawImages`; the trainer calls `decode_batch` on its device:

    mode = choose_decode(tc.decode, device)                   # "gpu" or "cpu"
    loader = make_loader(..., raw=(mode == "gpu"))
    images, tokens, info = next(batches)
    if mode == "gpu":
        dec = decode_batch(images, image_size, device)         # dec.images on device, dec.keep, dec.errors
        tokens = tokens[dec.keep]; images = dec.images          # drop the (rare) undecodable samples

What `decode_batch` computes, per image, mirrors training/transform.py's `preprocess` (the one preprocessing
shared with evaluation): RGB, the WHOLE image resized to image_size x image_size (no crop) with bicubic
interpolation, then (x/255 - CLIP mean) / CLIP std, float32 (3, s, s).
- JPEG decoding: torchvision's CPU decoder is libjpeg-turbo like PIL's and gives identical pixels; nvJPEG on a
  GPU may differ by a level or two in some pixels (IDCT and chroma upsampling differ slightly).
- Resize: torch's antialiased bicubic uses PIL's kernel (a = -0.5, support widened by the downscale factor).
  Like PIL it runs as a horizontal then a vertical pass, each rounded and clipped to uint8 levels (the clip
  matters at sharp edges, where bicubic overshoots). PIL computes in fixed point, torch in float, so a pixel
  can still differ by ONE uint8 level: after normalisation at most 1 / (255 * min(std)) = 0.0150.
  tests/test_training_decode.py checks exactly that bound on CPU, on photos-like images and on the synthetic
  scenes (flat colours, sharp edges).
- Anything that is not a JPEG (shards may hold PNG/WebP bytes under the `jpg` key) or that torchvision cannot
  decode (CMYK on some nvJPEG builds, unusual subsampling) falls back to PIL + `preprocess` per sample, which is
  exact; a sample PIL cannot decode either is skipped and reported in `errors` (its index is not in `keep`).
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image

from training.transform import MEAN, STD, preprocess

__all__ = ["DecodedBatch", "RawImages", "choose_decode", "decode_batch", "gpu_decode_available", "is_jpeg",
           "jpeg_is_complete"]
log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI marker followed by the first segment's marker


@dataclass
class RawImages:
    """A batch of undecoded image files packed into ONE uint8 tensor plus offsets.

    One tensor instead of a list of per-image tensors because DataLoader workers pass every tensor through its
    own shared-memory segment and file descriptor: 256 small tensors per batch would cost 256 of each.
    Image i is data[offsets[i]:offsets[i + 1]]."""

    data: torch.Tensor  # uint8 (total_bytes,)
    offsets: torch.Tensor  # int64 (n + 1,)

    @classmethod
    def pack(cls, blobs: Sequence[bytes]) -> RawImages:
        sizes = torch.tensor([0] + [len(b) for b in blobs], dtype=torch.int64)
        joined = b"".join(blobs)
        data = torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
        return cls(data, torch.cumsum(sizes, 0))

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        """A zero-copy view of image i's bytes."""
        return self.data[int(self.offsets[i]): int(self.offsets[i + 1])]

    def tensors(self) -> list[torch.Tensor]:
        return [self[i] for i in range(len(self))]

    def pin_memory(self) -> RawImages:
        """DataLoader(pin_memory=True) calls this: page-locked bytes copy to the GPU faster."""
        return RawImages(self.data.pin_memory(), self.offsets)


class DecodedBatch(NamedTuple):
    images: torch.Tensor  # float32 (len(keep), 3, s, s) on the requested device
    keep: list[int]  # indices (into the input batch) of the decoded images, in order
    errors: list[tuple[int, str]]  # (index, repr of the error) of the samples that were skipped


def is_jpeg(blob: torch.Tensor | bytes) -> bool:
    head = bytes(blob[:3].tolist()) if isinstance(blob, torch.Tensor) else bytes(blob[:3])
    return head == JPEG_MAGIC


def jpeg_is_complete(blob: bytes) -> bool:
    """Whether a JPEG has an end-of-image marker after its last start-of-scan: a cut download does not.

    Inside entropy-coded data every 0xFF byte is stuffed (FF 00), so FF D9 there can only be the real EOI; an
    EXIF thumbnail's EOI comes before the main image's scans, and trailing bytes after the EOI are tolerated.
    A byte search, no decoding: cheap enough for the loader workers in raw mode."""
    return blob.rfind(b"\xff\xd9") > blob.rfind(b"\xff\xda") >= 0


def _as_tensors(raw: RawImages | Sequence[torch.Tensor | bytes]) -> list[torch.Tensor]:
    if isinstance(raw, RawImages):
        return raw.tensors()
    out = []
    for blob in raw:
        if isinstance(blob, torch.Tensor):
            out.append(blob.reshape(-1).to("cpu", torch.uint8))
        else:
            out.append(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    return out


def _decode_jpegs(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 (3, h, w) per input on `device`, None where torchvision cannot decode it.

    One batched call first (nvJPEG decodes a batch far faster than one call per image); a failure anywhere makes
    the batched call raise, so only then fall back to one call per image to find the culprits."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not blobs:
        return []
    try:
        out = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
        return list(out)
    except Exception as exc:  # noqa: BLE001 - any decoder error: locate the bad images one by one
        log.debug("batched decode_jpeg failed (%r); decoding one by one", exc)
    result: list[torch.Tensor | None] = []
    for blob in blobs:
        try:
            result.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - the caller falls back to PIL for this one
            result.append(None)
    return result


def _resize_like_pil(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of float (n, 3, h, w) holding uint8 levels, as PIL resizes a uint8 image.

    PIL resamples horizontally, rounds and CLIPS to [0, 255], then resamples vertically and rounds and clips
    again. The clip matters at sharp edges, where bicubic's negative lobes overshoot: one 2-D float resize
    differs there by up to ~6 levels, the same two passes by at most one level. A pass along an unchanged axis
    would be an identity, so each pass is skipped when its axis already has the target length."""
    h, w = x.shape[-2:]
    if w != size:
        x = F.interpolate(x, size=(h, size), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    if h != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    return x


def _resize_normalise(images: list[torch.Tensor], image_size: int, device: torch.device) -> list[torch.Tensor]:
    """uint8 (3, h, w) images -> float32 (3, s, s), normalised. Same-sized images are resized as one batch."""
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_shape.setdefault(tuple(img.shape[1:]), []).append(i)
    out: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for shape, idx in by_shape.items():
        x = torch.stack([images[i] for i in idx]).to(device=device, dtype=torch.float32)
        if shape != (image_size, image_size):  # preprocess skips the resize in this case too
            x = _resize_like_pil(x, image_size)
        x = (x / 255.0 - mean) / std
        for j, i in enumerate(idx):
            out[i] = x[j]
    return out


def decode_batch(raw: RawImages | Sequence[torch.Tensor | bytes], image_size: int,
                 device: str | torch.device = "cpu") -> DecodedBatch:
    """Decode a batch of image files on `device` into normalised (k, 3, image_size, image_size) float32.

    JPEGs are decoded by torchvision in one batched call on `device`; other formats and JPEGs torchvision
    rejects go through PIL + `preprocess` on the CPU; images neither can decode are skipped (see `errors`)."""
    device = torch.device(device)
    blobs = _as_tensors(raw)
    jpeg_idx = [i for i, b in enumerate(blobs) if is_jpeg(b)]
    decoded: dict[int, torch.Tensor] = {}
    for i, img in zip(jpeg_idx, _decode_jpegs([blobs[i] for i in jpeg_idx], device)):
        if img is not None:
            decoded[i] = img
    ready: dict[int, torch.Tensor] = {}
    if decoded:
        order = sorted(decoded)
        for i, x in zip(order, _resize_normalise([decoded[i] for i in order], image_size, device)):
            ready[i] = x
    errors: list[tuple[int, str]] = []
    for i, blob in enumerate(blobs):
        if i in ready:
            continue
        try:  # PNG/WebP under the jpg key, or a JPEG torchvision refused: PIL is the reference
            with Image.open(io.BytesIO(blob.numpy().tobytes())) as img:
                ready[i] = preprocess(img, image_size).to(device)
        except Exception as exc:  # noqa: BLE001 - undecodable: skipped, reported to the caller
            errors.append((i, repr(exc)))
    keep = sorted(ready)
    images = (torch.stack([ready[i] for i in keep]) if keep
              else torch.empty((0, 3, image_size, image_size), dtype=torch.float32, device=device))
    return DecodedBatch(images, keep, errors)


def _tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@functools.cache
def gpu_decode_available(device: str) -> bool:
    """Whether torchvision can decode a JPEG on `device` (a CUDA device): tried once per device and cached."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        blob = torch.frombuffer(bytearray(_tiny_jpeg()), dtype=torch.uint8)
        out = decode_jpeg([blob], mode=ImageReadMode.RGB, device=dev)
        return tuple(out[0].shape) == (3, 16, 16) and out[0].device.type == "cuda"
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision build without nvJPEG
        log.warning("torchvision cannot decode JPEGs on %s (%r): decoding on the CPU", device, exc)
        return False


def choose_decode(setting: str, device: str | torch.device) -> str:
    """TrainConfig.decode ("auto" | "cpu" | "gpu") and the rank's device -> "cpu" or "gpu".

    "auto" means gpu when `device` is CUDA and torchvision can decode there, else cpu; an explicit "gpu" that
    cannot be honoured is an error rather than a silent 20x slowdown."""
    if setting not in ("auto", "cpu", "gpu"):
        raise ValueError(f"decode setting {setting!r} is not one of ['auto', 'cpu', 'gpu']")
    if setting == "cpu":
        return "cpu"
    dev = torch.device(device)
    can = dev.type == "cuda" and gpu_decode_available(str(dev))
    if setting == "gpu" and not can:
        raise ValueError(f"decode=gpu needs a CUDA device on which torchvision can decode JPEGs; got {dev} "
                         f"(use decode=auto or decode=cpu)")
    return "gpu" if can else "cpu"
