"""The nightly dashboard: averaging, tolerance and ordering rules on hand-made rows; the published site (local
and on an S3 server); and the page in headless Chromium (Debian's `chromium`): it loads without a console error,
shows the planted regression first and highlighted, shows the planted failure as failed and the averages it
breaks as incomplete. The screenshot is saved under the test's tmp dir (and WITFORGE_SCREENSHOT_DIR if set) and
its path printed. Without Chromium the browser test fails, unless WITFORGE_SKIP_BROWSER=1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import types
from html.parser import HTMLParser
from typing import ClassVar

import pytest

from evaluation import dashboard
from evaluation import dashboard_stats as st
from evaluation.dashboard_browser import BrowserError, Chromium, find_chromium, serve
from evaluation.dashboard_config import DashboardConfig
from evaluation.dashboard_html import CSP
from evaluation.results import write_rows
from pipelines import storage

NIGHT1, NIGHT2 = "2026-11-20T02:10:00+00:00", "2026-11-21T02:15:00+00:00"
GROUPS = {"shape": "objects", "colour": "objects", "count": "objects", "digit": "glyphs", "letter": "glyphs",
          "retrieval": "retrieval"}


def digest(model: str, step: int) -> str:
    return hashlib.sha256(f"{model}/{step}".encode()).hexdigest()


def row(model: str, step: int, dataset: str, value: float | None, time: str, n: int = 400,
        version: str = "1", error: str | None = None, group: bool = True) -> list[dict]:
    task = "retrieval" if dataset == "retrieval" else "zeroshot"
    base = {"model": model, "checkpoint": f"s3://bucket/ckpt/{model}/step_{step:08d}", "step": step,
            "digest": digest(model, step), "dataset": dataset, "dataset_version": version, "task": task,
            "code_version": f"c0de{step}", "config_hash": f"h{dataset}", "ray_job_id": f"raysubmit_{step}",
            "time": time}
    if group:
        base["group"] = GROUPS[dataset]
    if error is not None:
        return [{**base, "metric": "error", "value": None, "chance": None, "n": 0, "status": "failed", "error": error}]
    metric = "image_to_text_R@1" if task == "retrieval" else "top1"
    # A secondary metric row first: the headline must be picked by name, not by position.
    return [{**base, "metric": "top5", "value": min(1.0, value + 0.2), "chance": 0.5, "n": n, "status": "ok",
             "error": None},
            {**base, "metric": metric, "value": value, "chance": 0.1, "n": n, "status": "ok", "error": None}]


def planted_rows() -> list[dict]:
    """Two nights of model "nightly": steps 1000 and 2000 (night 1), 3000 (night 2). At step 3000 `count` drops
    0.60 -> 0.45 (the planted regression), `shape` moves 0.01 (noise), `colour` improves, `letter` fails."""
    values = {1000: {"shape": 0.50, "colour": 0.70, "count": 0.55, "digit": 0.20, "letter": 0.10, "retrieval": 0.30},
              2000: {"shape": 0.60, "colour": 0.75, "count": 0.60, "digit": 0.25, "letter": 0.12, "retrieval": 0.40},
              3000: {"shape": 0.59, "colour": 0.85, "count": 0.45, "digit": 0.26, "retrieval": 0.41}}
    rows: list[dict] = []
    for step, per_ds in values.items():
        time = NIGHT1 if step < 3000 else NIGHT2
        for ds, v in per_ds.items():
            rows += row("nightly", step, ds, v, time)
    rows += row("nightly", 3000, "letter", None, NIGHT2, error="RuntimeError: <out of memory> & more")
    return rows


def write_planted(root: str) -> None:
    by_file: dict[tuple[str, str], list[dict]] = {}
    for r in planted_rows():
        by_file.setdefault((r["digest"], r["dataset"]), []).append(r)
    for (d, ds), rs in by_file.items():
        write_rows(root, d, ds, rs)


def result(dataset: str, value: float | None, n: int = 100, status: str = "ok", version: str = "1") -> st.Result:
    return st.Result("d", dataset, status, "top1", value, 0.1, n if value is not None else 0, version)


# ---- rules ------------------------------------------------------------------------------------------------

def test_average_is_incomplete_when_a_dataset_failed_or_is_missing():
    full = st.average("suite", [result("a", 0.5), result("b", 0.7)])
    assert full.complete and full.value == pytest.approx(0.6) and not full.failed
    broken = st.average("suite", [result("a", 0.5), result("b", None, status="failed"),
                                  result("c", None, status="missing"), result("d", 0.9)])
    assert broken.value is None and broken.partial == pytest.approx(0.7)  # never averaged over fewer
    assert broken.failed == ("b",) and broken.missing == ("c",) and broken.have == 2
    cfg = DashboardConfig()
    d = st.compare_averages(cfg, full, broken)
    assert d.status == st.INCOMPLETE and d.delta is None and "failed: b" in d.note and "missing: c" in d.note
    assert st.compare_averages(cfg, broken, full).status == st.NO_BASELINE


def test_headline_metric_per_dataset():
    base = {"digest": "d", "dataset": "x", "status": "ok", "n": 10, "chance": 0.1, "time": NIGHT1}
    external = [{**base, "task": "zeroshot_classification", "metric": "top1", "value": 0.9, "main": False},
                {**base, "task": "zeroshot_classification", "metric": "mean_per_class_recall", "value": 0.7,
                 "main": True}]
    assert st.to_result("d", "x", external).metric == "mean_per_class_recall"  # the registry's main metric
    derived = {**base, "task": "robustness", "metric": "zeroshot_top1_drop", "value": 0.3}
    procedural = [derived, {**base, "task": "zeroshot", "metric": "top5", "value": 0.8},
                  {**base, "task": "zeroshot", "metric": "top1", "value": 0.4}]
    assert (st.to_result("d", "x", procedural).metric, st.to_result("d", "x", procedural).value) == ("top1", 0.4)
    failed = st.to_result("d", "x", [{**base, "task": "zeroshot", "metric": "error", "value": None,
                                      "status": "failed", "error": "boom"}])
    assert (failed.status, failed.value, failed.error) == (st.FAILED, None, "boom")


def test_tolerance_is_the_larger_of_absolute_and_binomial_noise():
    cfg = DashboardConfig(tolerance=0.01, noise_z=2.0)
    base, small_drop, big_drop = result("x", 0.5, n=100), result("x", 0.40, n=100), result("x", 0.35, n=100)
    # SE of each side sqrt(.5*.5/100)=.05 -> tolerance 2*sqrt(.05^2+.049^2) ~ 0.14: a 0.10 drop is noise.
    assert st.compare_results(cfg, base, small_drop).status == st.SAME
    assert st.compare_results(cfg, base, small_drop).tolerance == pytest.approx(0.14, abs=0.002)
    assert st.compare_results(cfg, base, big_drop).status == st.REGRESSION
    absolute = DashboardConfig(tolerance=0.01, noise_z=0.0)
    assert st.compare_results(absolute, base, small_drop).status == st.REGRESSION
    big_n = st.compare_results(cfg, result("x", 0.5, n=10**7), result("x", 0.505, n=10**7))
    assert big_n.tolerance == 0.01 and big_n.status == st.SAME  # the absolute floor
    avg = st.average("suite", [result("a", 0.5, n=100), result("b", 0.5, n=100)])
    assert avg.se == pytest.approx(0.05 / 2 ** 0.5)  # sqrt(sum SE^2) / k


def test_statuses_sort_regressions_first():
    cfg = DashboardConfig(noise_z=0.0)
    pairs = {"same": (0.5, 0.505), "up": (0.5, 0.7), "small_drop": (0.5, 0.45), "big_drop": (0.5, 0.2)}
    deltas = [st.compare_results(cfg, result(k, b), result(k, c)) for k, (b, c) in pairs.items()]
    deltas.append(st.compare_results(cfg, result("boom", 0.5), st.Result("d", "boom", st.FAILED, error="E")))
    deltas.append(st.compare_results(cfg, result("gone", 0.5), st.Result("d", "gone", st.MISSING)))
    deltas.append(st.compare_results(cfg, st.Result("d", "new", st.MISSING), result("new", 0.5)))
    deltas.append(st.compare_results(cfg, result("v", 0.5, version="1"), result("v", 0.9, version="2")))
    order = [(d.name, d.status) for d in st.sort_deltas(deltas)]
    assert order == [("big_drop", st.REGRESSION), ("small_drop", st.REGRESSION), ("boom", st.FAILED),
                     ("gone", st.MISSING), ("v", st.INCOMPARABLE), ("new", st.NO_BASELINE), ("up", st.IMPROVED),
                     ("same", st.SAME)]


def test_checkpoints_nights_and_baseline_selection():
    rows = planted_rows() + row("other", 2000, "shape", 0.3, NIGHT1)
    cks = st.checkpoints_of(rows)
    assert [(c.model, c.step, c.night) for c in cks] == [
        ("nightly", 1000, "2026-11-20"), ("nightly", 2000, "2026-11-20"), ("other", 2000, "2026-11-20"),
        ("nightly", 3000, "2026-11-21")]
    latest = st.select("latest", cks, None, "candidate")
    assert latest.step == 3000

    def pick(spec: str) -> tuple[str, int]:
        c = st.select(spec, cks, latest, "baseline")
        return c.model, c.step

    assert pick("first") == ("nightly", 1000) and pick("previous") == ("nightly", 2000)
    assert pick("2000") == ("nightly", 2000)  # the candidate's model first
    assert pick("other:2000") == ("other", 2000) and pick(digest("other", 2000)[:8]) == ("other", 2000)
    with pytest.raises(ValueError, match=r"dashboard.baseline: '5' names no evaluated checkpoint"):
        pick("5")
    with pytest.raises(ValueError, match="dashboard.baseline: 'previous' has no checkpoint"):
        st.select("previous", cks, cks[0], "baseline")


def test_group_comes_from_row_then_registry_then_other(monkeypatch):
    st.registered_group.cache_clear()
    fake = types.ModuleType("evaluation.registry")
    fake.get_dataset = lambda name: {"zz_registered": types.SimpleNamespace(group="vtab")}[name]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "evaluation.registry", fake)
    rows = [{"dataset": "zz_registered"}, {"dataset": "zz_in_row", "group": "robustness"}]
    try:
        groups = st.group_map(rows, ["zz_registered", "zz_in_row", "zz_unknown"])
    finally:
        st.registered_group.cache_clear()
    assert groups == {"zz_registered": "vtab", "zz_in_row": "robustness", "zz_unknown": "other"}


def test_summary_of_planted_nights():
    s = st.summarize(planted_rows(), DashboardConfig(baseline="2000"))
    assert (s.baseline.step, s.candidate.step) == (2000, 3000)
    assert [d.name for d in s.deltas[:2]] == ["count", "letter"]
    assert [d.status for d in s.deltas[:2]] == [st.REGRESSION, st.FAILED]
    by_name = {d.name: d for d in s.deltas}
    assert by_name["count"].delta == pytest.approx(-0.15) and by_name["shape"].status == st.SAME
    assert by_name["colour"].status == st.IMPROVED
    assert set(s.groups) == {"objects", "glyphs", "retrieval"}
    avg = {d.name: d for d in s.average_deltas}
    assert avg[st.SUITE].status == st.INCOMPLETE and avg["glyphs"].status == st.INCOMPLETE
    assert avg["objects"].status == st.SAME  # -0.01 + 0.10 - 0.15 over three: within noise
    assert s.averages[(s.baseline.digest, st.SUITE)].value == pytest.approx((0.6 + .75 + .6 + .25 + .12 + .4) / 6)


# ---- the published site -------------------------------------------------------------------------------------

class _Checker(HTMLParser):
    VOID: ClassVar[set[str]] = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.srcs += [a[k] for k in ("src", "href") if k in a and tag in ("script", "link")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


@pytest.fixture(scope="module")
def planted_site(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dash") / "root")
    write_planted(root)
    cfg = tmp_path_factory.mktemp("cfg") / "dash.yaml"
    cfg.write_text(f"storage:\n  root: {root}\ndashboard:\n  title: nightly\n  baseline: '2000'\n")
    return root, str(cfg)


def test_site_is_published_whole_with_index_last(planted_site, monkeypatch, capsys):
    root, cfg = planted_site
    order: list[str] = []
    real = dashboard.publish
    monkeypatch.setattr(dashboard, "publish", lambda uri, data, cache: (order.append(uri), real(uri, data, cache)))
    assert dashboard.main(["--config", cfg]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    site = storage.join(root, "dashboard")
    assert out[-1] == storage.join(site, "index.html") and order[-1] == out[-1]
    assert out[0].startswith("nightly step 3000") and "to look at" in out[0]
    assert any(line.startswith("regression") and "count" in line and "-0.150" in line for line in out)
    assert any(line.startswith("failed") and "letter" in line for line in out)
    assert any(line.startswith("incomplete") and "suite" in line for line in out)
    html = storage.read_bytes(out[-1]).decode()
    checker = _Checker()
    checker.feed(html)
    assert not checker.stack
    assert checker.srcs and all(s.startswith("assets/") for s in checker.srcs)  # bundled: no CDN, no host
    for src in checker.srcs:
        assert storage.exists(storage.join(site, src)), src
    assert "RuntimeError: &lt;out of memory&gt; &amp; more" in html and "raysubmit_3000" in html
    data = storage.read_json(storage.join(site, "data.json"))
    assert data["regressions"] == ["count"] and data["baseline"]["step"] == 2000
    assert {d["name"]: d["status"] for d in data["average_deltas"]}["suite"] == "incomplete"
    # A rebuild publishes no asset again (names carry their content hash) and the page again, last.
    order.clear()
    assert dashboard.main(["--config", cfg, "dashboard.tolerance=0.5", "dashboard.noise_z=0"]) == 0
    assert [u.rsplit("/", 1)[-1] for u in order] == ["data.json", "index.html"]
    assert storage.read_json(storage.join(site, "data.json"))["regressions"] == []


def test_cli_names_a_bad_baseline_and_empty_root_gets_a_page(planted_site, tmp_path, capsys):
    _, cfg = planted_site
    assert dashboard.main(["--config", cfg, "dashboard.baseline=nightly:7"]) == 2
    assert "dashboard.baseline: 'nightly:7' names no evaluated checkpoint" in capsys.readouterr().err
    index = dashboard.build_dashboard(str(tmp_path), DashboardConfig())
    assert "No evaluation results yet" in storage.read_bytes(index).decode()


def test_site_on_s3_carries_content_types(s3_bucket):
    import boto3

    root = s3_bucket + "/w"
    write_planted(root)
    index = dashboard.build_dashboard(root, DashboardConfig(baseline="2000"))
    assert index == root + "/dashboard/index.html"
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    types_ = {o["Key"].rsplit(".", 1)[-1]: s3.head_object(Bucket=bucket, Key=o["Key"])["ContentType"]
              for o in s3.list_objects_v2(Bucket=bucket, Prefix="w/dashboard/")["Contents"]}
    assert types_["html"].startswith("text/html") and types_["css"].startswith("text/css")
    assert types_["json"].startswith("application/json") and "javascript" in types_["js"]
    assert types_["svg"].startswith("image/svg+xml")


# ---- in a browser -------------------------------------------------------------------------------------------

PROBE = """(() => {
  const rows = [...document.querySelectorAll('#comparison tbody tr')];
  const first = rows[0];
  const letter = rows.find(r => r.dataset.name === 'letter');
  const suite = [...document.querySelectorAll('#averages tbody tr')].find(r => r.dataset.name === 'suite');
  const facts = {
    first: first.dataset.name, firstStatus: first.dataset.status, firstClass: first.className,
    firstBackground: getComputedStyle(first.querySelector('td')).backgroundColor,
    letterStatus: letter.dataset.status, letterText: letter.innerText,
    suiteCard: document.getElementById('card-suite').innerText, suiteStatus: suite.dataset.status,
    suiteText: suite.innerText,
    firstDatasetFigure: document.querySelector('#trends figure[data-kind=dataset]').dataset.name,
    countFigureClass: document.getElementById('trend-count').className,
    js: document.documentElement.dataset.js || '', svgs: document.querySelectorAll('svg.chart').length};
  document.getElementById('problems-only').click();  // the script's filter: only what needs attention
  facts.problemRows = rows.filter(r => !r.hidden).map(r => r.dataset.name);
  return facts;
})()"""


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module's visits; no Chromium fails, unless WITFORGE_SKIP_BROWSER=1."""
    try:
        binary = find_chromium()
    except BrowserError as exc:
        if os.environ.get("WITFORGE_SKIP_BROWSER") == "1":
            pytest.skip(f"WITFORGE_SKIP_BROWSER=1: {exc}")
        pytest.fail(f"{exc} (or set WITFORGE_SKIP_BROWSER=1 to skip the browser tests)")
    with Chromium(binary) as chromium:
        yield chromium


