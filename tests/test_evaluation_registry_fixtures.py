"""Every registry entry (DataComp's 38 and the CLIP paper's datasets) run end to end on a tiny fixture written in
the layout its task uses: CLIP_benchmark's WebDataset layout for classification and COCO/Flickr retrieval, the
associations layout for WinoGAViL. The entry's own class names, prompt templates and main metric are what run.

The encoder is an oracle whose scores are known: an image carries its label in its pixels, a text is read for the
class it names, and both embed as the point at angle 2*pi*label/L on the unit circle. So every main metric must
come out exactly 1.0 (and 0.0 when the fixture's labels are rotated by one), whatever the dataset's metric is:
top-1, mean per-class recall, worst-group top-1/top-5, macro F1, ROC AUC, mean of top-1 and top-5, mean R@1,
Jaccard."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from evaluation import registry
from evaluation.external import evaluate_external
from pipelines import storage
from tests.test_evaluation_adapters import tar_bytes

TOKEN = re.compile(r"zq(\d{4})x")


def token(label: int) -> str:
    return f"zq{label:04d}x"


def label_png(label: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (label % 256, label // 256, 7)).save(buf, format="PNG")
    return buf.getvalue()


class OracleEncoder:
    def __init__(self, names: list[str] | None, span: int) -> None:
        # Longest name first, so a class whose name holds another's ("sea lion" / "lion") is read as itself.
        self.names = sorted(enumerate(names or []), key=lambda x: -len(x[1]))
        self.span = span

    def _point(self, labels: list[int]) -> np.ndarray:
        angle = 2 * np.pi * np.asarray(labels, dtype=np.float64) / self.span
        return np.stack([np.cos(angle), np.sin(angle)], axis=1)

    def encode_images(self, images):
        return self._point([int(px[0]) + 256 * int(px[1]) for px in (im.convert("RGB").getpixel((0, 0))
                                                                    for im in images)])

    def label_of(self, text: str) -> int:
        m = TOKEN.search(text)
        if m:
            return int(m.group(1))
        for label, name in self.names:
            if name in text:
                return label
        raise AssertionError(f"the prompt {text!r} names no class")

    def encode_texts(self, texts):
        return self._point([self.label_of(t) for t in texts])


def write_classification(root: str, spec: registry.DatasetSpec, shift: int) -> list[str]:
    """A WebDataset fixture of 4 samples over 2 shards; the class names in use (a file only where the registry
    has no inline names, as CLIP_benchmark's mirrors ship them)."""
    c = spec.num_classes
    labels = [0, c - 1, c // 2, 1]
    groups = ["north", "south", "north", "south"]
    names = list(spec.classnames) if spec.classnames else [token(i) for i in range(c)]
    if not spec.classnames:
        storage.write_bytes(storage.join(root, "classnames.txt"), "".join(n + "\n" for n in names).encode())
    for s in range(2):
        members = []
        for i in (2 * s, 2 * s + 1):
            key = f"s{s}_{i:03d}"
            members += [(f"{key}.cls", str(labels[i]).encode()), (f"{key}.png", label_png((labels[i] + shift) % c))]
            if spec.group_by:
                members.append((f"{key}.json", json.dumps({"group": groups[i]}).encode()))
        storage.write_bytes(storage.join(root, "test", f"{s}.tar"), tar_bytes(members))
    storage.write_bytes(storage.join(root, "test", "nshards.txt"), b"2\n")
    return names


def write_retrieval(root: str, shift: int) -> None:
    members = []
    for i in range(4):
        caps = f"a photo of {token(i)}\nthe thing {token(i)} on a table"
        members += [(f"{i:03d}.jpg", label_png((i + shift) % 4)), (f"{i:03d}.txt", caps.encode())]
    storage.write_bytes(storage.join(root, "test", "0.tar"), tar_bytes(members))
    storage.write_bytes(storage.join(root, "test", "nshards.txt"), b"1\n")
    storage.write_bytes(storage.join(root, "dataset_type.txt"), b"retrieval\n")


def write_associations(root: str, shift: int) -> None:
    lines = []
    # Candidates 0 and 1 go with the cue (label 1) and show it; the rest show label 2. Off by one: swapped.
    shows = (1, 2) if shift == 0 else (2, 1)
    for n in (5, 10):  # both of WinoGAViL's candidate-set sizes
        names = [f"n{n}_{i}.png" for i in range(n)]
        for i, name in enumerate(names):
            storage.write_bytes(storage.join(root, "test", name), label_png(shows[0] if i < 2 else shows[1]))
        lines.append({"cue": token(1), "candidates": names, "associations": names[:2]})
    storage.write_bytes(storage.join(root, "test", "associations.jsonl"),
                        "".join(json.dumps(x) + "\n" for x in lines).encode())


@pytest.mark.parametrize("shift", [0, 1], ids=["oracle", "off-by-one"])
@pytest.mark.parametrize("spec", registry.suite("all"), ids=lambda d: d.name)
def test_every_registry_entry_runs_on_a_fixture_of_its_layout(spec, shift, tmp_path):
    root = str(tmp_path / spec.name)
    if spec.task == registry.CLASSIFICATION:
        names = write_classification(root, spec, shift)
        encoder, n = OracleEncoder(names, spec.num_classes), 4
    elif spec.task == registry.RETRIEVAL:
        write_retrieval(root, shift)
        encoder, n = OracleEncoder(None, 4), 4
    else:
        write_associations(root, shift)
        encoder, n = OracleEncoder(None, 3), 1  # the main metric counts the 10-12-candidate instances only
    rows = evaluate_external(encoder, spec.name, root, batch_size=3)
    main = [r for r in rows if r["main"]]
    assert len(main) == 1 and main[0]["metric"] == spec.main_metric and main[0]["n"] == n
    expected = 1.0 if shift == 0 else 0.0
    if shift and spec.main_metric in ("worst_group_top5", "mean_top1_top5"):
        expected = {"worst_group_top5": 1.0, "mean_top1_top5": 0.5}[spec.main_metric]  # one off is still top-5
    assert main[0]["value"] == pytest.approx(expected), rows
    if spec.task == registry.CLASSIFICATION:
        top1 = next(r for r in rows if r["metric"] == "top1")
        assert top1["chance"] == pytest.approx(1 / spec.num_classes)
