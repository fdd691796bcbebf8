"""shard (Ray): the dedupe survivors -> final WebDataset tars + per-shard Parquet, published atomically.

CONTRACT (build.py calls it):
    run(cfg: ShardConfig, dedupe_uri: str, download_uri: str, version_uri: str) -> tuple[list[ShardInfo], StageCounts]
Survivors are globally shuffled by a seeded hash of their uid (so the order depends on the seed only, never on
the input order) and cut into shards of cfg.samples_per_shard. One Ray task per output shard streams the needed
members out of the download tars, writes `<uid>.jpg/.txt/.json` with webdataset.TarWriter into local scratch,
then publishes in this order: shards/NNNNNN.tar, shards/NNNNNN.parquet, and last the commit record
_work/shard/NNNNNN.json (the ShardInfo). A rerun skips shards whose commit record exists; a shard rebuilt
after a crash has the same bytes (fixed tar mtime, deterministic order and encodings).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.funnel import StageCounts
from pipelines.schema import SampleMeta, ShardInfo, validate_uid
from pipelines.stages.dedupe import read_keep
from pipelines.stages.members import read_members
from pipelines.storage import ray_task_options
from pipelines.stages.images import to_jpeg

# Fixed member mtime (2020-01-01): the same samples give the same tar bytes on every rerun.
TAR_MTIME = 1577836800.0
SHARD_PARQUET_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("page_url", pa.string()), ("caption", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("sha256", pa.string()), ("phash", pa.string()),
    ("source", pa.string()), ("scores", pa.map_(pa.string(), pa.float64())),
])


@dataclass
class ShardConfig:
    samples_per_shard: int = 1000
    """Samples per output tar (the last shard holds the remainder)."""
    shuffle_seed: int = 0
    """Seed of the deterministic global shuffle applied before sharding."""

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"pipeline.shard.samples_per_shard: {self.samples_per_shard} must be >= 1")


def shuffle_order(uids: list[str], seed: int) -> list[str]:
    """A seeded permutation that depends only on the set of uids and the seed."""
    return sorted(set(uids), key=lambda u: (hashlib.sha256(f"{seed}:{u}".encode()).digest(), u))


def _meta(row: dict) -> SampleMeta:
    scores = {"lang_score": float(row["lang_score"])} if row.get("lang_score") is not None else {}
    return SampleMeta(uid=row["uid"], url=row["url"], page_url=row.get("page_url") or "", caption=row["caption"],
                      width=int(row["width"]), height=int(row["height"]), sha256=row["sha256"],
                      phash=row["phash"], source=row.get("source") or "", scores=scores)


def _names(index: int) -> tuple[str, str, str]:
    name = f"{index:06d}"
    return f"shards/{name}.tar", f"shards/{name}.parquet", f"_work/shard/{name}.json"


def write_shard(index: int, rows: list[dict], version_uri: str) -> dict:
    """Build, publish and commit one output shard; returns {"info": ShardInfo json, "missing": [uids]}."""
    import webdataset as wds

    tar_rel, parquet_rel, record_rel = _names(index)
    record_uri = storage.join(version_uri, record_rel)
    if storage.exists(record_uri):
        return storage.read_json(record_uri)
    by_tar: dict[str, set[str]] = {}
    for r in rows:
        validate_uid(r["uid"])
        by_tar.setdefault(r["src_tar"], set()).add(r["key"])
    images: dict[tuple[str, str], bytes] = {}
    for src, keys in sorted(by_tar.items()):
        images.update({(src, k): v for k, v in read_members(src, keys).items()})
    metas, missing = [], []
    with storage.local_scratch("witforge-shard-") as tmp:
        local_tar = os.path.join(tmp, "shard.tar")
        with open(local_tar, "wb") as f:
            writer = wds.TarWriter(f, mtime=TAR_MTIME)
            for r in rows:  # in shuffled order; each sample's three members are written together
                data = images.get((r["src_tar"], r["key"]))
                if data is None:
                    missing.append(r["uid"])
                    continue
                meta = _meta(r)
                writer.write({"__key__": r["uid"], "jpg": to_jpeg(data), "txt": meta.caption.encode(),
                              "json": meta.to_json()})
                metas.append(meta)
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
    chunks = [order[i:i + cfg.samples_per_shard] for i in range(0, len(order), cfg.samples_per_shard)]
    task = ray.remote(write_shard).options(**ray_task_options())
    refs = [task.remote(i, [by_uid[u] for u in chunk], version_uri) for i, chunk in enumerate(chunks)]
    records = ray.get(refs)
    infos = [ShardInfo(**rec["info"]) for rec in records]
    counts = StageCounts("shard", input=len(rows), output=sum(i.samples for i in infos))
    missing = sum(len(rec["missing"]) for rec in records)
    if missing:
        counts.drop("missing_member", missing)
    return infos, counts.check()
