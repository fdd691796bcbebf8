"""The external layouts (CLIP_benchmark's WebDataset, image folder, captions JSONL, associations JSONL) read
through fsspec, locally and from an S3 server, and scored by evaluate_external with a transparent encoder whose
every score is known: an image embeds as its mean colour, a text as the colour word it names."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from evaluation import external_metrics as xm
from evaluation.adapters import LayoutError, open_layout
from evaluation.external import evaluate_external
from pipelines import storage

RGB = {"red": (200, 0, 0), "green": (0, 200, 0), "blue": (0, 0, 200)}
WORDS = ("red", "green", "blue")


class ColourEncoder:
    """Image -> its mean colour; text -> the one-hot of the first colour word in it (zeros when none)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.image_batches: list[int] = []

    def encode_images(self, images):
        self.image_batches.append(len(images))
        return np.array([np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0) for im in images])

    def encode_texts(self, texts):
        self.texts += texts
        out = np.zeros((len(texts), 3))
        for i, t in enumerate(texts):
            hits = [(t.find(w), j) for j, w in enumerate(WORDS) if w in t]
            if hits:
                out[i, min(hits)[1]] = 1.0
        return out


def png(colour: str, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), RGB[colour]).save(buf, format="PNG")
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# (label, drawn colour, group): 9 images, one "red" drawn green (misclassified), in group south.
CLASS_SAMPLES = [(0, "red", "north"), (0, "red", "north"), (0, "green", "south"),
                 (1, "green", "north"), (1, "green", "south"), (1, "green", "south"),
                 (2, "blue", "north"), (2, "blue", "south"), (2, "blue", "south")]


