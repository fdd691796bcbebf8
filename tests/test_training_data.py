"""Tokenizer and WebDataset loader over small dataset versions written by the test (local and on S3)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from pipelines import storage
from pipelines.schema import load_manifest
from training.data import make_dataset, make_loader, shard_uris
from training.tokenizer import CaptionTokenizer, manifest_captions, train_from_manifest
from training.toydata import write_toy_dataset
from training.transform import preprocess


@pytest.fixture(scope="module")
def local_manifest(tmp_path_factory) -> str:
    return write_toy_dataset(str(tmp_path_factory.mktemp("toy")), n=50, samples_per_shard=10, px=(40, 60))


def _captions_seen(manifest_uri: str, tok: CaptionTokenizer, rank: int, world: int, num_workers: int = 0) -> list[str]:
    loader = make_loader(shard_uris(manifest_uri), tok, 16, 4, rank=rank, world=world, resampled=False, epochs=1,
                         partial=True, num_workers=num_workers)
    seen = []
    for images, tokens, stats in loader:
        assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32
        assert tokens.shape == (images.shape[0], tok.context_length)
        assert stats["skipped"] == 0
        seen += [tok.decode(row) for row in tokens]
    return seen


def test_tokenizer_round_trip_and_truncation(local_manifest):
    manifest = load_manifest(local_manifest)
    captions = list(manifest_captions(manifest, local_manifest))
    assert len(captions) == 50
    tok = train_from_manifest(manifest, local_manifest, vocab_size=400, context_length=12)
    assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 1, 2) and tok.vocab_size <= 400
    ids = tok.encode(["Three RED stars on a gray background"])
    assert ids.shape == (1, 12) and ids[0, 0] == tok.sot_id
    assert tok.decode(ids[0]) == "three red stars on a gray background"  # lower-cased round trip
    long = tok.encode(["a red circle " * 20])[0]
    assert long[-1] == tok.eot_id and long[0] == tok.sot_id and (long != tok.pad_id).all()
    again = CaptionTokenizer.from_str(tok.to_str(), 12)
    assert (again.encode(captions) == tok.encode(captions)).all()


def test_epoch_mode_every_sample_once_split_across_ranks(local_manifest):
    manifest = load_manifest(local_manifest)
    tok = train_from_manifest(manifest, local_manifest, vocab_size=400, context_length=24)
    expected = sorted(c.lower() for c in manifest_captions(manifest, local_manifest))
    rank0 = _captions_seen(local_manifest, tok, 0, 2)
    rank1 = _captions_seen(local_manifest, tok, 1, 2, num_workers=2)  # 2 loader workers split rank 1's shards
    assert rank0 and rank1
    assert sorted(rank0 + rank1) == expected  # every sample exactly once, no overlap between ranks
    assert {len(rank0), len(rank1)} == {20, 30}  # 5 shards of 10 dealt round-robin to 2 ranks


def test_resampled_ranks_draw_different_streams(local_manifest):
    manifest = load_manifest(local_manifest)
    tok = train_from_manifest(manifest, local_manifest, vocab_size=400, context_length=24)
    streams = []
    for rank in (0, 1):
        it = iter(make_dataset(shard_uris(local_manifest), tok, 16, 8, rank=rank, world=2, seed=3, resampled=True))
        streams.append(torch.cat([next(it)[1] for _ in range(3)]))
    assert not torch.equal(streams[0], streams[1])
    again = iter(make_dataset(shard_uris(local_manifest), tok, 16, 8, rank=0, world=2, seed=3, resampled=True))
    assert torch.equal(torch.cat([next(again)[1] for _ in range(3)]), streams[0])  # reproducible per seed


def test_s3_shards_and_corrupt_samples_skipped(s3_bucket):
    uri = write_toy_dataset(s3_bucket + "/data", n=20, samples_per_shard=10, px=(40, 60))
    manifest = load_manifest(uri)
    # Corrupt one sample's jpg in the second shard (re-published atomically, as a broken producer might).
    shard = manifest.shard_uris(uri)[1]
    src = tarfile.open(fileobj=io.BytesIO(storage.read_bytes(shard)))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for i, member in enumerate(src.getmembers()):
            data = src.extractfile(member).read()
            if i == 0:
                assert member.name.endswith(".jpg")
                data = b"not a jpeg"
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    storage.write_bytes(shard, out.getvalue())
    tok = train_from_manifest(manifest, uri, vocab_size=400, context_length=24)
    loader = make_loader(shard_uris(uri), tok, 16, 4, resampled=False, epochs=1, partial=True, num_workers=0)
    batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == 19
    assert batches[-1][2]["skipped"] >= 1


def test_preprocess_matches_between_train_and_eval():
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    x = preprocess(img, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, preprocess(img.convert("RGBA"), 16))  # mode-independent: always RGB


def test_stream_of_unreadable_shards_aborts_with_the_cause(local_manifest, tmp_path):
    from training import data

    data.SKIPPED.clear()
    data.DECODED[0] = 0
    tok = train_from_manifest(load_manifest(local_manifest), local_manifest, 300, 16)
    missing = [str(tmp_path / f"gone-{i}.tar") for i in range(3)]
    loader = make_loader(missing, tok, 32, 4, num_workers=0, rank=0, world=1, seed=0, resampled=True)
    with pytest.raises(data.TooManyCorruptSamples, match="FileNotFoundError"):
        next(iter(loader))
    data.SKIPPED.clear()
