"""shard (Ray): the dedupe survivors -> final WebDataset tars + per-shard Parquet, published atomically.

CONTRACT (build.py calls it):
    run(cfg: ShardConfig, dedupe_uri: str, download_uri: str, version_uri: str) -> tuple[list[ShardInfo], StageCounts]
Survivors are globally shuffled by a seeded hash of their uid (so the order depends on the seed only, never on
the input order) and cut, in that order, into shards that close at whichever target comes first:
cfg.samples_per_shard samples, or cfg.max_shard_bytes bytes of tar. Tar sizes are planned exactly in the driver
from the filter's `bytes` column (member headers, 512-byte padding, tar end records), so the cut is known before
any shard is written and is the same on every rerun. One Ray task per output shard reads its images out of the
download tars with ranged reads at the offsets the filter recorded (each kept image byte is read once, whatever
the shuffle; a sha256 check catches a tar changed since), writes `<uid>.jpg/.txt/.json` into local scratch, then publishes in this order:
shards/NNNNNN.tar, shards/NNNNNN.parquet, and last the commit record _work/shard/NNNNNN.json (the ShardInfo and
the uids whose image was missing). A rerun skips shards whose commit record exists; a shard rebuilt after a crash
has the same bytes (fixed tar mtime, deterministic order and encodings).

Publishing never exposes a partial object under a final key (pipelines.storage): locally a hidden temporary
file renamed into place; on S3 the finished local file in one PUT (s3fs 2026: below 100 MiB), or as a multipart
upload above that, whose object only appears at CompleteMultipartUpload (s3fs aborts it on an error; a killed
process leaves an invisible incomplete upload for the bucket's abort-incomplete-multipart lifecycle rule). The
manifest is written by build.py after every shard is committed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import posixpath
import tarfile
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.funnel import StageCounts
from pipelines.schema import SampleMeta, ShardInfo, validate_uid
from pipelines.stages.dedupe import read_keep
from pipelines.stages.images import to_jpeg
from pipelines.stages.members import read_members
from pipelines.storage import ray_task_options

# Fixed member mtime (2020-01-01): the same samples give the same tar bytes on every rerun. An int: tarfile
# writes a float mtime as an extra PAX header, 1 kB more per member than the 512-byte header.
TAR_MTIME = 1577836800
TAR_OWNER, TAR_MODE = "bigdata", 0o444  # webdataset's defaults, passed explicitly: header sizes are planned
SHARD_PARQUET_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("page_url", pa.string()), ("caption", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("sha256", pa.string()), ("phash", pa.string()),
    ("source", pa.string()), ("scores", pa.map_(pa.string(), pa.float64())),
])


@dataclass
class ShardConfig:
    samples_per_shard: int = 1000
    """At most this many samples per output tar (a shard closes at this or max_shard_bytes, whichever comes first)."""
    max_shard_bytes: int = 1_000_000_000
    """A shard closes before its tar would exceed this many bytes (a single larger sample gets a shard of its
    own); 0: no byte target. Exact for JPEG sources (all of img2dataset's output), an estimate otherwise."""
    shuffle_seed: int = 0
    """Seed of the deterministic global shuffle applied before sharding."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"pipeline.shard.samples_per_shard: {self.samples_per_shard} must be >= 1")
        if self.max_shard_bytes < 0:
            raise ValueError(f"pipeline.shard.max_shard_bytes: {self.max_shard_bytes} must be >= 0 (0: no byte target)")


def shuffle_order(uids: list[str], seed: int) -> list[str]:
    """A seeded permutation that depends only on the set of uids and the seed."""
    return sorted(set(uids), key=lambda u: (hashlib.sha256(f"{seed}:{u}".encode()).digest(), u))


def _meta(row: dict) -> SampleMeta:
    scores = {"lang_score": float(row["lang_score"])} if row.get("lang_score") is not None else {}
    return SampleMeta(uid=row["uid"], url=row["url"], page_url=row.get("page_url") or "", caption=row["caption"],
                      width=int(row["width"]), height=int(row["height"]), sha256=row["sha256"],
                      phash=row["phash"], source=row.get("source") or "", scores=scores)


def _members(row: dict, jpg: bytes | None = None) -> dict[str, bytes]:
    """The sample's tar members as written (jpg only when given): one encoding for planning and writing."""
    meta = _meta(row)
    out = {"txt": meta.caption.encode(), "json": json.dumps(meta.to_json()).encode()}
    if jpg is not None:
        out["jpg"] = jpg
    return out


@functools.lru_cache(maxsize=1024)
def _header_bytes(name_len: int, size_needs_pax: bool) -> int:
    """A member header as tarfile encodes it (the format webdataset's TarWriter uses, with any extended header
    it needs). For our ASCII names it depends only on the name's length and on whether the size needs a PAX
    record (8 GiB or more), so it is computed once per pair rather than per sample."""
    info = tarfile.TarInfo("k" * name_len)
    info.size = 8**11 if size_needs_pax else 0
    info.mtime, info.mode, info.uname, info.gname = TAR_MTIME, TAR_MODE, TAR_OWNER, TAR_OWNER
    return len(info.tobuf(tarfile.DEFAULT_FORMAT, tarfile.ENCODING, "surrogateescape"))


def _member_bytes(name: str, size: int) -> int:
    """Bytes one member takes in the tar: its header, then the data padded to whole blocks."""
    if not name.isascii():
        raise ValueError(f"tar member name {name!r} is not ASCII (uids are hex)")
    return _header_bytes(len(name), size >= 8**11) + math.ceil(size / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def sample_tar_bytes(row: dict) -> int:
    """Bytes `row`'s three members add to a shard tar (the jpg's size is the filter's `bytes` column)."""
    if row.get("bytes") is None:
        raise ValueError(f"sample {row.get('uid')}: no `bytes` column in the dedupe survivors (written by the "
                         f"filter stage); set pipeline.shard.max_shard_bytes=0 to cut by sample count only")
    members = {"jpg": int(row["bytes"]), **{ext: len(v) for ext, v in _members(row).items()}}
    return sum(_member_bytes(f"{row['uid']}.{ext}", size) for ext, size in members.items())


def tar_bytes(members_bytes: int) -> int:
    """Size of a tar whose members take `members_bytes`: two zero end blocks, padded to a whole record."""
    return math.ceil((members_bytes + 2 * tarfile.BLOCKSIZE) / tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def plan_shards(rows: list[dict], cfg: ShardConfig) -> list[list[dict]]:
    """Cut `rows` (in shuffled order) into consecutive shards: a shard closes when it holds samples_per_shard
    samples or when one more sample would take its tar past max_shard_bytes."""
    shards: list[list[dict]] = []
    current: list[dict] = []
    size = 0
    for row in rows:
        add = sample_tar_bytes(row) if cfg.max_shard_bytes else 0
        full = len(current) >= cfg.samples_per_shard
        too_big = bool(cfg.max_shard_bytes and current) and tar_bytes(size + add) > cfg.max_shard_bytes
        if full or too_big:
            shards.append(current)
            current, size = [], 0
        current.append(row)
        size += add
    if current:
        shards.append(current)
    return shards


def _names(index: int) -> tuple[str, str, str]:
    name = f"{index:06d}"
    return f"shards/{name}.tar", f"shards/{name}.parquet", f"_work/shard/{name}.json"


def read_images(rows: list[dict]) -> dict[tuple[str, str], bytes]:
    """{(src_tar, key): image bytes} for `rows`. A row with the filter's `offset` is one ranged read, checked
    against its sha256; only rows without one (filtered by an older version) stream their whole source tar.
    Ranged reads keep the stage linear: with a global shuffle every output shard draws from nearly every download
    tar, and streaming them all per output shard made the stage's time grow with the square of the corpus."""
    by_tar: dict[str, list[dict]] = {}
    for r in rows:
        by_tar.setdefault(r["src_tar"], []).append(r)
    images: dict[tuple[str, str], bytes] = {}
    for src, group in sorted(by_tar.items()):
        ranged = sorted((r for r in group if r.get("offset") is not None and r.get("bytes") is not None),
                        key=lambda r: r["offset"])
        datas = storage.read_ranges(src, [(r["offset"], r["offset"] + r["bytes"]) for r in ranged])
        for r, data in zip(ranged, datas):
            if r.get("sha256") and hashlib.sha256(data).hexdigest() != r["sha256"]:
                raise ValueError(f"{src}: the {r['bytes']} bytes at offset {r['offset']} are not sample {r['uid']}'s "
                                 f"image (sha256 differs from the filter's): the download tar changed after the "
                                 f"filter read it; rerun the build from the filter stage")
            images[(src, r["key"])] = data
        streamed = {r["key"] for r in group if r.get("offset") is None or r.get("bytes") is None}
        if streamed:
            images.update({(src, k): v for k, v in read_members(src, streamed).items()})
    return images


def write_shard(index: int, rows: list[dict], version_uri: str) -> dict:
    """Build, publish and commit one output shard; returns {"info": ShardInfo json, "missing": [uids]}."""
    import webdataset as wds

    tar_rel, parquet_rel, record_rel = _names(index)
    record_uri = storage.join(version_uri, record_rel)
    if storage.exists(record_uri):
        return storage.read_json(record_uri)
    for r in rows:
        validate_uid(r["uid"])
    images = read_images(rows)
    metas, missing = [], []
    with storage.local_scratch("witforge-shard-") as tmp:
        local_tar = os.path.join(tmp, "shard.tar")
        with open(local_tar, "wb") as f:
            writer = wds.TarWriter(f, mtime=TAR_MTIME, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE)
            for r in rows:  # in shuffled order; each sample's three members are written together
                data = images.get((r["src_tar"], r["key"]))
                if data is None:
                    missing.append(r["uid"])
                    continue
                writer.write({"__key__": r["uid"], **_members(r, to_jpeg(data))})
                metas.append(_meta(r))
            writer.close()
        digest = hashlib.sha256()
        with open(local_tar, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        size = os.path.getsize(local_tar)
        storage.put_file(local_tar, storage.join(version_uri, tar_rel))
        local_parquet = os.path.join(tmp, "shard.parquet")
        pq.write_table(pa.Table.from_pylist([m.to_json() for m in metas], schema=SHARD_PARQUET_SCHEMA), local_parquet)
        storage.put_file(local_parquet, storage.join(version_uri, parquet_rel))
    info = ShardInfo(path=tar_rel, samples=len(metas), bytes=size, sha256=digest.hexdigest(), parquet=parquet_rel)
    record = {"info": dataclasses.asdict(info), "missing": missing}
    storage.write_json(record_uri, record)  # last: the shard is now committed
    return record


def run(cfg: ShardConfig, dedupe_uri: str, download_uri: str, version_uri: str) -> tuple[list[ShardInfo], StageCounts]:
    import ray

    rows = read_keep(dedupe_uri).to_pylist()
    by_uid = {r["uid"]: r for r in rows}
    if len(by_uid) != len(rows):
        raise ValueError(f"{storage.join(dedupe_uri, 'keep.parquet')}: duplicate uids")
    for r in rows:
        # Resolve the source tar under download_uri (not the URI the filter saw): the version may have moved.
        r["src_tar"] = storage.join(download_uri, posixpath.basename(r["src_tar"]))
    order = shuffle_order(list(by_uid), cfg.shuffle_seed)
    chunks = plan_shards([by_uid[u] for u in order], cfg)
    task = ray.remote(write_shard).options(**ray_task_options())
    refs = [task.remote(i, chunk, version_uri) for i, chunk in enumerate(chunks)]
    records = ray.get(refs)
    infos = [ShardInfo(**rec["info"]) for rec in records]
    counts = StageCounts("shard", input=len(rows), output=sum(i.samples for i in infos))
    missing = sum(len(rec["missing"]) for rec in records)
    if missing:
        counts.drop("missing_member", missing)
    return infos, counts.check()
