"""Shard tar rebuild (pipelines.fetch.tarmerge): kept members copied byte for byte, new ones appended, any other
tar layout handled through tarfile."""

from __future__ import annotations

import io
import tarfile
import time

import pytest
import webdataset as wds

from pipelines.fetch.tarmerge import raw_members, rebuild


def wds_tar(keys: list[str]) -> bytes:
    """A tar as img2dataset writes it (webdataset's TarWriter: float mtimes, hence a PAX header per member)."""
    buf = io.BytesIO()
    with wds.TarWriter(buf) as w:
        for k in keys:
            w.write({"__key__": k, "jpg": f"image {k}".encode() * 50, "txt": f"caption {k}", "json": f'{{"key": "{k}"}}'})
    return buf.getvalue()


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def added(key: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    for ext, data in (("jpg", b"new image"), ("json", b'{"key": "%s"}' % key.encode())):
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime = len(data), time.time()
        out.append((info, data))
    return out


def test_rebuild_copies_kept_members_verbatim_and_appends():
    src = wds_tar(["000", "001", "002"])
    out = io.BytesIO()
    rebuild(io.BytesIO(src), out, {"000", "002"}, added("005"))
    got = members(out.getvalue())
    want = {k: v for k, v in members(src).items() if not k.startswith("001")}
    assert got == {**want, "005.jpg": b"new image", "005.json": b'{"key": "005"}'}
    raw_src = dict(raw_members(io.BytesIO(src)))
    raw_out = dict(raw_members(io.BytesIO(out.getvalue())))
    assert all(raw_out[n] == raw_src[n] for n in want)  # not re-encoded
    assert len(out.getvalue()) % tarfile.RECORDSIZE == 0
    # Samples stay contiguous (WebDataset groups a sample's files by adjacent names).
    names = [n for n, _ in raw_members(io.BytesIO(out.getvalue()))]
    assert [n.split(".")[0] for n in names] == ["000"] * 3 + ["002"] * 3 + ["005"] * 2


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT])
def test_other_layouts_fall_back_to_tarfile(fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        t.addfile(d)
        for k in ("a" * 120 if fmt != tarfile.USTAR_FORMAT else "long", "keep", "drop"):
            info = tarfile.TarInfo(f"dir/{k}.jpg")
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
    out = io.BytesIO()
    rebuild(io.BytesIO(buf.getvalue()), out, {"keep"}, added("new"))
    assert set(members(out.getvalue())) == {"dir/keep.jpg", "new.jpg", "new.json"}


def test_truncated_tar_is_refused_by_the_fast_path_and_read_by_tarfile():
    src = wds_tar(["000", "001"])
    with pytest.raises(ValueError):
        list(raw_members(io.BytesIO(src[:1500])))
