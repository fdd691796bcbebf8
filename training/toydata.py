"""A small, self-contained dataset version (scenes from synthweb.scenes with template captions).

For tests and quick training smoke runs that should not wait for the crawl pipeline. It writes exactly the
layout pipelines.schema describes: shards/NNNNNN.tar (<uid>.jpg/.txt/.json) + .parquet, then manifest.json.
Sample i's uid is `toy_uid(seed, i)`, so a test can name every sample it expects to see.

Faults a real producer (or a broken upload) can leave behind can be planted, to test the loader's skipping:
`faults` maps a sample index to one of FAULTS; `truncate` maps a shard number to the fraction of its tar bytes
that survive (a cut-off upload). The manifest and parquet still describe what was MEANT to be written (as a
producer's manifest would), so a reader can tell how many samples a truncated shard lost.

    python -m training.toydata OUT_ROOT [N]   # prints the manifest URI
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import random
import sys
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.schema import Manifest, SampleMeta, ShardInfo, manifest_uri, write_manifest
from synthweb.scenes import SceneSpec, render, sample_spec

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
FAULTS = (
    "corrupt_jpeg",    # the jpg member holds bytes that are no image at all
    "truncated_jpeg",  # a JPEG cut in the middle of its scan data (the header still parses)
    "no_txt",          # no caption member
    "empty_txt",       # a caption member holding only whitespace
    "no_jpg",          # no image member
    "png",             # valid PNG bytes stored under the jpg key (a producer that did not re-encode): NOT a fault
    "gray",            # a valid grayscale (1-channel) JPEG: NOT a fault, but a different decoder path
)


def toy_uid(seed: int, i: int) -> str:
    """The uid (WebDataset __key__) of sample i of the toy dataset written with `seed`."""
    return hashlib.sha256(f"{seed}/{i}".encode()).hexdigest()[:16]


def caption_for(spec: SceneSpec, rng: random.Random) -> str:
    if spec.kind == "glyph":
        what = f"the number {spec.glyph}" if spec.glyph.isdigit() else f"the letter {spec.glyph}"
        return rng.choice([what, f"{what} in {spec.colour}", f"{spec.colour} {what[4:]} on a {spec.background} background"])
    if spec.count > 1:
        noun = spec.shape + ("es" if spec.shape.endswith("s") else "s")
        return f"{NUMBER_WORDS[spec.count]} {spec.colour} {noun} on a {spec.background} background"
    where = "in the center" if spec.position == "center" else f"on the {spec.position}"
    return rng.choice([f"a {spec.size} {spec.colour} {spec.shape} {where}",
                       f"a {spec.colour} {spec.shape} on a {spec.background} background",
                       f"one {spec.size} {spec.colour} {spec.shape} {where} of a {spec.background} background"])


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _image_bytes(image, fault: str | None) -> bytes:
    out = io.BytesIO()
    if fault == "png":
        image.save(out, "PNG")
        return out.getvalue()
    (image.convert("L") if fault == "gray" else image).save(out, "JPEG", quality=90)
    data = out.getvalue()
    if fault == "corrupt_jpeg":
        return b"this is not an image " + data[:16]
    if fault == "truncated_jpeg":
        scan = data.index(b"\xff\xda")  # start of scan: cut inside the entropy-coded data, after every header
        return data[: scan + (len(data) - scan) // 2]
    return data


def write_toy_dataset(root: str, n: int, samples_per_shard: int = 100, seed: int = 0, dataset: str = "toy",
                      version: str = "v1", px: tuple[int, int] = (80, 160), faults: dict[int, str] | None = None,
                      truncate: dict[int, float] | None = None) -> str:
    """Write n samples in shards of `samples_per_shard` under <root>/<dataset>/<version>/; returns the manifest URI."""
    faults, truncate = dict(faults or {}), dict(truncate or {})
    bad = {k: v for k, v in faults.items() if v not in FAULTS}
    if bad:
        raise ValueError(f"unknown faults {bad}; known: {FAULTS}")
    rng = random.Random(seed)
    base = storage.join(root, dataset, version)
    shards: list[ShardInfo] = []
    for shard_no, start in enumerate(range(0, n, samples_per_shard)):
        buf, rows = io.BytesIO(), []
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(start, min(n, start + samples_per_shard)):
                spec = sample_spec(rng)
                side = rng.randint(*px)
                image = render(spec, (side, side), seed=rng.randrange(1 << 30))
                clean = io.BytesIO()
                image.save(clean, "JPEG", quality=90)
                fault = faults.get(i)
                jpg = _image_bytes(image, fault) if fault else clean.getvalue()
                uid = toy_uid(seed, i)
                meta = SampleMeta(uid=uid, url=f"http://toy/{uid}.jpg", page_url="http://toy/", caption=caption_for(spec, rng),
                                  width=side, height=side, sha256=hashlib.sha256(jpg).hexdigest(), phash="0" * 16,
                                  source=f"toy:{seed}")
                if fault != "no_jpg":
                    _tar_add(tar, f"{uid}.jpg", jpg)
                if fault != "no_txt":
                    _tar_add(tar, f"{uid}.txt", b"  \n" if fault == "empty_txt" else meta.caption.encode())
                _tar_add(tar, f"{uid}.json", json.dumps(meta.to_json()).encode())
                rows.append(meta.to_json())
        tar_bytes = buf.getvalue()
        if shard_no in truncate:
            tar_bytes = tar_bytes[: int(len(tar_bytes) * truncate[shard_no])]
        name = f"shards/{shard_no:06d}"
        storage.write_bytes(storage.join(base, name + ".tar"), tar_bytes)
        pq_buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "scores"} for r in rows]), pq_buf)
        storage.write_bytes(storage.join(base, name + ".parquet"), pq_buf.getvalue())
        shards.append(ShardInfo(path=name + ".tar", samples=len(rows), bytes=len(tar_bytes),
                                sha256=hashlib.sha256(tar_bytes).hexdigest(), parquet=name + ".parquet"))
    uri = manifest_uri(root, dataset, version)
    write_manifest(uri, Manifest(dataset=dataset, version=version, shards=shards, total_samples=n, funnel={},
                                 config_hash="toy", code_version="toy", upstream={"toy_seed": seed},
                                 created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds")))
    return uri


if __name__ == "__main__":
    print(write_toy_dataset(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 6000, samples_per_shard=1000))
