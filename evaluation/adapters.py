"""Readers of the dataset layouts evaluation.external scores, through fsspec (local paths, file://, s3://).

Nothing downloads: a layout is something a user has put in storage. `open_layout(root, split)` detects which of
these `<root>` holds (or takes `layout=`) and streams its examples one at a time (bounded memory).

wds - CLIP_benchmark's WebDataset layout (its Hugging Face mirrors, `clip_benchmark eval --dataset wds/NAME`):
    <root>/<split>/nshards.txt            the number of shards N
    <root>/<split>/0.tar .. <N-1>.tar     samples: an image (<key>.webp|.png|.jpg|.jpeg, the first present in that
                                          order) and <key>.cls (the integer label) for classification, or
                                          <key>.txt (captions, one per line) for retrieval
    <root>/classnames.txt                 class names, one per line, line i = label i (classification)
    <root>/zeroshot_classification_templates.txt   optional: templates, one per line, each with {c}
    <root>/dataset_type.txt               optional: "retrieval" (else classification)
    <key>.json {"group": "..."}           optional, ours: the sample's group for worst-group metrics
                                          (CLIP_benchmark ignores members it does not read)
folder - an image folder (torchvision's ImageFolder):
    <root>/<split>/<class_dir>/<image>    .jpg/.jpeg/.png/.webp; labels: class dirs named by integers are their
                                          labels, otherwise the sorted class dirs are labels 0..N-1 and there must
                                          be as many as class names
    <root>/classnames.txt                 as above (optional where the registry has the names inline)
    <root>/zeroshot_classification_templates.txt   optional, as above
    <root>/<split>/groups.csv             optional: header "path,group", path relative to <split>/
captions - retrieval (COCO/Flickr style, several captions per image):
    <root>/<split>/captions.jsonl         {"image": "<path relative to <split>/>", "captions": ["...", ...]}
                                          (+ optional "group") per line
associations - WinoGAViL style:
    <root>/<split>/associations.jsonl     {"cue": "...", "candidates": [paths relative to <split>/],
                                          "associations": [the candidates that go with the cue]} per line

A wrong layout fails with an error naming the file: a missing nshards.txt or classnames.txt, a sample without
an image or a label, a caption file pointing at a missing image, a template without {c}, ...
A layout's classnames.txt and templates file replace the registry's (CLIP_benchmark gives a WebDataset mirror's
own files precedence too): the labels in the data index the names that were shipped with them.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image
from webdataset.tariterators import base_plus_ext

from pipelines import storage

LAYOUTS = ("wds", "folder", "captions", "associations")
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")  # CLIP_benchmark's order: the first present is the image
CLASSNAMES, TEMPLATES, DATASET_TYPE = "classnames.txt", "zeroshot_classification_templates.txt", "dataset_type.txt"


class LayoutError(ValueError):
    """The data does not follow its layout; the message names the file."""


@dataclass
class Example:
    key: str
    image: Image.Image
    label: int | None = None
    captions: tuple[str, ...] = ()
    group: str | None = None
    source: str = ""
    """The file it was read from (a shard, an image, a JSONL line), for error messages."""


@dataclass
class Association:
    key: str
    cue: str
    images: list[Image.Image]
    truth: list[bool]
    """Per candidate: whether it goes with the cue."""


@dataclass
class Layout:
    kind: str
    root: str
    split: str
    task: str
    """"classification", "retrieval" or "association", as the data says."""
    classnames: list[str] | None = None
    templates: list[str] | None = None
    class_dirs: list[str] = field(default_factory=list)
    """folder layout with non-integer class dirs: the sorted dirs, whose count must equal the class count."""

    @property
    def split_uri(self) -> str:
        return storage.join(self.root, self.split)

    def examples(self) -> Iterator[Example]:
        return {"wds": _wds_examples, "folder": _folder_examples, "captions": _caption_examples}[self.kind](self)

    def associations(self) -> Iterator[Association]:
        if self.kind != "associations":
            raise LayoutError(f"{self.root}: a {self.kind} layout holds no association instances")
        return _association_examples(self)


def _read_text(uri: str) -> str | None:
    return storage.read_bytes(uri).decode("utf-8") if storage.exists(uri) else None


def _lines(uri: str) -> list[str] | None:
    text = _read_text(uri)
    # As CLIP_benchmark reads them: stripped lines, empty ones kept inside (an empty class name is a name).
    return None if text is None else [line.strip() for line in text.splitlines()]


def read_templates(uri: str) -> list[str] | None:
    lines = _lines(uri)
    if lines is None:
        return None
    templates = [t for t in lines if t]
    for i, t in enumerate(templates, 1):
        if "{c}" not in t:
            raise LayoutError(f"{uri}: template {i} {t!r} has no {{c}} placeholder")
    if not templates:
        raise LayoutError(f"{uri}: no templates")
    return templates


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        raise LayoutError(f"{where}: not a readable image ({exc})") from exc
    return img


def open_layout(root: str, split: str = "test", layout: str | None = None) -> Layout:
    """The layout under `root` (detected from the files present, or `layout`), its names and templates read."""
    root = root.rstrip("/")
    split_uri = storage.join(root, split)
    if layout is None:
        layout = _detect(root, split_uri)
    elif layout not in LAYOUTS:
        raise LayoutError(f"layout {layout!r} is not one of {list(LAYOUTS)}")
    templates = read_templates(storage.join(root, TEMPLATES))
    classnames = _lines(storage.join(root, CLASSNAMES))
    if layout == "wds":
        kind = (_read_text(storage.join(root, DATASET_TYPE)) or "classification").strip().lower()
        if kind not in ("classification", "retrieval"):
            raise LayoutError(f"{storage.join(root, DATASET_TYPE)}: {kind!r} is not supported "
                              f"(classification or retrieval)")
        _nshards(split_uri)  # fail now, naming the file, rather than at the first batch
        return Layout("wds", root, split, kind, classnames, templates)
    if layout == "folder":
        dirs = _folder_dirs(split_uri)
        named = [] if all(d.isdigit() for d in dirs) else dirs
        return Layout("folder", root, split, "classification", classnames, templates, named)
    if layout == "captions":
        _require(storage.join(split_uri, "captions.jsonl"))
        return Layout("captions", root, split, "retrieval")
    _require(storage.join(split_uri, "associations.jsonl"))
    return Layout("associations", root, split, "association")


def _require(uri: str) -> None:
    if not storage.exists(uri):
        raise LayoutError(f"{uri} does not exist")


def _detect(root: str, split_uri: str) -> str:
    for name, kind in (("nshards.txt", "wds"), ("captions.jsonl", "captions"),
                       ("associations.jsonl", "associations")):
        if storage.exists(storage.join(split_uri, name)):
            return kind
    if storage.exists(split_uri) and _folder_dirs(split_uri, must=False):
        return "folder"
    raise LayoutError(f"{root}: no known layout for split {posixpath.basename(split_uri)!r}: expected "
                      f"{split_uri}/nshards.txt (wds), captions.jsonl (captions), associations.jsonl "
                      f"(associations) or class directories (folder)")


# ------------------------------------------------------------------------------------------------------ wds

def _nshards(split_uri: str) -> int:
    uri = storage.join(split_uri, "nshards.txt")
    text = _read_text(uri)
    if text is None:
        raise LayoutError(f"{uri} does not exist (the wds layout needs it: the number of shards)")
    try:
        n = int(text.strip())
    except ValueError:
        raise LayoutError(f"{uri}: {text.strip()[:40]!r} is not a shard count") from None
    if n < 1:
        raise LayoutError(f"{uri}: shard count {n} < 1")
    return n


def tar_samples(uri: str) -> Iterator[dict[str, bytes]]:
    """Members grouped into samples by key (webdataset's rule: the key is the name up to the first dot of the
    basename), streamed. A truncated or corrupt tar raises, naming it: an evaluation set must be whole."""
    _require(uri)
    sample: dict[str, bytes] = {}
    key = None
    try:
        with storage.open_uri(uri) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                k, ext = base_plus_ext(info.name)
                if k is None or k.startswith("__"):
                    continue
                data = tar.extractfile(info).read()
                tar.members = []  # stream mode keeps every TarInfo otherwise
                if k != key and sample:
                    yield sample
                    sample = {}
                key = k
                sample["__key__"] = k.encode()
                sample[ext.lower()] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise LayoutError(f"{uri}: unreadable tar ({exc})") from exc
    if sample:
        yield sample


def _wds_examples(layout: Layout) -> Iterator[Example]:
    for i in range(_nshards(layout.split_uri)):
        uri = storage.join(layout.split_uri, f"{i}.tar")
        for s in tar_samples(uri):
            key = s["__key__"].decode()
            where = f"{uri}: sample {key!r}"
            ext = next((e for e in IMAGE_EXTS if e in s), None)
            if ext is None:
                raise LayoutError(f"{where} has no image member ({', '.join('.' + e for e in IMAGE_EXTS)})")
            group = _json_group(s["json"], where) if "json" in s else None
            image = decode_image(s[ext], where)
            if layout.task == "retrieval":
                if "txt" not in s:
                    raise LayoutError(f"{where} has no .txt captions member")
                captions = tuple(s["txt"].decode("utf-8").splitlines())
                if not captions:
                    raise LayoutError(f"{where}: empty .txt captions member")
                yield Example(key, image, captions=captions, group=group, source=uri)
            else:
                if "cls" not in s:
                    raise LayoutError(f"{where} has no .cls label member")
                yield Example(key, image, label=_int(s["cls"].decode().strip(), where), group=group, source=uri)


def _int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise LayoutError(f"{where}: label {text[:20]!r} is not an integer") from None


def _json_group(data: bytes, where: str) -> str | None:
    try:
        meta = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LayoutError(f"{where}: .json member is not JSON ({exc})") from exc
    group = meta.get("group") if isinstance(meta, dict) else None
    return None if group is None else str(group)


# --------------------------------------------------------------------------------------------------- folder

def _relative_files(split_uri: str) -> list[str]:
    fs, base = storage.filesystem(split_uri)
    base = base.rstrip("/")
    return sorted(p[len(base) + 1:] for p in fs.find(base) if not posixpath.basename(p).startswith("."))


def _folder_dirs(split_uri: str, must: bool = True) -> list[str]:
    dirs = sorted({p.split("/", 1)[0] for p in _relative_files(split_uri) if "/" in p})
    if must and not dirs:
        raise LayoutError(f"{split_uri}: no class directories (folder layout: <split>/<class_dir>/<image>)")
    return dirs


def _folder_examples(layout: Layout) -> Iterator[Example]:
    split_uri = layout.split_uri
    groups = _groups_csv(storage.join(split_uri, "groups.csv"))
    index = {d: i for i, d in enumerate(layout.class_dirs)}
    for rel in _relative_files(split_uri):
        if "/" not in rel or rel.rsplit(".", 1)[-1].lower() not in IMAGE_EXTS:
            continue
        class_dir = rel.split("/", 1)[0]
        uri = storage.join(split_uri, rel)
        label = index[class_dir] if index else int(class_dir)
        yield Example(rel, decode_image(storage.read_bytes(uri), uri), label=label, group=groups.get(rel), source=uri)


def _groups_csv(uri: str) -> dict[str, str]:
    text = _read_text(uri)
    if text is None:
        return {}
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {"path", "group"} <= set(rows[0]):
        raise LayoutError(f"{uri}: needs the header 'path,group', got {list(rows[0])}")
    return {r["path"]: r["group"] for r in rows if r["group"] not in (None, "")}


# ------------------------------------------------------------------------------------------ captions (JSONL)

def _jsonl(uri: str) -> Iterator[tuple[str, dict]]:
    with storage.open_uri(uri) as f:
        for i, line in enumerate(io.TextIOWrapper(f, encoding="utf-8"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LayoutError(f"{uri}:{i}: not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise LayoutError(f"{uri}:{i}: expected an object")
            yield f"{uri}:{i}", row


def _image_at(split_uri: str, rel: object, where: str) -> Image.Image:
    if not isinstance(rel, str) or not rel:
        raise LayoutError(f"{where}: image path {rel!r} is not a non-empty string")
    uri = storage.join(split_uri, rel)
    if not storage.exists(uri):
        raise LayoutError(f"{where}: image {uri} does not exist")
    return decode_image(storage.read_bytes(uri), uri)


def _caption_examples(layout: Layout) -> Iterator[Example]:
    for where, row in _jsonl(storage.join(layout.split_uri, "captions.jsonl")):
        captions = row.get("captions")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise LayoutError(f"{where}: 'captions' must be a non-empty list of strings")
        group = row.get("group")
        yield Example(str(row.get("image")), _image_at(layout.split_uri, row.get("image"), where),
                      captions=tuple(captions), group=None if group is None else str(group), source=where)


def _association_examples(layout: Layout) -> Iterator[Association]:
    for where, row in _jsonl(storage.join(layout.split_uri, "associations.jsonl")):
        cue, candidates, assoc = row.get("cue"), row.get("candidates"), row.get("associations")
        if not isinstance(cue, str) or not cue.strip():
            raise LayoutError(f"{where}: 'cue' must be a non-empty string")
        if not isinstance(candidates, list) or len(candidates) < 2:
            raise LayoutError(f"{where}: 'candidates' must list at least 2 images")
        if not isinstance(assoc, list) or not assoc or not set(assoc) <= set(candidates):
            raise LayoutError(f"{where}: 'associations' must be a non-empty subset of 'candidates'")
        images = [_image_at(layout.split_uri, c, where) for c in candidates]
        yield Association(where, cue, images, [c in set(assoc) for c in candidates])
