"""The `dashboard` section of a run config (evaluation.config re-exports it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DashboardConfig:
    title: str = "witforge evaluation"
    """Page title of the dashboard."""
    output: str = ""
    """Folder (local or s3://) the site is published into; "" = <storage.root>/dashboard (index.html, data.json,
    assets/)."""
    baseline: str = "first"
    """The pinned checkpoint every delta is taken against: a digest (or a unique prefix of 6+ hex digits), a step
    (of the candidate's model, else the only model that has it), `model:step`, "first" (the candidate model's
    first evaluated checkpoint) or "previous" (the one evaluated just before the candidate)."""
    candidate: str = "latest"
    """The checkpoint compared with the baseline: "latest" (the last one evaluated) or any form `baseline` takes."""
    tolerance: float = 0.01
    """Smallest change (absolute, in metric units) that counts as a regression or an improvement."""
    noise_z: float = 2.0
    """A change must also exceed this many binomial standard errors of the difference (sqrt(p(1-p)/n) per side,
    from each result's n); 0 = the absolute tolerance alone."""
    suite: list[str] = field(default_factory=list)
    """Datasets the suite average is taken over; empty = every dataset any result row names. A suite dataset a
    checkpoint has no ok result for makes that checkpoint's average incomplete (never averaged over fewer)."""

    def __post_init__(self) -> None:
        if not self.baseline:
            raise ValueError("dashboard.baseline: must name a checkpoint (digest, step, model:step, first, previous)")
        if self.tolerance < 0:
            raise ValueError(f"dashboard.tolerance: must be >= 0, got {self.tolerance}")
        if self.noise_z < 0:
            raise ValueError(f"dashboard.noise_z: must be >= 0, got {self.noise_z}")
        if len(set(self.suite)) != len(self.suite):
            raise ValueError(f"dashboard.suite: lists a dataset twice: {self.suite}")
