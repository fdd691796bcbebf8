"""Batched on-device decoding (training/decode.py) against the reference `preprocess`, and the raw loader mode.

The CPU tests run the GPU code path (torchvision decode + torch resize + normalise) with device="cpu"; the
CUDA test runs only where a GPU is present."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.schema import load_manifest
from training.data import make_loader, shard_uris
from training.decode import RawImages, choose_decode, decode_batch, gpu_decode_available, jpeg_is_complete
from training.tokenizer import train_from_manifest
from training.toydata import write_toy_dataset
from training.transform import STD, preprocess

# PIL resizes in fixed point and rounds to uint8 between its horizontal and vertical passes; torch resizes in
# float and rounds once, so a pixel may land one uint8 level away: 1/255 of the range, divided by the smallest
# CLIP std after normalisation. The JPEG decoders themselves agree bit for bit on the CPU (both libjpeg-turbo).
ONE_LEVEL = 1.0 / (255.0 * float(STD.min()))  # 0.0150


def _image(h: int, w: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A smooth image with some texture (JPEG-friendly, like photos and the synthetic scenes)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


def _encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _reference(blob: bytes, size: int) -> torch.Tensor:
    with Image.open(io.BytesIO(blob)) as img:
        return preprocess(img, size)


def test_decode_batch_matches_preprocess_within_one_level():
    size = 32
    # Downscaled, upscaled, non-square both ways, already at size (no resize), two of the same shape (batched
    # resize), grayscale JPEG, PNG under the jpg key (PIL fallback), garbage, and a JPEG cut in its scan data.
    shapes = [(64, 48), (20, 24), (57, 41), (32, 32), (64, 48), (300, 200)]
    blobs = [_encode(_image(h, w, i)) for i, (h, w) in enumerate(shapes)]
    blobs.append(_encode(_image(40, 50, 7, "L")))
    png = _encode(_image(45, 30, 8), "PNG")
    blobs.append(png)
    blobs.append(b"\xff\xd8\xff not really a jpeg")
    full = _encode(_image(50, 50, 9))
    blobs.append(full[: len(full) * 2 // 3])
    out = decode_batch(RawImages.pack(blobs), size, "cpu")
    assert out.keep == list(range(8)) and [i for i, _ in out.errors] == [8, 9]
    assert out.images.shape == (8, 3, size, size) and out.images.dtype == torch.float32
    ref = torch.stack([_reference(b, size) for b in blobs[:8]])
    diff = (out.images - ref).abs()
    assert diff.max() <= ONE_LEVEL + 1e-5, diff.amax(dim=(1, 2, 3))
    assert diff.mean() < 0.1 * ONE_LEVEL  # off-by-one pixels are rare
    assert torch.equal(out.images[3], ref[3])  # no resize: identical decode and normalisation
    assert torch.equal(out.images[7], ref[7])  # the PNG went through PIL + preprocess: exact
    # Plain lists of bytes or tensors work too, and an empty batch is an empty tensor.
    again = decode_batch([blobs[1], torch.frombuffer(bytearray(png), dtype=torch.uint8)], size)
    assert torch.equal(again.images, out.images[[1, 7]])
    empty = decode_batch([], size)
    assert empty.images.shape == (0, 3, size, size) and empty.keep == [] and empty.errors == []


def test_jpeg_completeness_check_needs_no_decode():
    jpeg = _encode(_image(40, 40, 3))
    assert jpeg_is_complete(jpeg) and jpeg_is_complete(jpeg + b"\x00" * 100)  # trailing bytes are tolerated
    scan = jpeg.index(b"\xff\xda")
    assert not jpeg_is_complete(jpeg[: scan + (len(jpeg) - scan) // 2])  # cut inside the scan data
    assert not jpeg_is_complete(jpeg[:scan])  # cut before the scan
    # A cut image whose EXIF thumbnail (a whole JPEG, EOI included) precedes the main scan is still caught.
    thumb = _encode(_image(8, 8, 4))
    with_thumb = jpeg[:2] + b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb + jpeg[2:]
    assert jpeg_is_complete(with_thumb)
    assert not jpeg_is_complete(with_thumb[: len(with_thumb) - 40])


def test_raw_images_pack_round_trip():
    blobs = [b"abc", b"", b"\x00\xff" * 10]
    raw = RawImages.pack(blobs)
    assert len(raw) == 3 and raw.data.dtype == torch.uint8 and raw.data.numel() == 23
    assert [bytes(t.tolist()) for t in raw.tensors()] == blobs
    assert len(RawImages.pack([])) == 0


def test_choose_decode():
    assert choose_decode("cpu", "cpu") == "cpu"
    assert choose_decode("auto", "cpu") == "cpu"
    assert choose_decode("auto", torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="decode=gpu needs a CUDA device"):
        choose_decode("gpu", "cpu")
    with pytest.raises(ValueError, match="not one of"):
        choose_decode("fast", "cpu")
    if torch.cuda.is_available():
        assert choose_decode("auto", "cuda") == ("gpu" if gpu_decode_available("cuda") else "cpu")


def test_raw_loader_mode_then_decode_batch_matches_the_cpu_loader(tmp_path):
    uri = write_toy_dataset(str(tmp_path), n=24, samples_per_shard=8, px=(30, 50), faults={2: "png", 5: "gray"})
    tok = train_from_manifest(load_manifest(uri), uri, 300, 16)
    kw = {"resampled": False, "epochs": 1, "partial": True, "num_workers": 0, "shuffle_buffer": 4}
    cpu = list(make_loader(shard_uris(uri), tok, 24, 5, **kw))
    raw = list(make_loader(shard_uris(uri), tok, 24, 5, raw=True, **kw))
    assert [b[2]["uids"] for b in raw] == [b[2]["uids"] for b in cpu]
    for (images, tokens, info), (ref_images, ref_tokens, _) in zip(raw, cpu):
        assert isinstance(images, RawImages) and len(images) == len(info["uids"])
        assert torch.equal(tokens, ref_tokens)
        out = decode_batch(images, 24, "cpu")
        assert out.keep == list(range(len(images))) and not out.errors
        assert (out.images - ref_images).abs().max() <= ONE_LEVEL + 1e-5
    # Through a DataLoader worker the packed bytes arrive intact (one shared tensor, not one per image).
    loader = make_loader(shard_uris(uri), tok, 24, 5, raw=True, **{**kw, "num_workers": 1})
    first = next(iter(loader))[0]
    assert torch.equal(first.data, raw[0][0].data) and torch.equal(first.offsets, raw[0][0].offsets)
    del loader


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_batch_on_cuda_matches_preprocess():
    assert gpu_decode_available("cuda")
    size = 64
    blobs = [_encode(_image(h, w, i)) for i, (h, w) in enumerate([(120, 90), (40, 50), (64, 64), (300, 400)])]
    blobs += [_encode(_image(80, 60, 5, "L")), _encode(_image(70, 70, 6), "PNG"), b"\xff\xd8\xff junk"]
    out = decode_batch(blobs, size, "cuda")
    assert out.images.device.type == "cuda" and out.keep == list(range(6)) and [i for i, _ in out.errors] == [6]
    ref = torch.stack([_reference(b, size) for b in blobs[:6]])
    diff = (out.images.cpu() - ref).abs()
    # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo by a few levels in some pixels, on top of
    # the one level the resize may add; on average the images agree to a small fraction of a level.
    assert diff.max() <= 6 * ONE_LEVEL, diff.amax(dim=(1, 2, 3))
    assert diff.mean() < 0.5 * ONE_LEVEL
