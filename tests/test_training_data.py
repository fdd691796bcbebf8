"""The training data stream (training/data.py) over small dataset versions written by the test.

What is checked: epoch mode sees every uid exactly once per epoch across 2 ranks x 2 loader workers and runs
into the next epoch without a gap; resume reproduces the uninterrupted batch sequence exactly at every cut point
(mid-block, block boundary, shard boundary, epoch boundary), with 2 loader workers at odd and even cuts (the
round-robin rotation), in resampled mode and with mixing; per-sample mixing proportions; skipped samples counted
by reason (corrupt, missing caption/image, truncated tar, unreadable shard, S3); the abort threshold; state
mismatches rejected with the mismatching field named."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
import traceback
from collections import Counter

import numpy as np
import pytest
import torch

from pipelines import storage
from pipelines.schema import load_manifest
from training.data import Source, StreamState, TooManyCorruptSamples, load_source, make_dataset, make_loader, shard_uris
from training.tokenizer import CaptionTokenizer, manifest_captions, train_from_manifest
from training.toydata import toy_uid, write_toy_dataset
from training.transform import preprocess


@pytest.fixture(scope="module")
def local_manifest(tmp_path_factory) -> str:
    return write_toy_dataset(str(tmp_path_factory.mktemp("toy")), n=50, samples_per_shard=10, px=(40, 60))


@pytest.fixture(scope="module")
def tok(local_manifest) -> CaptionTokenizer:
    return train_from_manifest(load_manifest(local_manifest), local_manifest, vocab_size=400, context_length=24)


ALL_UIDS = {toy_uid(0, i) for i in range(50)}


def _run(source, tok, n_batches: int | None, state=None, **kwargs):
    """Consume up to n_batches from a fresh loader, feeding a StreamState as the trainer does.
    Returns ([(worker, uids, epoch)], JSON state after the consumed batches)."""
    kwargs.setdefault("num_workers", 0)
    loader = make_loader(source, tok, 8, kwargs.pop("batch_size", 3), state=state, **kwargs)
    stream = StreamState(loader)
    out = []
    for images, tokens, info in itertools.islice(loader, n_batches):
        stream.update(info)
        out.append((info["worker"], info["uids"], info["epoch"]))
    saved = json.loads(json.dumps(stream.state()))  # what a checkpoint stores must survive JSON
    del loader
    return out, saved


def test_epoch_mode_every_uid_once_per_epoch_2_ranks_x_2_workers(local_manifest, tok):
    manifest = load_manifest(local_manifest)
    expected_captions = sorted(c.lower() for c in manifest_captions(manifest, local_manifest))
    for epochs in (1, 2):
        per_rank, captions = [], []
        for rank in (0, 1):
            loader = make_loader(shard_uris(local_manifest), tok, 16, 4, rank=rank, world=2, resampled=False,
                                 epochs=epochs, partial=True, num_workers=2)
            uids = []
            for images, tokens, info in loader:
                assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.float32
                assert tokens.shape == (images.shape[0], tok.context_length) == (len(info["uids"]), 24)
                assert info["rank"] == rank and info["worker"] in (0, 1) and info["skipped"] == {}
                assert info["sources"] == [0] * len(info["uids"]) and info["epoch"] in range(epochs)
                uids += info["uids"]
                captions += [tok.decode(row) for row in tokens]
            per_rank.append(uids)
        counts = Counter(per_rank[0] + per_rank[1])
        assert set(counts) == ALL_UIDS and set(counts.values()) == {epochs}  # each uid exactly once per epoch
        if epochs == 1:
            assert not set(per_rank[0]) & set(per_rank[1]) and per_rank[0] and per_rank[1]
            assert sorted(captions) == expected_captions  # images and captions stay paired


def test_epoch_mode_runs_into_the_next_epoch_without_a_gap(local_manifest, tok):
    out, _ = _run(shard_uris(local_manifest), tok, 25, resampled=False, epochs=None, batch_size=4)
    flat = [u for _, uids, _ in out for u in uids]
    assert all(len(uids) == 4 for _, uids, _ in out)  # no short batch at the epoch boundary
    assert set(flat[:50]) == set(flat[50:]) == ALL_UIDS and len(set(flat[:50])) == 50
    assert flat[:50] != flat[50:]  # the second epoch is reshuffled
    assert [e for _, _, e in out[11:13]] == [0, 1]  # batch 12 (samples 48..51) straddles the boundary


def _position(state):
    (shard, taken), = state["workers"][0]["sources"]
    return shard, taken


def test_resume_is_exact_at_every_cut_point(local_manifest, tok):
    """Rank 1 of 2, in-process: resume after every batch; the continuation equals the uninterrupted stream."""
    kw = {"rank": 1, "world": 2, "resampled": False, "epochs": None, "batch_size": 2, "shuffle_buffer": 4}
    total = 30
    ref, _ = _run(shard_uris(local_manifest), tok, total, **kw)
    kinds = Counter()
    for cut in range(1, total):
        head, state = _run(shard_uris(local_manifest), tok, cut, **kw)
        assert head == ref[:cut]
        tail, _ = _run(shard_uris(local_manifest), tok, total - cut, state=state, **kw)
        assert tail == ref[cut:], f"resume after batch {cut} diverged"
        _, taken = _position(state)
        if taken == 0:
            kinds["epoch boundary" if ref[cut - 1][2] != ref[cut][2] else "shard boundary"] += 1
        else:
            kinds["block boundary" if taken % 4 == 0 else "mid-block"] += 1
    assert set(kinds) == {"mid-block", "block boundary", "shard boundary", "epoch boundary"}, kinds
    # Positions are per sample, so the batch size may change on resume: the sample sequence continues.
    _, state = _run(shard_uris(local_manifest), tok, 7, **kw)
    tail, _ = _run(shard_uris(local_manifest), tok, 3, state=state, **{**kw, "batch_size": 5})
    assert [u for _, uids, _ in tail for u in uids] == [u for _, uids, _ in ref[7:] for u in uids][:15]


def test_resume_with_two_loader_workers_keeps_the_round_robin_order(local_manifest, tok):
    """DataLoader asks worker 0 first after a restart: the logical rotation must make the order match anyway."""
    kw = {"rank": 0, "world": 1, "resampled": False, "epochs": None, "batch_size": 3, "shuffle_buffer": 4,
          "num_workers": 2}
    total = 14
    ref, _ = _run(shard_uris(local_manifest), tok, total, **kw)
    assert [w for w, _, _ in ref] == [0, 1] * (total // 2)
    for cut in (5, 8):  # odd: the next batch is worker 1's; even: worker 0's
        head, state = _run(shard_uris(local_manifest), tok, cut, **kw)
        assert head == ref[:cut] and state["next_worker"] == cut % 2 and state["batches"] == cut
        tail, _ = _run(shard_uris(local_manifest), tok, total - cut, state=state, **kw)
        assert tail == ref[cut:], f"resume after batch {cut} diverged"


def test_resampled_resume_is_exact(local_manifest, tok):
    kw = {"rank": 0, "world": 2, "seed": 5, "resampled": True, "batch_size": 4, "shuffle_buffer": 4}
    ref, _ = _run(shard_uris(local_manifest), tok, 16, **kw)
    for cut in (1, 4, 9, 13):
        _, state = _run(shard_uris(local_manifest), tok, cut, **kw)
        tail, _ = _run(shard_uris(local_manifest), tok, 16 - cut, state=state, **kw)
        assert tail == ref[cut:], f"resume after batch {cut} diverged"
    kw2 = {**kw, "num_workers": 2}
    ref2, _ = _run(shard_uris(local_manifest), tok, 10, **kw2)
    _, state = _run(shard_uris(local_manifest), tok, 3, **kw2)
    tail, _ = _run(shard_uris(local_manifest), tok, 7, state=state, **kw2)
    assert tail == ref2[3:]


def test_trainer_style_arguments(local_manifest, tok):
    """mode= (TrainConfig.data_mode) and {shards, weight, samples} mappings are accepted like resampled= / Sources."""
    manifest = load_manifest(local_manifest)
    as_dict = [{"uri": local_manifest, "shards": shard_uris(local_manifest), "weight": 1.0,
                "samples": [s.samples for s in manifest.shards]}]
    kw = {"rank": 1, "world": 2, "seed": 4, "batch_size": 4, "shuffle_buffer": 4}
    for mode in ("epoch", "resampled"):
        ref, _ = _run(load_source(local_manifest), tok, 6, resampled=mode == "resampled", **kw)
        assert _run(as_dict, tok, 6, mode=mode, **kw)[0] == ref
    with pytest.raises(ValueError, match="data mode 'epochs'"):
        make_loader(as_dict, tok, 8, 4, mode="epochs")
    with pytest.raises(TypeError, match="shards"):
        make_loader([{"uri": local_manifest}], tok, 8, 4)


def test_resampled_ranks_draw_different_streams(local_manifest, tok):
    streams = []
    for rank in (0, 1):
        it = iter(make_dataset(shard_uris(local_manifest), tok, 16, 8, rank=rank, world=2, seed=3, resampled=True))
        streams.append(torch.cat([next(it)[1] for _ in range(3)]))
    assert not torch.equal(streams[0], streams[1])
    again = iter(make_dataset(shard_uris(local_manifest), tok, 16, 8, rank=0, world=2, seed=3, resampled=True))
    assert torch.equal(torch.cat([next(again)[1] for _ in range(3)]), streams[0])  # reproducible per seed


def test_mixing_draws_each_sample_source_by_weight(tmp_path, tok):
    # Source a: 25 samples in shards of 10, 10, 5 (unequal, yet every sample must be equally frequent).
    a = load_source(write_toy_dataset(str(tmp_path), n=25, samples_per_shard=10, seed=1, dataset="a", px=(20, 28)), 3)
    b = load_source(write_toy_dataset(str(tmp_path), n=20, samples_per_shard=5, seed=2, dataset="b", px=(20, 28)), 1)
    uids_a, uids_b = {toy_uid(1, i) for i in range(25)}, {toy_uid(2, i) for i in range(20)}
    loader = make_loader([a, b], tok, 8, 50, seed=7, resampled=True, num_workers=0, shuffle_buffer=10)
    per_source, per_uid = Counter(), Counter()
    for images, tokens, info in itertools.islice(loader, 60):
        assert set(info["sources"]) == {0, 1}  # per-sample mixing: every batch holds both sources
        for s, uid in zip(info["sources"], info["uids"]):
            assert uid in (uids_a if s == 0 else uids_b)
            per_source[s] += 1
            per_uid[uid] += 1
    share = per_source[0] / 3000
    assert abs(share - 0.75) < 0.03, share  # 3 sigma of a binomial(3000, 0.75) is 0.024
    small = np.mean([per_uid[toy_uid(1, i)] for i in range(20, 25)])  # the 5-sample shard
    large = np.mean([per_uid[toy_uid(1, i)] for i in range(20)])
    # A draw reads its whole shard, so shards drawn uniformly make every sample equally frequent (drawing
    # shards by size would halve the small shard's samples).
    assert 0.7 < small / large < 1.4, (small, large)
    ref, _ = _run([a, b], tok, 12, seed=7, batch_size=10, shuffle_buffer=10)
    _, state = _run([a, b], tok, 5, seed=7, batch_size=10, shuffle_buffer=10)
    tail, _ = _run([a, b], tok, 7, state=state, seed=7, batch_size=10, shuffle_buffer=10)
    assert tail == ref[5:]  # mixing resumes exactly too
    with pytest.raises(ValueError, match="resampled"):
        make_loader([a, b], tok, 8, 4, resampled=False)


FAULTS = {1: "corrupt_jpeg", 12: "truncated_jpeg", 13: "no_txt", 22: "empty_txt", 23: "no_jpg", 3: "png", 4: "gray"}


@pytest.mark.parametrize("raw", [False, True])
def test_corrupt_missing_and_truncated_samples_are_skipped_and_counted(tmp_path, tok, raw):
    uri = write_toy_dataset(str(tmp_path), n=40, samples_per_shard=10, px=(20, 28), faults=FAULTS,
                            truncate={3: 0.5})  # shard 3 (samples 30..39) keeps half its bytes
    loader = make_loader(load_source(uri), tok, 8, 4, resampled=False, epochs=1, partial=True, num_workers=0,
                         raw=raw)
    stream, uids = StreamState(loader), []
    for images, tokens, info in loader:
        stream.update(info)
        uids += info["uids"]
        assert len(images) == len(info["uids"]) == tokens.shape[0]
    skipped = stream.skipped()
    lost = skipped.pop("truncated_tar")
    # raw mode decodes nothing, yet catches the cut JPEG (sample 12) by its missing end-of-image marker.
    assert skipped == {"corrupt_image": 2, "missing_caption": 2, "missing_image": 1}
    assert 0 < lost < 10 and len(uids) == len(set(uids)) == 40 - sum(skipped.values()) - lost
    bad = {toy_uid(0, i) for i, f in FAULTS.items() if f not in ("png", "gray")}
    good_first3 = {toy_uid(0, i) for i in range(30)} - bad
    assert good_first3 <= set(uids) and not bad & set(uids)
    assert len(set(uids) & {toy_uid(0, i) for i in range(30, 40)}) == 10 - lost
    assert stream.delivered() == len(uids)


def test_s3_shards_and_corrupt_samples_skipped(s3_bucket, tok):
    uri = write_toy_dataset(s3_bucket + "/data", n=20, samples_per_shard=10, px=(40, 60))
    manifest = load_manifest(uri)
    # Corrupt one sample's jpg in the second shard (re-published atomically, as a broken producer might).
    shard = manifest.shard_uris(uri)[1]
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(shard))) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for i, member in enumerate(src.getmembers()):
            data = src.extractfile(member).read()
            if i == 0:
                assert member.name.endswith(".jpg")
                data = b"not a jpeg"
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    storage.write_bytes(shard, out.getvalue())
    loader = make_loader(shard_uris(uri), tok, 16, 4, resampled=False, epochs=1, partial=True, num_workers=0)
    batches = list(loader)
    assert sum(len(b[2]["uids"]) for b in batches) == sum(b[0].shape[0] for b in batches) == 19
    assert batches[-1][2]["skipped"] == {"corrupt_image": 1}


def test_preprocess_matches_between_train_and_eval():
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    x = preprocess(img, 16)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x, preprocess(img.convert("RGBA"), 16))  # mode-independent: always RGB


def test_too_many_skips_abort_with_counts_and_last_error(tmp_path, tok):
    faults = {i: "corrupt_jpeg" for i in range(0, 60, 4)}  # 15 of 60 samples (25%)
    uri = write_toy_dataset(str(tmp_path), n=60, samples_per_shard=20, px=(20, 24), faults=faults)
    kw = {"resampled": False, "epochs": 1, "partial": True, "num_workers": 0}
    with pytest.raises(TooManyCorruptSamples, match=r"10 of \d+ samples skipped \(\{'corrupt_image': 10\}\).*"
                                                     r"last error: .*UnidentifiedImageError"):
        list(make_loader(shard_uris(uri), tok, 8, 4, max_skip_fraction=0.1, min_skips=10, **kw))
    # Under the fraction, or before min_skips (default 100), the same stream completes.
    for extra in ({"max_skip_fraction": 0.3, "min_skips": 10}, {"max_skip_fraction": 0.1}):
        assert sum(len(b[2]["uids"]) for b in make_loader(shard_uris(uri), tok, 8, 4, **extra, **kw)) == 45


def test_stream_of_unreadable_shards_aborts_with_the_cause(tmp_path, tok):
    missing = [str(tmp_path / f"gone-{i}.tar") for i in range(3)]
    for workers in (0, 1):  # in-process and through a DataLoader worker (the exception type survives)
        loader = make_loader(missing, tok, 32, 4, num_workers=workers, rank=0, world=1, seed=0, resampled=True)
        with pytest.raises(TooManyCorruptSamples, match=r"unreadable_shard.*FileNotFoundError") as raised:
            next(iter(loader))
        # The traceback's frames keep the loader's iterator in a reference cycle; freed later by the cyclic GC,
        # its worker shutdown hits DataLoader's 5 s join timeout. Clearing the frames frees it right here.
        traceback.clear_frames(raised.value.__traceback__)
        del raised, loader


def test_resume_state_mismatch_is_rejected_naming_the_field(local_manifest, tok, tmp_path):
    urls = shard_uris(local_manifest)
    _, state = _run(urls, tok, 2, rank=0, world=2, seed=1, resampled=False, epochs=None)
    ok = make_loader(urls, tok, 8, 3, rank=0, world=2, seed=1, resampled=False, epochs=None, num_workers=0, state=state)
    assert StreamState(ok).state() == state
    cases = [({"world": 1}, "world size: saved 2, this loader 1"),
             ({"num_workers": 2}, r"num_workers\): saved 1, this loader 2"),
             ({"rank": 1}, "rank: saved 0, this loader 1"),
             ({"resampled": True}, "data mode: saved 'epoch', this loader 'resampled'"),
             ({"seed": 2}, "seed: saved 1, this loader 2"),
             ({"shuffle_buffer": 7}, "shuffle_buffer: saved 1000, this loader 7")]
    for change, message in cases:
        kw = {"rank": 0, "world": 2, "seed": 1, "resampled": False, "epochs": None, "num_workers": 0, **change}
        with pytest.raises(ValueError, match=message):
            make_loader(urls, tok, 8, 3, state=state, **kw)
    other = shard_uris(write_toy_dataset(str(tmp_path), n=20, samples_per_shard=10, px=(20, 24)))
    with pytest.raises(ValueError, match="shard lists"):
        make_loader(other, tok, 8, 3, rank=0, world=2, seed=1, resampled=False, num_workers=0, state=state)
    with pytest.raises(ValueError, match="not a data stream state"):
        make_loader(urls, tok, 8, 3, state={"step": 3})
    with pytest.raises(TypeError):
        make_loader([Source(tuple(urls)), "x"], tok, 8, 3)
