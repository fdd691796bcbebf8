"""Shared by the Ray stages (filter, shard): streaming image members out of img2dataset tars."""

from __future__ import annotations

import tarfile

from pipelines import storage

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def read_members(tar_uri: str, keys: set[str]) -> dict[str, bytes]:
    """Image bytes of the wanted keys, streamed from the tar.

    Member names are only compared with the wanted keys, never used as paths: nothing is extracted to disk.
    """
    return {key: data for key, (data, _) in read_members_at(tar_uri, keys).items()}


def read_members_at(tar_uri: str, keys: set[str]) -> dict[str, tuple[bytes, int | None]]:
    """Like read_members, with each member's data offset in the tar file (None for a compressed tar, where
    stream offsets are not file offsets). The filter records them so that the shard stage reads each kept image
    with one ranged read instead of streaming whole download tars again."""
    out: dict[str, tuple[bytes, int | None]] = {}
    with storage.open_uri(tar_uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        plain = getattr(tar.fileobj, "comptype", "tar") == "tar"
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            if key in keys and ext.lower() in IMAGE_EXTENSIONS:
                extracted = tar.extractfile(member)
                if extracted is not None:
                    out[key] = (extracted.read(), member.offset_data if plain else None)
    return out
