"""What the dashboard shows, computed from result rows: checkpoints in evaluation order, nights, one headline
result per (checkpoint, dataset), suite and group averages, and deltas against the pinned baseline.

Rules (the page states them too):
- The headline metric of a dataset is the row flagged `"main": true` (the registry's main metric, as
  evaluation.external writes it), else results.PRIMARY[task], else `top1`, else the dataset's first metric row.
- A night is the UTC date of a row's `time`; a checkpoint belongs to the night of its first row. Checkpoints
  are ordered by night, then model (in the order their evaluation began that night), then step: the trend
  charts' x axis.
- An average over a scope (the suite, or one group) is complete only when every dataset of the scope has an ok
  result; otherwise it is "incomplete", its value is None, and the mean over the datasets it has is kept only
  as `partial`, shown beside the list of what failed or is missing. Deltas are never taken on incomplete ones.
- A change counts (regression or improvement) when |delta| > max(tolerance, noise_z * SE) where SE is the
  binomial standard error of the difference, sqrt(p_b(1-p_b)/n_b + p_c(1-p_c)/n_c); for an average over k
  datasets each side's SE is sqrt(sum of its datasets' SE^2) / k.
"""

from __future__ import annotations

import importlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache

from evaluation.dashboard_config import DashboardConfig
from evaluation.results import PRIMARY

OK, FAILED, MISSING = "ok", "failed", "missing"
# Delta statuses, in the order the comparison table lists them: what needs a person's attention first.
REGRESSION, INCOMPLETE, INCOMPARABLE, NO_BASELINE, IMPROVED, SAME = (
    "regression", "incomplete", "incomparable", "no baseline", "improved", "within noise")
STATUS_ORDER = (REGRESSION, FAILED, MISSING, INCOMPLETE, INCOMPARABLE, NO_BASELINE, IMPROVED, SAME)
OTHER_GROUP = "other"
SUITE = "suite"
"""The scope name of the suite average (a group of that name is shown as "suite (group)")."""


@dataclass(frozen=True)
class Checkpoint:
    digest: str
    model: str
    step: int
    uri: str
    night: str
    """UTC date (YYYY-MM-DD) of the checkpoint's first result row."""
    first_time: str
    last_time: str

    @property
    def label(self) -> str:
        return f"{self.model or 'model'} step {self.step}"


@dataclass(frozen=True)
class Result:
    """One (checkpoint, dataset): its headline metric, or why there is none."""

    digest: str
    dataset: str
    status: str
    """ok, failed (the evaluation raised) or missing (no row)."""
    metric: str = ""
    value: float | None = None
    chance: float | None = None
    n: int = 0
    dataset_version: str = ""
    config_hash: str = ""
    code_version: str = ""
    ray_job_id: str = ""
    time: str = ""
    error: str = ""

    @property
    def se(self) -> float:
        """Binomial standard error of the value (0 when n is unknown)."""
        if self.value is None or self.n <= 0:
            return 0.0
        p = min(1.0, max(0.0, self.value))
        return math.sqrt(p * (1 - p) / self.n)


@dataclass(frozen=True)
class Average:
    scope: str
    datasets: tuple[str, ...]
    value: float | None
    """The mean over every dataset of the scope; None when any is failed or missing."""
    partial: float | None
    """The mean over the datasets that have an ok result (shown, never compared)."""
    se: float
    failed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.value is not None

    @property
    def have(self) -> int:
        return len(self.datasets) - len(self.failed) - len(self.missing)


@dataclass(frozen=True)
class Delta:
    name: str
    """A dataset, "suite", or a group name."""
    status: str
    baseline: float | None
    candidate: float | None
    delta: float | None
    tolerance: float | None
    note: str = ""


@dataclass
class Summary:
    rows: int
    checkpoints: list[Checkpoint]
    results: dict[tuple[str, str], Result]
    suite: list[str]
    groups: dict[str, list[str]]
    """Group name -> its suite datasets, groups in name order; empty when the whole suite is one group (its
    average would be the suite's)."""
    group_of: dict[str, str]
    baseline: Checkpoint
    candidate: Checkpoint
    config: DashboardConfig
    averages: dict[tuple[str, str], Average] = field(default_factory=dict)
    """(digest, scope) -> average; scope "suite" or a group name."""
    deltas: list[Delta] = field(default_factory=list)
    """Candidate against baseline per dataset, regressions first."""
    average_deltas: list[Delta] = field(default_factory=list)
    """The suite's, then each group's."""

    def result(self, digest: str, dataset: str) -> Result:
        return self.results.get((digest, dataset)) or Result(digest, dataset, MISSING)

    def datasets(self) -> list[str]:
        """The suite's datasets, then any other dataset a row names (shown, but outside every average)."""
        return self.suite + sorted({d for _, d in self.results} - set(self.suite))

    def nights(self) -> dict[str, list[Checkpoint]]:
        out: dict[str, list[Checkpoint]] = defaultdict(list)
        for c in self.checkpoints:
            out[c.night].append(c)
        return dict(out)


# ---- rows -> results --------------------------------------------------------------------------------------

