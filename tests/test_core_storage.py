"""Storage: one code path for local paths and s3:// (a real S3 server), atomic publishing, the manifest contract."""

from __future__ import annotations

import os

import pytest

from pipelines import storage
from pipelines.schema import Manifest, ManifestError, ShardInfo, load_manifest, manifest_uri, validate_uid, write_manifest


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_bucket") + "/prefix"


def test_write_read_list_roundtrip(root, tmp_path):
    storage.write_json(storage.join(root, "a", "x.json"), {"k": 1})
    local = tmp_path / "blob.bin"
    local.write_bytes(b"\x00" * 1000)
    storage.put_file(str(local), storage.join(root, "a", "blob.bin"))
    assert storage.read_json(storage.join(root, "a", "x.json")) == {"k": 1}
    assert storage.read_bytes(storage.join(root, "a", "blob.bin")) == b"\x00" * 1000
    assert [u.rsplit("/", 1)[1] for u in storage.listdir(storage.join(root, "a"))] == ["blob.bin", "x.json"]
    assert storage.listdir(storage.join(root, "nothing")) == []
    with pytest.raises(FileNotFoundError, match="nothing/here.json does not exist"):
        storage.read_bytes(storage.join(root, "nothing", "here.json"))


def test_local_publish_is_atomic_on_failure(tmp_path, monkeypatch):
    target = str(tmp_path / "d" / "out.bin")
    storage.write_bytes(target, b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes(target, b"new content")
    # The old object is intact and no temporary file is left behind.
    assert open(target, "rb").read() == b"old"
    assert os.listdir(tmp_path / "d") == ["out.bin"]


def _manifest() -> Manifest:
    return Manifest(dataset="d", version="v1", shards=[ShardInfo("shards/000000.tar", 3, 100, "ab" * 32,
                                                                 "shards/000000.parquet")],
                    total_samples=3, funnel={}, config_hash="c", code_version="v", upstream={}, created="now")


def test_manifest_roundtrip_and_errors(root):
    uri = manifest_uri(root, "d", "v1")
    with pytest.raises(ManifestError, match=f"no manifest at {uri}"):
        load_manifest(uri)
    write_manifest(uri, _manifest())
    m = load_manifest(uri)
    assert m.total_samples == 3 and m.shard_uris(uri) == [storage.join(root, "d", "v1", "shards/000000.tar")]
    storage.write_bytes(uri, b'{"schema_version": 1, "shards": []}')
    with pytest.raises(ManifestError, match="malformed manifest"):
        load_manifest(uri)


def test_uid_rule():
    assert validate_uid("0123abcdef99")
    for bad in ("abc.def", "ABCDEF0123", "short", "0123456789abcdef/"):
        with pytest.raises(ValueError):
            validate_uid(bad)
