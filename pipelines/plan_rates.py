"""The rates and reference figures the capacity planner (pipelines/plan.py) starts from, each with its source.

Measured figures are read from benchmarks/results/, so a new measurement changes the plan without a code change:

    curation_scaling-<N>-<time>.json   per-stage samples/s/core of one build of N candidates, and that build's
                                       funnel (records in and out of each stage); the file with the largest N is
                                       used, the newest among equals (benchmarks/curation_scaling.py)
    train_gpu-*.json                   the project's training step on one GPU per model (`ours_zero2`: DeepSpeed
                                       ZeRO-2 with bf16 torch_autocast, the path training.train runs), from a run
                                       on a GPU (benchmarks/train_gpu.py; CPU smoke runs carry no GPU name and are
                                       ignored)

Without those files the built-in defaults are used: DEFAULT_CURATION is the 10,000-candidate measurement of
2026-11-27 (benchmarks/results/curation_scaling-10000-20261127T223810Z.json: a 2-core VM shared with other
work, load ~3, so rates are low rather than high), REFERENCE_GPU the H200 table of the architecture notes.
A model with no GPU measurement is scaled from the measured model nearest to it in FLOPs by the ratio of their
training FLOPs (the same model FLOP utilisation assumed for both: closer models make the assumption safer).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

# Forward GFLOP per sample, image + text tower (224 px unless named): open_clip docs/model_profile.csv (torch
# FlopCounter, 2 FLOPs per multiply-add). Training = 3 x forward (backward = 2 x forward), as benchmarks/README.md.
FORWARD_GFLOP = {"RN50": 18.2, "ViT-B-32": 14.8, "ViT-B-16": 41.1, "ViT-L-14": 175.3, "ViT-L-14-336": 395.2}
# Parameters of the presets (training/presets.py; equal to open_clip's models of the same name).
PARAMS = {"RN50": 102_007_137, "RN101": 119_688_033, "ViT-B-32": 151_277_313, "ViT-B-16": 149_620_737,
          "ViT-L-14": 427_616_513, "ViT-L-14-336": 427_944_193}
# One GPU, open_clip eager with bf16 autocast (ViT-B-32 batch 1024, ViT-B-16 batch 256), samples/s, measured on
# an NVIDIA H200 (architecture notes; ../shared/reference/gpu-baseline/anchor4.py).
REFERENCE_GPU = {"ViT-B-32": 4714.0, "ViT-B-16": 1894.0}
REFERENCE_GPU_NAME = "NVIDIA H200"
# The project trains with DeepSpeed ZeRO-2 and bf16 torch_autocast: 4121 samples/s against eager's 4712 on the
# same card, model and run (ViT-B-32, anchor4).
ZERO2_OVER_EAGER = 4121 / 4712
# Stages that run a CLIP model; with no checkpoint configured they pass data through (input == output).
MODEL_STAGES = ("semdedup", "clip_filter")

DEFAULT_CURATION_SOURCE = "built-in default = benchmarks/results/curation_scaling-10000-20261127T223810Z.json"
# (stage, records in, records out, samples/s/core) of that run.
DEFAULT_CURATION = [
    ("extract", 10000, 9694, 735.954), ("balance", 9694, 7981, 700.850), ("download", 7981, 6974, 41.740),
    ("filter", 6974, 6752, 571.736), ("dedupe", 6752, 6351, 184.299), ("decontam", 6351, 6342, 405.922),
    ("caption_dedupe", 6342, 5897, 877.797), ("semdedup", 5897, 5897, 110248.503),
    ("clip_filter", 5897, 5897, 93962.735), ("shard", 5897, 5897, 495.771),
]


class PlanInputError(ValueError):
    """A rate or figure the plan needs is missing or malformed; the message names it and how to supply it."""


@dataclass(frozen=True)
class StageRate:
    stage: str
    input: int
    """Records into the stage in the measured build (with `output`: the funnel the plan scales)."""
    output: int
    per_core: float | None
    """samples/s/core over the stage's input; None for a model stage that passed data through unmeasured."""


@dataclass(frozen=True)
class CurationRates:
    stages: list[StageRate]
    source: str

    def final_output(self) -> int:
        return self.stages[-1].output


@dataclass(frozen=True)
class GpuRate:
    model: str
    samples_per_s: float
    """Per GPU, the training path training.train runs (DeepSpeed ZeRO-2, bf16), one GPU (no scaling loss)."""
    gpu: str
    source: str