def night_of(time: str) -> str:
    """UTC date of an ISO timestamp as written by evaluation.results (already UTC)."""
    return time[:10] if len(time) >= 10 else "unknown"


def _headline(rows: list[dict]) -> dict | None:
    # Robustness rows (evaluation.robustness) are derived from the evaluations, not evaluations themselves.
    ok = [r for r in rows if r.get("status") == OK and r.get("task") != "robustness"]
    if not ok:
        return None
    for pick in (lambda r: r.get("main") is True,
                 lambda r: r["metric"] == PRIMARY.get(r.get("task", "")),
                 lambda r: r["metric"] == "top1"):
        chosen = [r for r in ok if pick(r)]
        if chosen:
            return chosen[0]
    return ok[0]


def to_result(digest: str, dataset: str, rows: list[dict]) -> Result:
    head = _headline(rows)
    if head is None:
        failed = [r for r in rows if r.get("status") == FAILED]
        src = failed[0] if failed else rows[0]
        status = FAILED if failed else MISSING
        value = None
        metric, chance, n = src.get("metric", ""), None, 0
        error = src.get("error") or ("" if failed else "no ok row")
    else:
        src, status, error = head, OK, ""
        value, metric, chance, n = float(head["value"]), head["metric"], head.get("chance"), int(head.get("n") or 0)
    return Result(digest, dataset, status, metric, value, None if chance is None else float(chance), n,
                  str(src.get("dataset_version", "")), str(src.get("config_hash", "")),
                  str(src.get("code_version", "")), str(src.get("ray_job_id") or ""), str(src.get("time", "")),
                  str(error or ""))


def checkpoints_of(rows: list[dict]) -> list[Checkpoint]:
    by_digest: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_digest[r["digest"]].append(r)
    out = []
    for digest, rs in by_digest.items():
        times = sorted(str(r.get("time", "")) for r in rs)
        first = rs[0]
        out.append(Checkpoint(digest, str(first.get("model", "")), int(first.get("step", 0)),
                              str(first.get("checkpoint", "")), night_of(times[0]), times[0], times[-1]))
    # Within a night, models in the order their evaluation began, each model's checkpoints by step.
    began: dict[tuple[str, str], str] = {}
    for c in out:
        key = (c.night, c.model)
        began[key] = min(began.get(key, c.first_time), c.first_time)
    return sorted(out, key=lambda c: (c.night, began[(c.night, c.model)], c.model, c.step, c.digest))


# ---- groups -----------------------------------------------------------------------------------------------

