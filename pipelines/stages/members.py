"""Shared by the Ray stages (filter, shard): streaming image members out of img2dataset tars, and the storage
settings Ray tasks need."""

from __future__ import annotations

import os
import tarfile

from pipelines import storage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# Storage settings of the driver; Ray workers may have started before they were set (e.g. a test's S3 server).
_STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL")


def read_members(tar_uri: str, keys: set[str]) -> dict[str, bytes]:
    """Image bytes of the wanted keys, streamed from the tar.

    Member names are only compared with the wanted keys, never used as paths: nothing is extracted to disk.
    """
    out: dict[str, bytes] = {}
    with storage.open_uri(tar_uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            if key in keys and ext.lower() in IMAGE_EXTENSIONS:
                extracted = tar.extractfile(member)
                if extracted is not None:
                    out[key] = extracted.read()
    return out


def ray_task_options() -> dict:
    """`.options(...)` for Ray tasks that read/write storage: the driver's S3 settings travel with the task."""
    env = {k: os.environ[k] for k in _STORAGE_ENV if os.environ.get(k)}
    return {"runtime_env": {"env_vars": env}} if env else {}