def _shown(path: Path) -> str:
    """A results file as a path relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(RESULTS_DIR.parent.parent))
    except ValueError:
        return str(path)


def _stage_rate(stage: str, n_in: int, n_out: int, per_core: float | None) -> StageRate:
    passed_through = stage in MODEL_STAGES and n_in == n_out
    return StageRate(stage, int(n_in), int(n_out), None if passed_through else per_core)


def curation_rates(results_dir: Path = RESULTS_DIR) -> CurationRates:
    """The per-stage rates and funnel of the largest curation_scaling run in `results_dir` (else the default)."""
    best: tuple[tuple[int, str], Path, dict[str, Any]] | None = None
    for path in sorted(results_dir.glob("curation_scaling-*.json")):
        try:
            data = json.loads(path.read_text())
            run = data["run"]
            key = (int(run["candidates_requested"]), str(data.get("started", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanInputError(f"{path}: not a curation_scaling result ({exc})") from exc
        if best is None or key > best[0]:
            best = (key, path, run)
    if best is None:
        return CurationRates([_stage_rate(*row) for row in DEFAULT_CURATION], DEFAULT_CURATION_SOURCE)
    _, path, run = best
    try:
        stages = [_stage_rate(s["stage"], s["input"], s["output"], float(s["samples_per_s_per_core"]))
                  for s in run["stages"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanInputError(f"{path}: run.stages: malformed stage entry ({exc})") from exc
    if not stages or stages[-1].output <= 0:
        raise PlanInputError(f"{path}: run.stages: no stage, or the last one kept no sample")
    return CurationRates(stages, _shown(path))


def with_funnel(rates: CurationRates, funnel: list[dict[str, Any]], source: str) -> CurationRates:
    """The measured per-core rates applied to another build's funnel (a pilot build's funnel.json stages)."""
    by_stage = {s.stage: s for s in rates.stages}
    stages = []
    for entry in funnel:
        name = entry["stage"]
        if name not in by_stage:
            raise PlanInputError(f"{source}: stage {name!r} has no measured rate in {rates.source}: "
                                 f"pass --rate {name}=<samples/s/core>")
        stages.append(_stage_rate(name, entry["input"], entry["output"], by_stage[name].per_core))
    if not stages or stages[-1].output <= 0:
        raise PlanInputError(f"{source}: funnel: no stage, or the last one kept no sample")
    return CurationRates(stages, f"rates: {rates.source}; funnel: {source}")


def override_rates(rates: CurationRates, overrides: dict[str, float]) -> CurationRates:
    """`--rate stage=samples/s/core` replaces a measured (or pass-through) stage's rate."""
    known = {s.stage for s in rates.stages}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PlanInputError(f"--rate {unknown[0]}: no such stage in the funnel (stages: {', '.join(sorted(known))})")
    stages = [StageRate(s.stage, s.input, s.output, overrides.get(s.stage, s.per_core)) for s in rates.stages]
    note = ", ".join(f"{k}={v:g}" for k, v in sorted(overrides.items()))
    return CurationRates(stages, f"{rates.source}; overridden: {note}" if overrides else rates.source)


def _measured_gpu(results_dir: Path) -> dict[str, GpuRate]:
    """model -> the newest train_gpu measurement of the project's ZeRO-2 training step on a GPU."""
    runs = []
    for path in sorted(results_dir.glob("train_gpu-*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise PlanInputError(f"{path}: not JSON ({exc})") from exc
        gpu = (data.get("machine") or {}).get("gpu")
        if gpu:
            runs.append((str(data.get("started_utc", "")), path, gpu, data.get("models") or {}))
    out: dict[str, GpuRate] = {}
    for _, path, gpu, models in sorted(runs, key=lambda r: r[0]):
        for name, m in models.items():
            sps = ((m.get("configs") or {}).get("ours_zero2") or {}).get("samples_per_s")
            if sps:
                out[name] = GpuRate(name, float(sps), gpu, f"{_shown(path)}: models.{name}.configs.ours_zero2")
    return out


def gpu_rate(model: str, results_dir: Path = RESULTS_DIR) -> GpuRate:
    """Per-GPU training samples/s of `model` on the project's ZeRO-2 bf16 path (see the module docstring)."""
    base = {name: GpuRate(name, sps * ZERO2_OVER_EAGER, REFERENCE_GPU_NAME,
                          f"reference open_clip eager bf16 {sps:g} samples/s x ZeRO-2/eager {ZERO2_OVER_EAGER:.4f} "
                          "(architecture notes, anchor4)")
            for name, sps in REFERENCE_GPU.items()}
    base.update(_measured_gpu(results_dir))
    if model in base:
        return base[model]
    if model not in FORWARD_GFLOP:
        raise PlanInputError(f"--model {model}: no GPU measurement and no FLOP count to scale one by "
                             f"(known: {', '.join(sorted(FORWARD_GFLOP))}); pass --gpu-rate <samples/s per GPU>")
    scalable = [n for n in base if n in FORWARD_GFLOP]
    near = min(scalable, key=lambda n: (abs(math.log(FORWARD_GFLOP[n] / FORWARD_GFLOP[model])), n))
    ref = base[near]
    ratio = FORWARD_GFLOP[near] / FORWARD_GFLOP[model]
    return GpuRate(model, ref.samples_per_s * ratio, ref.gpu,
                   f"{near} {ref.samples_per_s:.1f} samples/s x FLOPs ratio {FORWARD_GFLOP[near]:g}/"
                   f"{FORWARD_GFLOP[model]:g} (same MFU assumed; {near}: {ref.source})")
