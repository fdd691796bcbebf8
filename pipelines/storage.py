"""Object storage through fsspec: one code path for `file://`/plain paths and `s3://bucket/prefix`.

S3 endpoint and credentials come from the usual variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL for MinIO/moto/other S3 servers).

Publishing is atomic everywhere: a reader sees a whole object under its final name or nothing.
- S3: a PUT (single or multipart) only becomes visible when it completes, so we write the final key directly.
- Local files: write to a hidden temporary name in the same directory, fsync, then os.replace.

Throttling and transient S3 errors (503 SlowDown, 500, timeouts) are retried: botocore's "standard" retry mode
(exponential backoff with full jitter, capped at 20 s), 10 attempts per request, inside s3fs, which repeats a
call that still fails with SlowDown or a connection error (5 calls in all). AWS_RETRY_MODE ("standard",
"adaptive": plus client-side rate limiting, "legacy") and AWS_MAX_ATTEMPTS override the two values and travel to
Ray and Spark workers with the other AWS_ variables; botocore reads them too in clients that libraries create
themselves (img2dataset's writers), which otherwise keep botocore's default (legacy, 5 attempts).
tests/test_faults_s3.py runs the chain behind a proxy that answers a share of requests with 503 SlowDown.
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


S3_RETRY_MODE, S3_MAX_ATTEMPTS = "standard", 10


def _s3_options() -> dict[str, Any]:
    endpoint = os.environ.get("FSSPEC_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    attempts = os.environ.get("AWS_MAX_ATTEMPTS", str(S3_MAX_ATTEMPTS))
    if not attempts.isdigit() or int(attempts) < 1:
        raise ValueError(f"AWS_MAX_ATTEMPTS: expected a positive integer, got {attempts!r}")
    # Explicit, because botocore's default ("legacy", 5 attempts) differs between SDK versions and tools.
    options: dict[str, Any] = {"config_kwargs": {"retries": {
        "mode": os.environ.get("AWS_RETRY_MODE", S3_RETRY_MODE), "total_max_attempts": int(attempts)}}}
    if endpoint:
        # A top-level argument, so it overrides the endpoint fsspec's config read from the environment when it
        # was imported (a long-lived Spark or Ray worker's), instead of clashing with it in s3fs.
        options["endpoint_url"] = endpoint
    return options


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


def read_ranges(uri: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes [start, end) of each range of one object, in the order given. Locally one open file and a seek
    per range; on S3 s3fs's concurrent ranged GETs (one request per range, each retried like any other)."""
    fs, path = filesystem(uri)
    if not ranges:
        return []
    if not is_remote(uri):
        out = []
        with fs.open(path, "rb") as f:
            for start, end in ranges:
                f.seek(start)
                out.append(f.read(end - start))
        return out
    return fs.cat_ranges([path] * len(ranges), [s for s, _ in ranges], [e for _, e in ranges])


def walk_files(uri: str) -> Iterator[str]:
    fs, path = filesystem(uri)
    scheme = "s3://" if uri.startswith("s3://") else ""
    for p in sorted(fs.find(path)):
        if not posixpath.basename(p).startswith("."):
            yield scheme + p if scheme else p
