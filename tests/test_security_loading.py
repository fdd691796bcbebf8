"""Loading untrusted files: checkpoints are only read as safetensors (a pickle with a malicious __reduce__ is
refused and never runs), tar members with absolute paths, `..` or links are never written to disk or followed by
any of the project's tar readers, and no code in the project unpickles, torch.loads without weights_only=True or
extracts a tar without filter="data".

    .venv/bin/python -m pytest -q tests/test_security_loading.py
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from pipelines import storage
from pipelines.fetch.tarmerge import rebuild
from pipelines.stages.members import read_members
from training.checkpoint import CheckpointError, TrainingState, load_clip, save_checkpoint
from training.data import make_loader
from training.model import CLIP, CLIPConfig
from training.tokenizer import CaptionTokenizer

REPO = Path(__file__).resolve().parent.parent
TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                  vocab_size=300, context_length=12, text_width=32, text_layers=1, text_heads=2)


class Exploit:
    """Unpickling this runs code: it writes `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return exec, (f"open({str(self.path)!r}, 'w').write('pwned')",)


def _tok() -> CaptionTokenizer:
    return CaptionTokenizer.train(["a red circle", "the number 7", "two blue stars"] * 5, 300, TINY.context_length)


def _plant(step_uri: str, name: str, blob: bytes) -> None:
    """Replace a checkpoint file the way an attacker who controls the directory would: digest updated too."""
    storage.write_bytes(storage.join(step_uri, name), blob)
    if name == "model.safetensors":
        meta = storage.read_json(storage.join(step_uri, "meta.json"))
        meta["digest"] = hashlib.sha256(blob).hexdigest()
        storage.write_json(storage.join(step_uri, "meta.json"), meta)


def test_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    """A checkpoint whose weights (then optimizer state) are a torch.save pickle carrying a __reduce__ payload,
    with meta.json's digest matching it. load_clip (evaluation, curation's embedding stages, export) and
    TrainingState (resume) refuse it naming the file; the payload never runs. Lost: nothing (a refused file)."""
    sentinel = tmp_path / "pwned"
    payload = io.BytesIO()
    torch.save({"visual.proj": Exploit(sentinel)}, payload)
    blob = payload.getvalue()
    # The payload is live: plain unpickling (torch.load with weights_only=False) runs it.
    torch.load(io.BytesIO(blob), weights_only=False)
    assert sentinel.read_text() == "pwned"
    sentinel.unlink()

    tok = _tok()
    step = save_checkpoint(CLIP(TINY, eot_id=tok.eot_id), TINY, tok, str(tmp_path / "root"), "r", 1, {},
                           extra_files={"optimizer.safetensors": b"", "trainer_state.json": b'{"step": 1}'})
    _plant(step, "model.safetensors", blob)
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_clip(step)
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        TrainingState(step)
    # torch's own guard refuses it as well, which is why any torch.load must say weights_only=True.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(blob), weights_only=True)
    assert not sentinel.exists()

    # Intact weights, malicious optimizer state: resume refuses it too.
    step2 = save_checkpoint(CLIP(TINY, eot_id=tok.eot_id), TINY, tok, str(tmp_path / "root"), "r", 2, {},
                            extra_files={"optimizer.safetensors": blob, "trainer_state.json": b'{"step": 2}'})
    with pytest.raises(CheckpointError, match="optimizer.safetensors: not a readable safetensors file"):
        TrainingState(step2)
    assert not sentinel.exists()


# ------------------------------------------------------------------------------------------------------ tars

def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
            link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def crafted_tar(tmp_path: Path, outside: Path) -> bytes:
    """A WebDataset-looking tar: one good sample (000001) and members that point outside any target: `..`,
    an absolute path, a symlink and a hard link to a JPEG outside, a PAX name with `..`, a pickle member."""
    jpg = _jpeg()
    outside.write_bytes(jpg)  # a link that is followed would deliver this image as sample 000004 / 000005
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _member(tar, "000001.jpg", jpg)
        _member(tar, "000001.txt", b"a red square")
        _member(tar, "../../../../escape_dotdot.jpg", jpg)
        _member(tar, "../../../../escape_dotdot.txt", b"escape")
        _member(tar, str(tmp_path / "escape_abs.jpg"), jpg)
        _member(tar, str(tmp_path / "escape_abs.txt"), b"escape")
        _member(tar, "000004.jpg", kind=tarfile.SYMTYPE, link=str(outside))
        _member(tar, "000004.txt", b"a symlink")
        _member(tar, "000005.jpg", kind=tarfile.LNKTYPE, link=str(outside))
        _member(tar, "000005.txt", b"a hard link")
        _member(tar, "000006.pyd", pickle.dumps(Exploit(tmp_path / "pwned")))
        _member(tar, "000006.txt", b"a pickle")
        _member(tar, "x" * 120 + "/../../../../../escape_pax.jpg", jpg)  # > 100 chars: a PAX path record
    return buf.getvalue()


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


@pytest.fixture()
def tar_case(tmp_path, monkeypatch):
    """(tar path inside the target dir, tmp_path): the readers run with the working directory 4 levels under
    tmp_path, so every `..` name above resolves inside tmp_path, whose file list the test compares."""
    target = tmp_path / "a" / "b" / "c" / "target"
    target.mkdir(parents=True)
    monkeypatch.chdir(target)
    tar = target / "000000.tar"
    tar.write_bytes(crafted_tar(tmp_path, tmp_path / "outside.jpg"))
    return tar, tmp_path


def _nothing_escaped(tmp_path: Path, before: set[str], allowed: set[str] = frozenset()) -> None:
    assert _files(tmp_path) - before - allowed == set()
    assert not (tmp_path / "pwned").exists()
    assert not Path("/escape_dotdot.jpg").exists() and not Path("/escape_pax.jpg").exists()


def test_training_stream_reads_crafted_tar_in_memory_only(tar_case):
    """training.data streams a shard with `..`, absolute, symlink, hard-link and pickle members. Lost: nothing
    (the good sample is delivered); nothing is written to disk, no link is followed (samples 000004/000005 have
    no image and are skipped), the pickle member is never unpickled."""
    tar, tmp_path = tar_case
    before = _files(tmp_path)
    loader = make_loader([str(tar)], _tok(), 16, 4, mode="epoch", epochs=1, partial=True, num_workers=0,
                         max_skip_fraction=1.0)
    batches = list(loader)
    uids = {u for _, _, info in batches for u in info["uids"]}
    assert "000001" in uids and not {"000004", "000005", "000006"} & uids
    _nothing_escaped(tmp_path, before)


def test_pipeline_member_reader_skips_links_and_writes_nothing(tar_case):
    """pipelines.stages.members (filter, shard, embedding stages) over the crafted tar. Lost: nothing (the good
    image is read); links are not followed, nothing is written to disk."""
    tar, tmp_path = tar_case
    before = _files(tmp_path)
    images = read_members(str(tar), {"000001", "000004", "000005", "escape_dotdot", "escape_abs"})
    assert images["000001"] == _jpeg() and "000004" not in images and "000005" not in images
    _nothing_escaped(tmp_path, before)


def test_tar_merge_drops_links_and_writes_only_its_output(tar_case):
    """pipelines.fetch.tarmerge.rebuild (the download retry merge) over the crafted tar, keeping every key.
    Lost: nothing (the good sample's members are kept byte for byte); the rebuilt tar holds no link, and the only
    file written is the output the caller opened."""
    tar, tmp_path = tar_case
    before = _files(tmp_path)
    out_path = tar.with_name("rebuilt.tar")
    keep = {"000001", "000004", "000005", "000006", "escape_dotdot", "escape_abs"}
    with open(tar, "rb") as src, open(out_path, "w+b") as out:
        rebuild(src, out, keep, [])
    with tarfile.open(out_path) as rebuilt:
        members = rebuilt.getmembers()
        assert all(m.isreg() for m in members)
        assert rebuilt.extractfile("000001.jpg").read() == _jpeg()
    _nothing_escaped(tmp_path, before, {str(out_path)})


# ------------------------------------------------------------------------------------------- static checks

SKIP_DIRS = {"tests", "data", "node_modules"}  # and every hidden folder (.venv, .git, ...)
UNPICKLERS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"),
              ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("pd", "read_pickle"),
              ("pandas", "read_pickle"), ("yaml", "unsafe_load")}


def _kw_is(call: ast.Call, name: str, value: object) -> bool:
    """The call passes name=<constant value>."""
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value == value for k in call.keywords)


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """(line, what) for each call that deserialises code or writes tar members to disk unchecked."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attr, owner = node.func.attr, node.func.value
        base = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        loader = next((ast.unparse(k.value) for k in node.keywords if k.arg == "Loader"), "")
        if (base, attr) == ("torch", "load") and not _kw_is(node, "weights_only", True):
            found.append((node.lineno, "torch.load without weights_only=True"))
        elif (base, attr) in UNPICKLERS or (base, attr) == ("hub", "load"):
            found.append((node.lineno, f"{base}.{attr} (unpickles)"))
        elif (base, attr) == ("np", "load") and any(k.arg == "allow_pickle" for k in node.keywords) \
                and not _kw_is(node, "allow_pickle", False):
            found.append((node.lineno, "np.load with allow_pickle"))
        elif (base, attr) == ("yaml", "load") and "Safe" not in loader:
            found.append((node.lineno, "yaml.load without a SafeLoader"))
        elif attr in ("extractall", "extract") and not _kw_is(node, "filter", "data"):
            found.append((node.lineno, f"{attr} without filter='data'"))
    return found


def test_the_static_check_catches_what_it_claims_to():
    bad = ("torch.load(f)\ntorch.load(f, weights_only=False)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
           "tar.extractall(d)\nyaml.load(s, Loader=yaml.Loader)\ntorch.hub.load('x', 'y')\n")
    assert [line for line, _ in unsafe_loads(bad)] == [1, 2, 3, 4, 5, 6, 7]
    good = ("torch.load(f, weights_only=True)\nnp.load(p)\ntar.extractall(d, filter='data')\nyaml.safe_load(s)\n"
            "tar.extractfile(m)\n")
    assert unsafe_loads(good) == []


def test_no_code_unpickles_or_extracts_unchecked():
    """Every Python file of the project (any folder but tests/, data/ and hidden ones): no torch.load without weights_only=True, no pickle /
    joblib / dill / torch.hub loading, no np.load(allow_pickle=True), no unsafe YAML, no tar extraction to disk
    without filter="data". Lost: nothing (a static check)."""
    files = []
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
        files += [Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    assert len(files) > 50  # the project's code, not an empty glob
    offences = [f"{p.relative_to(REPO)}:{line}: {what}" for p in files for line, what in unsafe_loads(p.read_text())]
    assert not offences, "\n".join(offences)


def test_checkpoint_files_hold_no_pickle(tmp_path):
    """What training writes: every file of a step dir is safetensors or JSON (nothing a reader must unpickle).
    Lost: nothing."""
    tok = _tok()
    step = save_checkpoint(CLIP(TINY, eot_id=tok.eot_id), TINY, tok, str(tmp_path), "r", 1, {})
    for f in Path(step).iterdir():
        data = f.read_bytes()
        if f.suffix == ".json":
            json.loads(data)
        else:
            assert f.suffix == ".safetensors" and not data.startswith((b"\x80", b"PK")), f  # no pickle, no zip
