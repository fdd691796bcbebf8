"""The synthetic web corpus: determinism, planted rates, WARC content vs ground truth, held-out combos,
atomic generation, config validation and the CLI."""

from __future__ import annotations

import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest
from warcio.archiveiterator import ArchiveIterator

from pipelines.config import ConfigError, load_config
from synthweb import corpus as corpus_mod
from synthweb.config import ALT_FAULTS, IMAGE_FAULTS, WebConfig
from synthweb.corpus import corpus_id, ensure_corpus
from synthweb.scenes import HELD_OUT_COMBOS


def small(tmp_path: Path, **kw) -> WebConfig:
    return WebConfig(dir=str(tmp_path / "web"), **{"sites": 3, "pages": 24, "images_per_page": 8,
                                                    "pages_per_warc": 10, **kw})


def tree_bytes(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


def truth_rows(c) -> list[dict]:
    return [json.loads(line) for line in Path(c.truth_path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 4000-image corpus with the default rates (rate checks need numbers)."""
    cfg = WebConfig(dir=str(tmp_path_factory.mktemp("big")), sites=10, pages=250, images_per_page=16)
    return ensure_corpus(cfg)


def test_same_config_same_bytes_and_reuse(tmp_path):
    a, b = ensure_corpus(small(tmp_path / "a")), ensure_corpus(small(tmp_path / "b"))
    assert a.corpus_id == b.corpus_id
    assert a.root != b.root
    ta, tb = tree_bytes(a.root), tree_bytes(b.root)
    assert sorted(ta) == sorted(tb) and ta == tb
    assert len(a.warc_paths) == 3 and all(p.endswith(".warc.gz") for p in a.warc_paths)
    # A different seed or port is a different corpus; the directory and slow delay are not.
    assert corpus_id(small(tmp_path, seed=1)) != a.corpus_id
    assert corpus_id(small(tmp_path, port=18432)) != a.corpus_id
    assert corpus_id(small(tmp_path / "elsewhere", slow_seconds=1.0)) == a.corpus_id
    # A complete corpus is reused, not regenerated.
    mtime = os.stat(a.truth_path).st_mtime_ns
    assert ensure_corpus(small(tmp_path / "a")).summary == a.summary
    assert os.stat(a.truth_path).st_mtime_ns == mtime


def test_planted_rates_close_to_configured(big):
    cfg = WebConfig()
    rows = truth_rows(big)
    linked = [r for r in rows if "data_uri" not in r["planted"]]
    n = len(linked)
    assert len(rows) == 4000 == big.summary["counts"]["images"]
    for kind in IMAGE_FAULTS + ALT_FAULTS + ("data_uri",):
        p = getattr(cfg, kind)
        total = len(rows) if kind == "data_uri" else n
        got = sum(kind in r["planted"] for r in rows)
        sd = math.sqrt(total * p * (1 - p))
        assert abs(got - p * total) <= 4 * sd + 3, (kind, got, p * total)
        assert big.summary["counts"].get(kind, 0) == got
    assert sum("decompression_bomb" in r["planted"] for r in rows) == 1
    # At most one image fault and one alt fault per <img>.
    for r in linked:
        assert sum(k in IMAGE_FAULTS + ("decompression_bomb",) for k in r["planted"]) <= 1
        assert sum(k in ALT_FAULTS for k in r["planted"]) <= 1
    rel = sum(not r["src"].startswith("http") for r in linked)
    assert abs(rel - cfg.relative_src * n) <= 4 * math.sqrt(n * 0.2 * 0.8)


def test_duplicates_point_at_clean_originals(big):
    rows = {r["url"]: r for r in truth_rows(big)}
    dups = [r for r in rows.values() if r["dup_of"]]
    assert dups
    for r in dups:
        orig = rows[r["dup_of"]]
        assert orig["planted"] in ([], ["uninformative_alt"], ["non_english_alt"], ["no_alt"])
        assert r["spec"] == orig["spec"] and r["url"] != orig["url"]


def test_held_out_combos_never_appear_and_captions_name_what_they_show(big):
    rows = truth_rows(big)
    specs = [r["spec"] for r in rows if r["spec"]]
    assert len(specs) > 3500
    assert not [s for s in specs if s["kind"] == "objects" and (s["colour"], s["shape"]) in HELD_OUT_COMBOS]
    clean = [r for r in rows if r["spec"] and r["alt"] and r["alt_lang"] == "en" and "uninformative_alt" not in
             r["planted"]]
    named = 0
    for r in clean:
        alt, s = r["alt"].lower(), r["spec"]
        thing = s["glyph"].lower() if s["kind"] == "glyph" else s["shape"]
        named += s["colour"] in alt and thing in alt
    assert named / len(clean) > 0.85


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))


def test_warc_records_contain_the_imgs_of_the_truth(tmp_path):
    c = ensure_corpus(small(tmp_path, data_uri=0.05, no_alt=0.1))
    by_page: dict[str, list[dict]] = {}
    for r in truth_rows(c):
        by_page.setdefault(r["page_url"], []).append(r)
    seen = 0
    for path in c.warc_paths:
        with open(path, "rb") as f:
            types = []
            for rec in ArchiveIterator(f):
                types.append(rec.rec_type)
                if rec.rec_type != "response":
                    continue
                url = rec.rec_headers.get_header("WARC-Target-URI")
                assert url.startswith("http://127.0.0.1:18431/site-") and url.endswith(".html")
                assert rec.http_headers.get_statuscode() == "200"
                parser = _Imgs()
                parser.feed(rec.content_stream().read().decode("utf-8"))
                want = by_page.pop(url)
                assert [urljoin(url, i["src"]) for i in parser.imgs] == [r["url"] for r in want]
                assert [i.get("alt") for i in parser.imgs] == [r["alt"] for r in want]
                seen += 1
            assert types[0] == "warcinfo"
    assert seen == 24 and not by_page
    assert any(r["url"].startswith("data:") for r in truth_rows(c))


def test_leftover_temp_dir_is_not_a_corpus(tmp_path, monkeypatch):
    cfg = small(tmp_path)
    cid = corpus_id(cfg)
    parent = Path(cfg.dir)
    # A killed generation leaves a temp dir (its pid is gone) and no corpus.
    stale = parent / f".tmp-{cid}-999999999-deadbeef"
    (stale / "warc").mkdir(parents=True)
    (stale / "corpus.json").write_text("{}")
    # A failing generation publishes nothing.
    monkeypatch.setattr(corpus_mod, "_write_warcs", lambda *a: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        ensure_corpus(cfg)
    assert not (parent / cid).exists()
    assert not stale.exists()
    assert [p.name for p in parent.iterdir()] == []
    monkeypatch.undo()
    # A final-named dir without corpus.json (not made by us) is replaced by a complete corpus.
    (parent / cid / "warc").mkdir(parents=True)
    c = ensure_corpus(cfg)
    assert c.root == str(parent / cid) and (parent / cid / "corpus.json").is_file()
    assert len(truth_rows(c)) == 24 * 8


def test_safety_faults_in_truth_and_warc(tmp_path):
    c = ensure_corpus(small(tmp_path, ssrf=0.25, robots_disallowed=0.1))
    assert c.summary["format"] == corpus_mod.FORMAT == 2
    rows = truth_rows(c)
    ssrf = [r for r in rows if "ssrf" in r["planted"]]
    robots = [r for r in rows if "robots_disallowed" in r["planted"]]
    assert ssrf and robots and c.summary["counts"]["ssrf"] == len(ssrf)
    for r in rows:
        if "ssrf" in r["planted"]:
            assert r["form"] and r["ssrf_target"] in ("loopback", "link_local") and r["src"] == r["url"]
            assert len(r["never_requested"]) == (r["ssrf_target"] == "loopback")
        elif "robots_disallowed" in r["planted"]:
            assert r["form"] in ("direct", "redirect") and r["never_requested"][0].split("/")[2] == "private"
        else:
            assert r["form"] is None and r["never_requested"] == [] and r["ssrf_target"] is None
    routes = json.loads(Path(c.routes_path).read_text())
    assert routes["/robots.txt"]["status"] == 200
    assert Path(c.files_dir, "robots.txt").read_text().count("User-agent: witforge") == 1
    for r in ssrf + robots:
        if r["form"].startswith("redirect"):
            path = "/" + r["url"].split("/", 3)[3]
            assert routes[path]["status"] == 302 and routes[path]["headers"]["Location"].endswith(r["never_requested"][0])
    # Another agent token is another robots.txt, hence another corpus.
    assert corpus_id(small(tmp_path, robots_agent="otherbot")) != corpus_id(small(tmp_path))


@pytest.mark.parametrize("field,value,match", [
    ("dead_link", 1.5, "web.dead_link"), ("noai", -0.1, "web.noai"), ("ssrf", 1.0, "web.ssrf"),
    ("host", "localhost", "web.host"), ("robots_agent", "wit forge", "web.robots_agent"),
    ("dead_link", 0.6, "web.dead_link: the image faults"), ("decompression_bomb", -1, "web.decompression_bomb"),
    ("port", 70000, "web.port"), ("dir", "s3://b/web", "web.dir"), ("pages", 0, "web.pages"),
])
def test_bad_config_names_the_field(field, value, match):
    kw = {field: value}
    if field == "dead_link" and value == 0.6:
        kw["server_error"] = 0.5
    with pytest.raises(ValueError, match=match):
        WebConfig(**kw)


def test_yaml_config_and_cli(tmp_path, capsys):
    from synthweb.__main__ import main

    cfg_file = tmp_path / "web.yaml"
    cfg_file.write_text(f"web:\n  dir: {tmp_path / 'web'}\n  pages: 6\n  images_per_page: 4\n  sites: 2\n")
    cfg = load_config(cfg_file, ["web.seed=3"], {"web": WebConfig})["web"]
    assert cfg.seed == 3 and cfg.pages == 6
    bad = tmp_path / "bad.yaml"
    bad.write_text("web:\n  dead_links: 0.1\n")
    with pytest.raises(ConfigError, match="web.dead_links"):
        load_config(bad, [], {"web": WebConfig})
    assert main(["--config", str(cfg_file), "web.seed=3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["corpus_id"] == corpus_id(cfg) and out["counts"]["images"] == 24
    assert main(["--config", str(bad)]) == 2
