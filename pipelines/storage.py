"""Object storage through fsspec: one code path for `file://`/plain paths and `s3://bucket/prefix`.

S3 endpoint and credentials come from the usual variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL for MinIO/moto/other S3 servers).

Publishing is atomic everywhere: a reader sees a whole object under its final name or nothing.
- S3: a PUT (single or multipart) only becomes visible when it completes, so we write the final key directly.
- Local files: write to a hidden temporary name in the same directory, fsync, then os.replace.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec


@dataclass
class StorageConfig:
    root: str = "data"
    """Where every output goes: a local directory or s3://bucket/prefix. Changing it changes nothing else."""

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("storage.root: must not be empty")
        # Workers (Ray, Spark) run in other directories: a relative local root must mean the driver's.
        if not is_remote(self.root):
            self.root = os.path.abspath(self.root.removeprefix("file://"))


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return posixpath.join(base, *[p.strip("/") for p in parts if p])


# Variables that configure object storage (endpoint, region, credentials). Ray and Spark workers only see the
# environment of the process that started them, so stages pass these along with each task.
STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_S3_")


def storage_env() -> dict[str, str]:
    """The driver's object-store environment, to re-apply in remote workers."""
    env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}
    if os.environ.get("WITFORGE_CODE_VERSION"):
        env["WITFORGE_CODE_VERSION"] = os.environ["WITFORGE_CODE_VERSION"]
    return env


def ray_task_options() -> dict:
    """`.options(...)` for Ray tasks that read or write storage: the driver's settings travel with the task."""
    env = storage_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def _s3_options() -> dict[str, Any]:
    endpoint = os.environ.get("FSSPEC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI or a plain local path."""
    if uri.startswith("s3://"):
        fs = fsspec.filesystem("s3", **_s3_options())
        return fs, uri[len("s3://"):]
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        fs, path = fsspec.core.url_to_fs(uri)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} does not exist") from None


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Publish `data` at `uri` atomically (see module docstring)."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def put_file(local_path: str, uri: str) -> None:
    """Publish a finished local file at `uri` atomically (a tar or parquet built in a scratch dir)."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        fs.put_file(local_path, path)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        fs.put_file(local_path, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def get_file(uri: str, local_path: str) -> None:
    fs, path = filesystem(uri)
    fs.get_file(path, local_path)


def listdir(uri: str) -> list[str]:
    """Full URIs of the entries directly under `uri` (empty if it does not exist); hidden temp files skipped."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        return []
    out = []
    for p in sorted(fs.ls(path, detail=False)):
        name = posixpath.basename(p.rstrip("/"))
        if name.startswith("."):
            continue
        out.append(join(uri, name))
    return out


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def local_scratch(prefix: str = "witforge-") -> tempfile.TemporaryDirectory:
    """A local scratch directory for building files before publishing them."""
    return tempfile.TemporaryDirectory(prefix=prefix)


def open_uri(uri: str, mode: str = "rb"):
    """Open for streaming reads (webdataset, parquet). Never use this to publish: use write_bytes/put_file."""
    fs, path = filesystem(uri)
    return fs.open(path, mode)


def walk_files(uri: str) -> Iterator[str]:
    fs, path = filesystem(uri)
    scheme = "s3://" if uri.startswith("s3://") else ""
    for p in sorted(fs.find(path)):
        if not posixpath.basename(p).startswith("."):
            yield scheme + p if scheme else p