def write_wds(root: str, *, shards: int = 2, templates: str | None = "a photo of a {c} thing.\n",
              groups: bool = True) -> None:
    per = -(-len(CLASS_SAMPLES) // shards)
    for s in range(shards):
        members = []
        for i, (label, colour, group) in enumerate(CLASS_SAMPLES[s * per:(s + 1) * per]):
            key = f"s{s}_{i:04d}"
            members += [(f"{key}.cls", str(label).encode()), (f"{key}.png", png(colour))]
            if groups:
                members.append((f"{key}.json", json.dumps({"group": group}).encode()))
        storage.write_bytes(storage.join(root, "test", f"{s}.tar"), tar_bytes(members))
    storage.write_bytes(storage.join(root, "test", "nshards.txt"), f"{shards}\n".encode())
    storage.write_bytes(storage.join(root, "classnames.txt"), b"red\ngreen\nblue\n")
    if templates is not None:
        storage.write_bytes(storage.join(root, "zeroshot_classification_templates.txt"), templates.encode())


def rows_by_metric(rows):
    return {r["metric"]: r for r in rows}


def check_classification(rows, *, groups: bool = True):
    m = rows_by_metric(rows)
    assert m["top1"]["value"] == pytest.approx(8 / 9) and m["top1"]["chance"] == pytest.approx(1 / 3)
    assert m["mean_per_class_recall"]["value"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert "top5" not in m and all(r["n"] == 9 for r in rows if "[" not in r["metric"])
    if groups:
        assert m["top1[group=north]"]["value"] == 1.0 and m["top1[group=south]"]["value"] == pytest.approx(4 / 5)
        assert m["worst_group_top1"]["value"] == pytest.approx(4 / 5)
        assert m["worst_group_top5"]["value"] == 1.0


def test_wds_layout_scores_exactly_and_the_layouts_templates_win(tmp_path):
    root = str(tmp_path / "geode")
    write_wds(root)
    enc = ColourEncoder()
    rows = evaluate_external(enc, "geode", root, batch_size=4)
    check_classification(rows)
    assert [r["metric"] for r in rows if r["main"]] == ["worst_group_top1"]  # GeoDE: worst-region top-1
    assert all(r["task"] == "zeroshot_classification" for r in rows)
    assert enc.texts[:3] == ["a photo of a red thing.", "a photo of a green thing.", "a photo of a blue thing."]
    assert enc.image_batches == [4, 4, 1]  # streamed in batches across the two shards
    # Without the layout's templates file, the registry's (GeoDE: 4 templates per class) are used.
    write_wds(root, templates=None)
    storage.remove(storage.join(root, "zeroshot_classification_templates.txt"))
    enc = ColourEncoder()
    check_classification(evaluate_external(enc, "geode", root, batch_size=64, limit=9))
    assert len(enc.texts) == 3 * 4 and "a photo of a red at home." in enc.texts
    assert enc.image_batches == [9]


def test_wds_layout_on_s3(s3_bucket):
    root = f"{s3_bucket}/evalsets/dollar_street"
    write_wds(root, shards=3)
    rows = evaluate_external(ColourEncoder(), "dollar_street", root, batch_size=2)
    check_classification(rows)
    main = [r for r in rows if r["main"]]
    assert len(main) == 1 and main[0]["metric"] == "worst_group_top5"
    # limit stops early: the first 3 samples (two red, one green-drawn red in group south).
    m = rows_by_metric(evaluate_external(ColourEncoder(), "dollar_street", root, batch_size=2, limit=3))
    assert m["top1"]["value"] == pytest.approx(2 / 3) and m["top1"]["n"] == 3


def write_folder(root, with_groups: bool = True) -> None:
    for i, (label, colour, group) in enumerate(CLASS_SAMPLES):
        (root / "test" / f"c{label}").mkdir(parents=True, exist_ok=True)
        (root / "test" / f"c{label}" / f"{i}.png").write_bytes(png(colour))
    (root / "classnames.txt").write_text("red\ngreen\nblue\n")
    if with_groups:
        lines = ["path,group"] + [f"c{lab}/{i}.png,{g}" for i, (lab, _, g) in enumerate(CLASS_SAMPLES)]
        (root / "test" / "groups.csv").write_text("\n".join(lines) + "\n")


def test_folder_layout(tmp_path):
    write_folder(tmp_path)
    layout = open_layout(str(tmp_path))
    assert layout.kind == "folder" and layout.class_dirs == ["c0", "c1", "c2"] and layout.templates is None
    rows = evaluate_external(ColourEncoder(), "fmow", str(tmp_path), batch_size=3)
    check_classification(rows)
    # An extra class dir no class name covers: the label mapping would be ambiguous.
    (tmp_path / "test" / "c3").mkdir()
    (tmp_path / "test" / "c3" / "x.png").write_bytes(png("red"))
    with pytest.raises(LayoutError, match="4 class directories but 3 class names"):
        evaluate_external(ColourEncoder(), "fmow", str(tmp_path))


def test_inline_classnames_and_integer_class_dirs(tmp_path):
    # MNIST's inline names are '0'..'9'; a folder whose class dirs are labels may lack classes.
    for label, colour in ((3, "red"), (7, "blue")):
        (tmp_path / "test" / str(label)).mkdir(parents=True)
        (tmp_path / "test" / str(label) / "a.png").write_bytes(png(colour))
    enc = ColourEncoder()
    m = rows_by_metric(evaluate_external(enc, "mnist", str(tmp_path)))
    assert enc.texts[:2] == ['a photo of the number: "0".', 'a photo of the number: "1".']
    assert m["top1"]["n"] == 2 and m["top1"]["chance"] == pytest.approx(0.1)
    assert m["top1"]["value"] == 0.0  # no colour word in any prompt: every class scores 0, ties count against


def write_captions(root) -> None:
    # Red has a caption naming blue: it ties with blue's own captions for the blue image (a miss at R@1).
    data = [("r.png", "red", ["a red square", "a blue square"]), ("g.png", "green", ["green grass", "a green leaf"]),
            ("b.png", "blue", ["blue sky", "the blue sea"])]
    lines = []
    for name, colour, caps in data:
        storage.write_bytes(storage.join(root, "test", "images", name), png(colour))
        lines.append(json.dumps({"image": f"images/{name}", "captions": caps}))
    storage.write_bytes(storage.join(root, "test", "captions.jsonl"), ("\n".join(lines) + "\n").encode())


def test_captions_layout_several_captions_per_image(tmp_path):
    root = str(tmp_path / "flickr")
    write_captions(root)
    rows = evaluate_external(ColourEncoder(), "flickr30k", root, batch_size=2)
    m = rows_by_metric(rows)
    assert m["image_to_text_R@1"]["value"] == pytest.approx(2 / 3)  # blue image: red's "a blue square" ties
    assert m["image_to_text_R@5"]["value"] == 1.0
    assert m["text_to_image_R@1"]["value"] == pytest.approx(5 / 6)  # "a blue square" finds the blue image
    assert m["mean_R@1"]["main"] and m["mean_R@1"]["value"] == pytest.approx((2 / 3 + 5 / 6) / 2)
    assert m["text_to_image_R@1"]["chance"] == pytest.approx(1 / 3)
    assert m["image_to_text_R@1"]["chance"] == pytest.approx(1 - 4 / 6)  # 2 of 6 captions are the image's
    assert all(r["n"] == 3 and r["task"] == "retrieval" for r in rows)


def test_wds_retrieval_layout(tmp_path):
    members = []
    for i, (colour, caps) in enumerate((("red", "a red car\nred paint"), ("blue", "a blue boat"))):
        members += [(f"{i:03d}.jpg", png(colour)), (f"{i:03d}.txt", caps.encode())]
    storage.write_bytes(str(tmp_path / "test" / "0.tar"), tar_bytes(members))
    (tmp_path / "test" / "nshards.txt").write_text("1")
    (tmp_path / "dataset_type.txt").write_text("retrieval\n")
    m = rows_by_metric(evaluate_external(ColourEncoder(), "mscoco_captions", str(tmp_path)))
    assert m["image_to_text_R@1"]["value"] == 1.0 and m["text_to_image_R@1"]["value"] == 1.0
    assert m["mean_R@1"]["n"] == 2


def test_association_layout(tmp_path):
    colours = ["red", "red", "green", "blue", "green"]  # cue red, associations: the two reds -> Jaccard 1
    ten = ["blue", "blue"] + ["red", "green"] * 4  # cue blue, associations: blue + a green -> picks 2 blue: 1/3
    for name, c in [(f"a{i}.png", c) for i, c in enumerate(colours)] + [(f"b{i}.png", c) for i, c in enumerate(ten)]:
        storage.write_bytes(str(tmp_path / "test" / name), png(c))
    lines = [{"cue": "red", "candidates": [f"a{i}.png" for i in range(5)], "associations": ["a0.png", "a1.png"]},
             {"cue": "blue", "candidates": [f"b{i}.png" for i in range(10)], "associations": ["b0.png", "b3.png"]}]
    (tmp_path / "test" / "associations.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    enc = ColourEncoder()
    m = rows_by_metric(evaluate_external(enc, "winogavil", str(tmp_path)))
    assert enc.texts == ["A red", "A blue"]
    assert m["jaccard_5-6"]["value"] == 1.0 and m["jaccard_10-12"]["value"] == pytest.approx(1 / 3)
    assert m["jaccard"]["value"] == pytest.approx(2 / 3) and m["jaccard_10-12"]["main"]
    assert m["jaccard_5-6"]["chance"] == pytest.approx(xm.jaccard_chance(5, 2))


def test_metric_helpers_against_definitions():
    rng = np.random.default_rng(0)
    score, pos = rng.integers(0, 5, 40).astype(float), rng.random(40) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, p in zip(score, pos) if p
             for b, q in zip(score, pos) if not q]
    assert xm.roc_auc(score, pos) == pytest.approx(np.mean(pairs))
    assert xm.macro_f1(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # jaccard_chance: brute force over every pick of 2 out of 4 with truth {0, 1}
    picks = [{a, b} for a in range(4) for b in range(a + 1, 4)]
    assert xm.jaccard_chance(4, 2) == pytest.approx(np.mean([len(p & {0, 1}) / len(p | {0, 1}) for p in picks]))


def test_layout_errors_name_the_file(tmp_path):
    root = tmp_path / "ds"
    write_wds(str(root))
    (root / "classnames.txt").unlink()
    with pytest.raises(LayoutError, match=r"classnames\.txt does not exist.*geode has no inline class names"):
        evaluate_external(ColourEncoder(), "geode", str(root))
    (root / "classnames.txt").write_text("red\ngreen\n")
    with pytest.raises(LayoutError, match=r"test/1\.tar: sample 's1_0001' has label 2, out of range for the 2 classes of "
                                          r"classnames\.txt"):
        evaluate_external(ColourEncoder(), "geode", str(root))
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a thing\n")
    with pytest.raises(LayoutError, match=r"zeroshot_classification_templates\.txt: template 1 .* no \{c\}"):
        open_layout(str(root))
    write_wds(str(root), groups=False)
    with pytest.raises(LayoutError, match="main metric worst_group_top1 could not be computed.*no sample has a group"):
        evaluate_external(ColourEncoder(), "geode", str(root))
    check_classification(evaluate_external(ColourEncoder(), "cifar10", str(root)), groups=False)
    with pytest.raises(LayoutError, match="holds classification data but flickr30k is a retrieval dataset"):
        evaluate_external(ColourEncoder(), "flickr30k", str(root))
    (root / "test" / "nshards.txt").unlink()
    with pytest.raises(LayoutError, match="no known layout.*nshards.txt"):
        open_layout(str(root))
    with pytest.raises(LayoutError, match=r"test/nshards\.txt does not exist"):
        open_layout(str(root), layout="wds")
    (root / "test" / "nshards.txt").write_text("3")
    with pytest.raises(LayoutError, match=r"test/2\.tar does not exist"):
        evaluate_external(ColourEncoder(), "cifar10", str(root))
    (root / "test" / "nshards.txt").write_text("2")
    (root / "test" / "1.tar").write_bytes((root / "test" / "1.tar").read_bytes()[:700])
    with pytest.raises(LayoutError, match=r"test/1\.tar: unreadable tar"):
        evaluate_external(ColourEncoder(), "cifar10", str(root))
    caps = tmp_path / "caps"
    write_captions(str(caps))
    (caps / "test" / "images" / "g.png").unlink()
    with pytest.raises(LayoutError, match=r"captions\.jsonl:2: image .*images/g\.png does not exist"):
        evaluate_external(ColourEncoder(), "flickr30k", str(caps))
