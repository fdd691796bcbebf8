"""The data contract between `pipelines` (producer) and `training`/`evaluation` (consumers).

A dataset version is the prefix `<root>/<dataset>/<version>/` holding
    shards/000000.tar      WebDataset tar: <uid>.jpg, <uid>.txt (caption), <uid>.json (SampleMeta)
    shards/000000.parquet  the same SampleMeta rows, for analytics without untarring
    funnel.json            stage-by-stage, reason-by-reason counts
    config.yaml            the resolved config that built it
    manifest.json          written LAST: no manifest means the version does not exist
A consumer opens the manifest and reads the shards it lists; it never globs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from pipelines import storage

SCHEMA_VERSION = 1
# WebDataset splits a member name at the first dot into key and extension, so keys are plain lowercase hex.
UID_RE = re.compile(r"^[0-9a-f]{8,64}$")


@dataclass
class SampleMeta:
    """What `<uid>.json` and the per-shard parquet hold for one image/alt-text pair."""

    uid: str
    url: str
    page_url: str
    caption: str
    width: int
    height: int
    sha256: str
    phash: str  # 16 hex digits (64-bit perceptual hash)
    source: str  # e.g. "synthetic-web:<corpus id>" or a WARC file URI
    scores: dict[str, float] = field(default_factory=dict)  # filter scores (language confidence, ...)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ShardInfo:
    path: str  # relative to the version prefix, e.g. "shards/000000.tar"
    samples: int
    bytes: int
    sha256: str
    parquet: str


@dataclass
class Manifest:
    dataset: str
    version: str
    shards: list[ShardInfo]
    total_samples: int
    funnel: dict[str, Any]
    config_hash: str
    code_version: str
    upstream: dict[str, Any]
    created: str
    schema_version: int = SCHEMA_VERSION

    def shard_uris(self, manifest_uri: str) -> list[str]:
        base = manifest_uri.rsplit("/", 1)[0]
        return [storage.join(base, s.path) for s in self.shards]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ManifestError(ValueError):
    pass


def manifest_uri(root: str, dataset: str, version: str) -> str:
    return storage.join(root, dataset, version, "manifest.json")


def validate_uid(uid: str) -> str:
    if not UID_RE.match(uid):
        raise ValueError(f"sample key {uid!r} is not lowercase hex without dots (WebDataset key rule)")
    return uid


def load_manifest(uri: str) -> Manifest:
    """Open a dataset version; a missing or malformed manifest raises an error naming the URI."""
    if not storage.exists(uri):
        raise ManifestError(f"no manifest at {uri}: the dataset version does not exist (or its build has not finished)")
    try:
        data = storage.read_json(uri)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"{uri}: schema_version {data.get('schema_version')!r}, this code reads {SCHEMA_VERSION}")
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        return Manifest(**data)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{uri}: malformed manifest ({exc})") from exc


def write_manifest(uri: str, manifest: Manifest) -> None:
    storage.write_json(uri, manifest.to_json())
