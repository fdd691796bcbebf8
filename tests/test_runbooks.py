"""The runbooks (runbooks/) stay true to the code: every file has its sections, the index lists every file and
every relative link resolves, every repository file and config field they name exists, and every command they
give runs: each `python -m <module> [<subcommand>]` with --help (its --flags must appear in that help), each
`ray [job] <command>` among the Ray CLI's commands. A renamed entry point, subcommand, flag, file or config field
fails here instead of during an incident."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNBOOKS = REPO / "runbooks"
ALERTS = {"ShardDownloadErrorRate", "S3Throttling", "RayJobFailed", "TrainingLossNaN", "TrainingStalled",
          "CheckpointResume", "EvalRegression", "GPUNodeNotReady", "StorageFull"}
PROCEDURES = {"new-domain-dataset", "launch-training", "nightly-evaluation", "capacity-planning"}
ALERT_SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation", "Verification", "Escalation", "Last reviewed"]
PROCEDURE_SECTIONS = ["Purpose", "Prerequisites", "Steps", "Verification", "If it goes wrong", "Last reviewed"]
HELP_TIMEOUT_S = 120


def docs() -> dict[Path, str]:
    return {p: p.read_text() for p in sorted(RUNBOOKS.rglob("*.md"))}


def headings(text: str) -> list[str]:
    return re.findall(r"^## (.+?)\s*$", text, flags=re.MULTILINE)


def test_every_runbook_has_its_sections():
    found = {p.stem for p in (RUNBOOKS).glob("*.md") if p.name != "README.md"}
    assert found == ALERTS
    assert {p.stem for p in (RUNBOOKS / "procedures").glob("*.md")} == PROCEDURES
    for name in ALERTS:
        text = (RUNBOOKS / f"{name}.md").read_text()
        assert headings(text) == ALERT_SECTIONS, name
    for name in PROCEDURES:
        got = headings((RUNBOOKS / "procedures" / f"{name}.md").read_text())
        assert [h for h in got if h in PROCEDURE_SECTIONS] == PROCEDURE_SECTIONS, name  # in order; others may sit between
    for path, text in docs().items():
        if path.name != "README.md":
            reviewed = text.split("## Last reviewed", 1)[1]
            assert re.search(r"\b20\d\d-\d\d-\d\d\b", reviewed), f"{path}: Last reviewed needs a date"


def test_index_lists_every_runbook_and_links_resolve():
    index = (RUNBOOKS / "README.md").read_text()
    for path in docs():
        if path != RUNBOOKS / "README.md":
            assert f"({path.relative_to(RUNBOOKS).as_posix()})" in index, f"README.md does not link {path.name}"
    for path, text in docs().items():
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(REPO)}: broken link {target}"


def test_named_repository_files_exist():
    pattern = re.compile(r"(?<![\w/.$<-])((?:pipelines|training|evaluation|configs|benchmarks|infra|tests|runbooks)"
                         r"/[\w./-]*\.(?:py|yaml|md|tf|txt|json))\b")
    for path, text in docs().items():
        for name in set(pattern.findall(text)):
            assert (REPO / name).exists(), f"{path.relative_to(REPO)} names {name}, which does not exist"


def _config_sections() -> dict[str, type]:
    from evaluation.config import DashboardConfig, EvalConfig
    from pipelines.build_config import PipelineConfig
    from pipelines.storage import StorageConfig
    from training.config import TrainConfig

    return {"storage": StorageConfig, "pipeline": PipelineConfig, "training": TrainConfig,
            "evaluation": EvalConfig, "dashboard": DashboardConfig}


def _field_type(cls: type, name: str) -> type | None:
    """The dataclass a field holds (unwrapping Optional), or None when it holds something else."""
    tp = typing.get_type_hints(cls)[name]
    candidates = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def test_named_config_fields_exist():
    sections = _config_sections()
    pattern = re.compile(r"(?<![\w./-])(storage|pipeline|training|evaluation|dashboard)((?:\.[a-z_][a-z0-9_]*)+)")
    checked = 0
    for path, text in docs().items():
        for section, dotted in set(pattern.findall(text)):
            parts = dotted.strip(".").split(".")
            module = REPO / section / f"{parts[0]}.py"
            if module.exists() or (REPO / section / parts[0]).is_dir():
                continue  # a module (training.train, evaluation.run), not a field
            cls: type | None = sections[section]
            for i, part in enumerate(parts):
                if cls is None:
                    break  # below a list/dict field: free-form keys
                names = {f.name for f in dataclasses.fields(cls)}
                assert part in names, f"{path.relative_to(REPO)}: {section}.{'.'.join(parts[:i + 1])} is no config field"
                cls = _field_type(cls, part)
            checked += 1
    assert checked > 30  # the runbooks lean on config fields; an empty match would mean the pattern broke


def _commands(text: str) -> list[str]:
    """Every `python -m <module> ...` command line (backslash continuations joined), up to a backtick, a pipe,
    &&, ; or a redirection. A module name followed by ':' is an error message quoted in prose, not a command."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for m in re.finditer(r"python3? -m ([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)(?=[\s`]|$)([^\n`]*)", joined):
        rest = re.split(r"\s(?:\||&&|;|>>?|2>&1)(?:\s|$)", m.group(2) + " ")[0]
        out.append(f"{m.group(1)} {rest}".strip())
    return out


def _help_targets() -> dict[tuple[str, ...], set[str]]:
    """(module,) or (module, subcommand) -> the --flags the runbooks use with it."""
    targets: dict[tuple[str, ...], set[str]] = {}
    subcommands = {"pipelines.jobs"}  # argparse subparsers; its --help lists them (checked below)
    for text in docs().values():
        for command in _commands(text):
            words = [w.rstrip("),.") for w in command.split()]
            key = (words[0], words[1]) if words[0] in subcommands and len(words) > 1 else (words[0],)
            flags = {w.split("=", 1)[0] for w in words[1:] if w.startswith("--")}
            targets.setdefault(key, set()).update(flags)
    return targets


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=HELP_TIMEOUT_S, check=False)