@cache
def registered_group(dataset: str) -> str | None:
    """The group the dataset registry (evaluation.registry, else evaluation.tasks) gives `dataset`, if any."""
    for module in ("evaluation.registry", "evaluation.tasks"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for getter in ("get_dataset", "get"):
            fn = getattr(mod, getter, None)
            if not callable(fn):
                continue
            try:
                spec = fn(dataset)
            except (KeyError, LookupError, ValueError):
                continue
            group = spec.get("group") if isinstance(spec, dict) else getattr(spec, "group", None)
            if group:
                return str(group)
    return None


def group_map(rows: list[dict], datasets: list[str]) -> dict[str, str]:
    """dataset -> group: a row's own `group` field first, then the registry, else "other"."""
    from_rows = {r["dataset"]: str(r["group"]) for r in rows if r.get("group")}
    out = {d: from_rows.get(d) or registered_group(d) or OTHER_GROUP for d in datasets}
    return {d: f"{g} (group)" if g == SUITE else g for d, g in out.items()}  # the suite's own scope name


# ---- averages and deltas ----------------------------------------------------------------------------------

def average(scope: str, results: list[Result]) -> Average:
    ok = [r for r in results if r.status == OK]
    failed = tuple(r.dataset for r in results if r.status == FAILED)
    missing = tuple(r.dataset for r in results if r.status == MISSING)
    partial = sum(r.value for r in ok) / len(ok) if ok else None  # type: ignore[misc]
    se = math.sqrt(sum(r.se ** 2 for r in ok)) / len(ok) if ok else 0.0
    complete = bool(results) and len(ok) == len(results)
    return Average(scope, tuple(r.dataset for r in results), partial if complete else None, partial, se,
                   failed, missing)


def tolerance(cfg: DashboardConfig, se_baseline: float, se_candidate: float) -> float:
    return max(cfg.tolerance, cfg.noise_z * math.sqrt(se_baseline ** 2 + se_candidate ** 2))


def _classify(cfg: DashboardConfig, name: str, base: float, cand: float, se_b: float, se_c: float,
              note: str = "") -> Delta:
    tol = tolerance(cfg, se_b, se_c)
    d = cand - base
    status = REGRESSION if d < -tol else IMPROVED if d > tol else SAME
    return Delta(name, status, base, cand, d, tol, note)


def compare_results(cfg: DashboardConfig, base: Result, cand: Result) -> Delta:
    name = cand.dataset
    if cand.status != OK:
        return Delta(name, cand.status, base.value, None, None, None, cand.error)
    if base.status != OK:
        return Delta(name, NO_BASELINE, None, cand.value, None, None, f"baseline {base.status}")
    if base.dataset_version != cand.dataset_version:
        return Delta(name, INCOMPARABLE, base.value, cand.value, None, None,
                     f"dataset version {base.dataset_version} -> {cand.dataset_version}")
    if base.metric != cand.metric:
        return Delta(name, INCOMPARABLE, base.value, cand.value, None, None, f"metric {base.metric} -> {cand.metric}")
    note = "evaluation settings differ (config hash)" if base.config_hash != cand.config_hash else ""
    return _classify(cfg, name, base.value, cand.value, base.se, cand.se, note)  # type: ignore[arg-type]


def compare_averages(cfg: DashboardConfig, base: Average, cand: Average) -> Delta:
    if not cand.complete:
        return Delta(cand.scope, INCOMPLETE, base.value, None, None, None, _gaps(cand))
    if not base.complete:
        return Delta(cand.scope, NO_BASELINE, None, cand.value, None, None, f"baseline incomplete: {_gaps(base)}")
    return _classify(cfg, cand.scope, base.value, cand.value, base.se, cand.se)  # type: ignore[arg-type]


def _gaps(avg: Average) -> str:
    parts = [f"failed: {', '.join(avg.failed)}"] if avg.failed else []
    parts += [f"missing: {', '.join(avg.missing)}"] if avg.missing else []
    return f"{avg.have} of {len(avg.datasets)} datasets; " + "; ".join(parts)


def sort_deltas(deltas: list[Delta]) -> list[Delta]:
    """Regressions first (largest drop first), then failures and gaps, then the rest by delta."""
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return sorted(deltas, key=lambda d: (rank[d.status], d.delta if d.delta is not None else 0.0, d.name))


# ---- choosing the baseline and the candidate -------------------------------------------------------------

def select(spec: str, checkpoints: list[Checkpoint], anchor: Checkpoint | None, field_name: str) -> Checkpoint:
    """Resolve a `dashboard.baseline`/`candidate` value; `anchor` is the candidate (None while resolving it)."""
    def fail(why: str) -> ValueError:
        known = ", ".join(f"{c.model}:{c.step} ({c.digest[:8]})" for c in checkpoints)
        return ValueError(f"dashboard.{field_name}: {spec!r} {why} (checkpoints: {known})")

    spec = spec.strip()
    if spec == "latest":
        return max(checkpoints, key=lambda c: (c.night, c.last_time, c.step))
    same_model = [c for c in checkpoints if anchor is None or c.model == anchor.model]
    if spec == "first":
        return same_model[0]
    if spec == "previous":
        if anchor is None or anchor not in same_model or same_model.index(anchor) == 0:
            raise fail("has no checkpoint evaluated before the candidate")
        return same_model[same_model.index(anchor) - 1]
    model, sep, step_text = spec.rpartition(":")
    if step_text.isdigit():
        pool = [c for c in checkpoints if c.model == model] if sep else same_model
        hits = [c for c in pool if c.step == int(step_text)]
        if not hits and not sep:
            hits = [c for c in checkpoints if c.step == int(step_text)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise fail("matches several checkpoints: write model:step or a digest")
    if len(spec) >= 6 and all(ch in "0123456789abcdef" for ch in spec.lower()):
        hits = [c for c in checkpoints if c.digest.startswith(spec.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise fail("is a prefix of several digests")
    raise fail("names no evaluated checkpoint")


# ---- everything -------------------------------------------------------------------------------------------

def summarize(rows: list[dict], cfg: DashboardConfig) -> Summary:
    """All the dashboard shows; `rows` as evaluation.results.all_rows returns them (must not be empty)."""
    if not rows:
        raise ValueError("no result rows to summarize")
    checkpoints = checkpoints_of(rows)
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_pair[(r["digest"], r["dataset"])].append(r)
    results = {pair: to_result(pair[0], pair[1], rs) for pair, rs in by_pair.items()}
    suite = list(cfg.suite) or sorted({r["dataset"] for r in rows})
    group_of = group_map(rows, sorted(set(suite) | {r["dataset"] for r in rows}))
    groups: dict[str, list[str]] = defaultdict(list)
    for d in suite:
        groups[group_of[d]].append(d)
    candidate = select(cfg.candidate, checkpoints, None, "candidate")
    baseline = select(cfg.baseline, checkpoints, candidate, "baseline")
    shown = dict(sorted(groups.items())) if len(groups) > 1 else {}
    s = Summary(len(rows), checkpoints, results, suite, shown, group_of, baseline,
                candidate, cfg)
    scopes = {SUITE: suite, **s.groups}
    for c in checkpoints:
        for scope, datasets in scopes.items():
            s.averages[(c.digest, scope)] = average(scope, [s.result(c.digest, d) for d in datasets])
    s.deltas = sort_deltas([compare_results(cfg, s.result(baseline.digest, d), s.result(candidate.digest, d))
                            for d in s.datasets()])
    s.average_deltas = [compare_averages(cfg, s.averages[(baseline.digest, scope)],
                                         s.averages[(candidate.digest, scope)]) for scope in scopes]
    return s
