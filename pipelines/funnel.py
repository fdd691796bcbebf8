"""The funnel report: how many records entered and left each stage, and why every dropped one was dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageCounts:
    """Counts of one stage. `dropped` maps a reason (e.g. "too_small", "exact_sha256") to a count."""

    stage: str
    input: int = 0
    output: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def check(self) -> "StageCounts":
        lost = self.input - self.output - sum(self.dropped.values())
        if lost != 0:
            raise AssertionError(f"stage {self.stage}: {self.input} in, {self.output} out, "
                                 f"{sum(self.dropped.values())} dropped: {lost} records unaccounted for")
        return self

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "input": self.input, "output": self.output,
                "dropped": dict(sorted(self.dropped.items()))}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "StageCounts":
        return cls(stage=d["stage"], input=d["input"], output=d["output"], dropped=dict(d["dropped"]))


def render(stages: list[StageCounts]) -> str:
    """A plain-text table, stage by stage and reason by reason."""
    lines = [f"{'stage':<14} {'in':>9} {'out':>9}  dropped (reason: count)"]
    for s in stages:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s.dropped.items(), key=lambda kv: -kv[1])) or "-"
        lines.append(f"{s.stage:<14} {s.input:>9} {s.output:>9}  {reasons}")
    return "\n".join(lines)