def test_every_python_command_runs_with_help():
    targets = _help_targets()
    modules = {key[0] for key in targets}
    assert {"pipelines.jobs", "pipelines.plan", "pipelines.explain", "training.train", "training.export",
            "evaluation.run", "evaluation.dashboard"} <= modules
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(targets, pool.map(lambda key: _run([sys.executable, "-m", *key, "--help"]), targets)))
    problems = []
    for key, proc in results.items():
        shown = "python -m " + " ".join(key)
        if proc.returncode != 0 or "usage:" not in proc.stdout:
            problems.append(f"{shown} --help: exit {proc.returncode}: {(proc.stderr or proc.stdout)[-400:]}")
            continue
        missing = sorted(f for f in targets[key] if f not in proc.stdout)
        if missing:
            problems.append(f"{shown}: the runbooks use {missing}, which its --help does not list")
    # A subcommand the module does not have fails its own --help above (argparse: invalid choice, exit 2).
    assert not problems, "\n".join(problems)


def test_every_ray_command_exists():
    used: set[tuple[str, ...]] = set()
    for text in docs().values():
        code = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL) + re.findall(r"`([^`\n]+)`", text))
        for m in re.finditer(r"(?<![\w/.$<-])ray (job )?([a-z][a-z-]*)", code):
            used.add(("job", m.group(2)) if m.group(1) else (m.group(2),))
    assert ("job", "logs") in used and ("status",) in used
    ray = Path(sys.executable).parent / "ray"
    top, job = _run([str(ray), "--help"]), _run([str(ray), "job", "--help"])
    assert top.returncode == 0 and job.returncode == 0, top.stderr + job.stderr
    listed = {"": set(re.findall(r"^  (\S+)", top.stdout, flags=re.MULTILINE)),
              "job": set(re.findall(r"^  (\S+)", job.stdout, flags=re.MULTILINE))}
    for cmd in sorted(used):
        group, name = (cmd[0], cmd[1]) if len(cmd) == 2 else ("", cmd[0])
        assert name in listed[group], f"runbooks use `ray {' '.join(cmd)}`, which Ray's CLI does not have"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_diagnosis_gives_commands(name):
    diagnosis = (RUNBOOKS / f"{name}.md").read_text().split("## Diagnosis", 1)[1].split("## Mitigation", 1)[0]
    assert "```" in diagnosis, f"{name}: Diagnosis has no command block"