def test_page_in_headless_chromium(planted_site, browser, tmp_path):
    root, _ = planted_site
    site = tmp_path / "site"
    dashboard.build_dashboard(root, DashboardConfig(title="nightly", baseline="2000", output=str(site)))
    shot = tmp_path / "dashboard.png"
    with serve(str(site)) as url:
        page = browser.visit(url, PROBE, str(shot))
    print(f"dashboard screenshot: {shot}")
    if os.environ.get("WITFORGE_SCREENSHOT_DIR"):
        os.makedirs(os.environ["WITFORGE_SCREENSHOT_DIR"], exist_ok=True)
        print(f"dashboard screenshot: {shutil.copy(shot, os.environ['WITFORGE_SCREENSHOT_DIR'])}")
    assert page.errors == [], page.errors
    f = page.facts
    assert f["js"] == "ready" and f["problemRows"] == ["count", "letter"]  # the bundled script ran and filters
    assert (f["first"], f["firstStatus"]) == ("count", "regression") and "st-regression" in f["firstClass"]
    assert f["firstBackground"] not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")  # the stylesheet highlights it
    assert f["letterStatus"] == "failed" and "out of memory" in f["letterText"]
    assert "incomplete" in f["suiteCard"] and f["suiteStatus"] == "incomplete" and "incomplete 5/6" in f["suiteText"]
    assert f["firstDatasetFigure"] == "count" and "st-regression" in f["countFigureClass"]
    assert f["svgs"] == 4 + 6  # suite + 3 groups, then one per dataset
    with open(shot, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000


def test_browser_reports_console_errors(browser, tmp_path):
    """The check above can fail: a script error, a console.error, a missing asset and a CSP violation are caught."""
    (tmp_path / "index.html").write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
                                         f'content="{CSP}"><link rel="icon" href="data:,">'
                                         '<script src="gone.js"></script><script src="bad.js"></script></head>'
                                         '<body><p style="color:red">inline style</p></body></html>')
    (tmp_path / "bad.js").write_text("console.error('planted'); undefinedFunction();")
    with serve(str(tmp_path)) as url:
        page = browser.visit(url)
    text = json.dumps(page.errors)
    assert "planted" in text and "undefinedFunction" in text and "404" in text, page.errors
    assert "Content Security Policy" in text, page.errors  # what a CDN link or inline style would raise
