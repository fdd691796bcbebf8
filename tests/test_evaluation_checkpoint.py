"""End to end with a real (tiny, randomly initialised) checkpoint saved by training.checkpoint: the CLI
evaluates every step of the run on Ray, publishes rows, resumes, and the dashboard shows them."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import torch

from evaluation import dashboard, run
from evaluation.results import all_rows, result_uri
from pipelines import storage
from training.checkpoint import save_checkpoint
from training.model import CLIP, CLIPConfig
from training.tokenizer import CaptionTokenizer

TINY = CLIPConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
                  vocab_size=300, context_length=16, text_width=32, text_layers=1, text_heads=2)


def _save_run(root: str, steps: list[int]) -> list[str]:
    tok = CaptionTokenizer.train(["a small red circle on the left", "three blue stars on a gray background",
                                  "the number 7", "the letter K"], TINY.vocab_size, TINY.context_length)
    uris = []
    for step in steps:
        torch.manual_seed(step)
        uris.append(save_checkpoint(CLIP(TINY, eot_id=tok.eot_id), TINY, tok, root, "tiny", step))
    return uris


class _Checker(HTMLParser):
    """Well-formedness for the tags we write: every opened non-void element is closed in order."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}
    SVG_LEAF = {"line", "rect", "circle", "polyline", "path"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: dict[str, int] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag in ("script", "link"):  # only the site's own bundled assets, never a CDN
            src = dict(attrs).get("src") or dict(attrs).get("href")
            assert src.startswith("assets/"), f"<{tag}> loads {src}"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_cli_evaluates_real_checkpoints_and_dashboard_shows_them(ray_local, tmp_path, capsys):
    root = str(tmp_path / "root")
    steps = _save_run(root, [1, 2])
    config = tmp_path / "eval.yaml"
    config.write_text(f"storage:\n  root: {root}\ntraining:\n  run: tiny\n"
                      "evaluation:\n  checkpoint: all\n  tasks: [shape, heldout_combo, retrieval]\n"
                      "  samples_per_class: 2\n  retrieval_pairs: 12\n  image_size: 48\n"
                      "dashboard:\n  title: tiny run\n")
    assert run.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "heldout_combo" in out and "image_to_text_R@1" in out and "6 evaluated" in out

    digests = [storage.read_json(storage.join(u, "meta.json"))["digest"] for u in steps]
    for step, uri, digest in zip([1, 2], steps, digests):
        rows = [json.loads(x) for x in storage.read_bytes(result_uri(root, digest, "retrieval")).splitlines()]
        assert {r["metric"] for r in rows} == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image")
                                               for k in (1, 5, 10)}
        assert all(r["checkpoint"] == uri and r["step"] == step and r["model"] == "tiny" and r["n"] == 12
                   and 0.0 <= r["value"] <= 1.0 for r in rows)
        top1 = [json.loads(x) for x in storage.read_bytes(result_uri(root, digest, "heldout_combo")).splitlines()]
        assert {r["metric"]: r["chance"] for r in top1}["top1"] == 1 / 48

    # Rerun with the default checkpoint (latest): everything is already there.
    assert run.main(["--config", str(config), "evaluation.checkpoint="]) == 0
    assert "0 evaluated, 3 skipped" in capsys.readouterr().out

    assert dashboard.main(["--config", str(config)]) == 0
    page_uri = capsys.readouterr().out.strip().splitlines()[-1]
    assert page_uri == storage.join(root, "dashboard", "index.html")
    html = storage.read_bytes(page_uri).decode()
    checker = _Checker()
    checker.feed(html)
    checker.close()
    assert not checker.stack
    text = " ".join(checker.text)
    for ds in ("shape", "heldout_combo", "retrieval"):  # a trend chart per dataset, a line over its two steps
        assert f'id="trend-{ds}"' in html
    assert checker.tags["polyline"] >= 3
    # comparison, averages, every checkpoint, nights, provenance, every evaluation
    assert checker.tags["table"] == 6
    assert "tiny run" in text and "heldout_combo" in text and digests[0][:12] in text and digests[0] in html
    assert "tiny step 2" in text and "chance" in text and steps[1] in text


def test_dashboard_marks_failures_and_handles_no_results(tmp_path):
    root = str(tmp_path)
    empty = dashboard.build_dashboard(str(tmp_path / "empty"), dashboard.DashboardConfig())
    assert "No evaluation results yet" in storage.read_bytes(empty).decode()
    rows = []
    base = {"model": "m", "checkpoint": "file:///c/step_00000005", "step": 5, "digest": "a" * 64,
            "dataset_version": "1", "code_version": "abc123", "config_hash": "h" * 16, "time": "2026-01-01T00:00:00"}
    rows.append({**base, "dataset": "shape", "task": "zeroshot", "metric": "top1", "value": 0.5,
                 "chance": 1 / 6, "n": 12, "status": "ok", "error": None})
    rows.append({**base, "dataset": "letter", "task": "zeroshot", "metric": "error", "value": None,
                 "chance": None, "n": 0, "status": "failed", "error": "RuntimeError: <boom> & more"})
    for r in rows:
        storage.write_bytes(result_uri(root, r["digest"], r["dataset"]), (json.dumps(r) + "\n").encode())
    assert len(all_rows(root)) == 2
    page = dashboard.build_dashboard(root, dashboard.DashboardConfig(output=str(tmp_path / "out")))
    assert page == str(tmp_path / "out" / "index.html")
    html = storage.read_bytes(page).decode()
    checker = _Checker()
    checker.feed(html)
    assert not checker.stack and "polyline" not in checker.tags  # one checkpoint: no line to draw
    assert 'data-status="failed"' in html and "RuntimeError: &lt;boom&gt; &amp; more" in html
    assert 'class="failed-mark"' in html  # the trend chart shows the failed dataset as failed
    assert "incomplete 1/2" in html  # and the suite average as incomplete, not the mean of the other one
    assert "abc123" in html and "h" * 16 in html and "a" * 16 in html
