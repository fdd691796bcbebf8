"""Job templates: configs/jobs/<pipeline>.yaml over configs/jobs/defaults.yaml, validated, then resolved into one
Ray job submission (entrypoint, runtime_env, entrypoint resources, a deterministic submission id, metadata).

    spec = load_spec("train")                                  # or a path to a YAML file
    sub = resolve(spec, config=None, overrides=["storage.root=s3://b/p"])
    client.submit_job(**sub.client_kwargs())
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipelines.config import ConfigError, build_dataclass, config_hash, read_raw, read_yaml_mapping
from pipelines.jobs.deps import pinned_packages
from pipelines.jobs.identity import code_identity

REPO = Path(__file__).resolve().parents[2]
JOBS_DIR = REPO / "configs" / "jobs"
DEFAULTS_FILE = "defaults.yaml"
ID_PREFIX = "witforge"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,24}$")
_PLACEHOLDERS = {"config", "overrides"}


class JobSpecError(ValueError):
    """A job template or a submit option is wrong; the message names the file and field."""


@dataclass
class Resources:
    """What Ray reserves for the entrypoint (driver) process; the tasks and Train workers it starts reserve their
    own (e.g. training.num_workers with training.use_gpu)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float = 0.0
    """0 = no memory reservation."""
    custom: dict[str, float] = field(default_factory=dict)
    """Custom resources, e.g. {head: 1} to pin the driver to a node that advertises `head`."""


@dataclass
class RuntimeEnvSpec:
    working_dir: str = "."
    """Relative to the repository root: uploaded with every submission (Ray also honours .gitignore)."""
    excludes: list[str] = field(default_factory=list)
    """gitignore-style patterns never uploaded (virtualenvs, data, .git, shards)."""
    env_vars: dict[str, str] = field(default_factory=dict)
    """Set in the driver and every worker. Never put secrets here: the dashboard shows them."""


@dataclass
class DepsSpec:
    mode: Literal["requirements", "image"] = "requirements"
    """requirements: runtime_env.pip = requirements.txt's pins (exact versions, unpinned ones taken from
    constraints.txt) installed in a per-job virtualenv on top of the cluster's Python; image: the cluster's
    Python already carries them (a KubeRay image, or the cluster-launcher's setup_commands)."""
    requirements: str = "requirements.txt"
    constraints: str = "constraints.txt"
    exclude: list[str] = field(default_factory=list)
    """Packages never installed per job: ray (the cluster's own version must serve the job) and test-only ones."""


@dataclass
class WorkerGroup:
    name: str
    cpu: str = "8"
    """Kubernetes quantities: requests = limits, so the pod is Guaranteed."""
    memory: str = "32Gi"
    gpu: int = 0
    min_replicas: int = 0
    max_replicas: int = 4


@dataclass
class KubeRaySpec:
    ray_version: str = "2.60.0"
    """RayCluster spec.rayVersion; authOptions (token auth) needs >= 2.52 and KubeRay >= 1.5.1."""
    image: str = ""
    """Pinned image tag carrying the code (at code_dir) and every pinned dependency: infra/kuberay/Dockerfile."""
    code_dir: str = "/home/ray/witforge"
    """Where the image holds the repository; the submitter pod uploads it as the job's working_dir."""
    namespace: str = ""
    """Kubernetes namespace of the RayJob (infra/terraform creates it with the service accounts)."""
    service_account: str = ""
    """Pods' service account, bound by IRSA to the IAM role of this workload (infra/terraform/iam.tf): S3 access
    without keys in the manifest."""
    storage_root: str = ""
    """storage.root on Kubernetes (pods' disks are ephemeral): the bucket infra/terraform creates."""
    overrides: list[str] = field(default_factory=list)
    """Further dotted overrides on Kubernetes only, e.g. training.use_gpu=true."""
    head_cpu: str = "4"
    head_memory: str = "16Gi"
    workers: list[WorkerGroup] = field(default_factory=list)
    shutdown_after_job_finishes: bool = True
    """A short-lived cluster per run: deleted ttl_seconds_after_finished after the job ends."""
    ttl_seconds_after_finished: int = 600
    active_deadline_seconds: int = 0
    """0 = no deadline; otherwise KubeRay stops the RayJob after that many seconds."""
    backoff_limit: int = 0
    """Retries of the whole RayJob, each on a new cluster (committed work is skipped on rerun)."""
    schedule: str = ""
    """Cron schedule: also render a RayCronJob that creates this RayJob on that schedule (KubeRay >= 1.6)."""


@dataclass
class JobSpec:
    name: str
    """The pipeline: part of the submission id and of the job's metadata."""
    entrypoint: str
    """Shell command with {config} and {overrides} placeholders, e.g. python -m training.train --config {config}
    {overrides}."""
    description: str = ""
    config: str = "configs/demo.yaml"
    """Project config the entrypoint reads, relative to the repository root (so the working_dir carries it)."""
    overrides: list[str] = field(default_factory=list)
    """Dotted overrides every submission of this job gets, before the command line's."""
    daily: bool = False
    """The UTC date joins the submission id: one run per day of the same code and config (nightly)."""
    resources: Resources = field(default_factory=Resources)
    runtime_env: RuntimeEnvSpec = field(default_factory=RuntimeEnvSpec)
    deps: DepsSpec = field(default_factory=DepsSpec)
    kuberay: KubeRaySpec = field(default_factory=KubeRaySpec)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"name: {self.name!r} must be lowercase letters, digits and dashes (at most 25)")
        fields = {f for _, f, _, _ in string.Formatter().parse(self.entrypoint) if f is not None}
        if fields - _PLACEHOLDERS or "config" not in fields:
            raise ValueError(f"entrypoint: placeholders must be {{config}} (required) and {{overrides}}, got {sorted(fields)}")


@dataclass
class Submission:
    """One resolved submission: what JobSubmissionClient.submit_job receives."""

    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    resources: Resources
    storage_root: str

    def client_kwargs(self) -> dict[str, Any]:
        memory = int(self.resources.memory_gb * 2**30)
        return {
            "entrypoint": self.entrypoint,
            "submission_id": self.submission_id,
            "runtime_env": self.runtime_env,
            "metadata": self.metadata,
            "entrypoint_num_cpus": self.resources.num_cpus,
            "entrypoint_num_gpus": self.resources.num_gpus,
            "entrypoint_memory": memory or None,
            "entrypoint_resources": dict(self.resources.custom) or None,
        }


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge mappings; lists and scalars in `over` replace those in `base`."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        return read_yaml_mapping(path, "job template")
    except ConfigError as exc:
        raise JobSpecError(str(exc)) from exc


def template_path(job: str) -> Path:
    """A pipeline name (configs/jobs/<name>.yaml) or a path to a job template."""
    path = Path(job)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise JobSpecError(f"job template {job} does not exist")
        return path
    path = JOBS_DIR / f"{job}.yaml"
    if job == Path(DEFAULTS_FILE).stem or not path.is_file():
        raise JobSpecError(f"unknown pipeline {job!r} (known: {', '.join(pipeline_names())}; or a path to a .yaml)")
    return path


def pipeline_names() -> list[str]:
    return sorted(p.stem for p in JOBS_DIR.glob("*.yaml") if p.name != DEFAULTS_FILE)


def load_spec(job: str) -> JobSpec:
    """Validate a job template over configs/jobs/defaults.yaml; errors name the file and the dotted field."""
    path = template_path(job)
    raw = _merge(_read_yaml(JOBS_DIR / DEFAULTS_FILE), _read_yaml(path))
    try:
        return build_dataclass(JobSpec, raw)
    except ConfigError as exc:
        raise JobSpecError(f"{path}: {exc}") from exc


def _repo_relative(path: str, what: str) -> str:
    """A path inside the repository, relative to its root (what the job's working_dir holds)."""
    resolved = (REPO / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    try:
        rel = resolved.relative_to(REPO)
    except ValueError:
        raise JobSpecError(f"{what} {path} is outside the repository {REPO}, so the job's working_dir would "
                           "not carry it") from None
    return rel.as_posix()


def build_entrypoint(template: str, config: str, overrides: list[str]) -> str:
    """Fill {config} and {overrides}, shell-quoted; no overrides leaves no stray blank."""
    joined = " ".join(shlex.quote(o) for o in overrides)
    filled = re.sub(r"[ \t]*\{overrides\}", (" " + joined) if joined else "", template)
    return filled.replace("{config}", shlex.quote(config)).strip()


def project_config(config: str, overrides: list[str]) -> dict:
    """The project config the job will read, after overrides (validated by the entry point on the cluster)."""
    try:
        return read_raw(REPO / config, overrides)
    except ConfigError as exc:
        raise JobSpecError(str(exc)) from exc
    except yaml.YAMLError as exc:  # an override value that is not YAML (e.g. `a.b=[`)
        raise JobSpecError(f"an override is not valid YAML: {exc}") from exc


def pip_packages(spec: JobSpec) -> list[str]:
    deps = spec.deps
    try:
        return pinned_packages(REPO / deps.requirements, REPO / deps.constraints, deps.exclude)
    except ValueError as exc:
        raise JobSpecError(f"deps: {exc}") from exc


def resolve(spec: JobSpec, config: str | None = None, overrides: list[str] | None = None,
            env: dict[str, str] | None = None, deps_mode: str | None = None, submission_id: str | None = None,
            today: dt.date | None = None) -> Submission:
    """The submission for this template, project config and overrides; same inputs, same submission id."""
    config_rel = _repo_relative(config or spec.config, "--config")
    if not (REPO / config_rel).is_file():
        raise JobSpecError(f"--config {config_rel} does not exist")
    all_overrides = [*spec.overrides, *(overrides or [])]
    raw = project_config(config_rel, all_overrides)
    entrypoint = build_entrypoint(spec.entrypoint, config_rel, all_overrides)

    mode = deps_mode or spec.deps.mode
    runtime_env: dict[str, Any] = {
        "working_dir": _repo_relative(spec.runtime_env.working_dir, "runtime_env.working_dir"),
        "excludes": list(spec.runtime_env.excludes),
        "env_vars": {**spec.runtime_env.env_vars, **(env or {})},
    }
    if mode == "requirements":
        runtime_env["pip"] = {"packages": pip_packages(spec), "pip_check": False}
    elif mode != "image":
        raise JobSpecError(f"--deps {mode!r}: expected requirements or image")
    res = spec.resources
    digest = config_hash({"config": raw, "entrypoint": entrypoint, "runtime_env": runtime_env,
                          "resources": dataclasses.asdict(res)})

    try:
        version, slug = code_identity()
    except ValueError as exc:
        raise JobSpecError(str(exc)) from exc
    # Workers get the code without .git: the version travels in the environment (pipelines/version.py reads it).
    runtime_env["env_vars"]["WITFORGE_CODE_VERSION"] = version
    runtime_env["working_dir"] = str(REPO / runtime_env["working_dir"])

    sid = submission_id or f"{ID_PREFIX}-{spec.name}-{digest[:10]}-{slug}"
    if spec.daily and not submission_id:
        sid += f"-{(today or dt.datetime.now(dt.UTC).date()):%Y%m%d}"
    metadata = {"witforge_pipeline": spec.name, "config": config_rel, "overrides": " ".join(all_overrides),
                "config_hash": digest, "code_version": version}
    storage_root = str((raw.get("storage") or {}).get("root", "data"))
    return Submission(sid, entrypoint, runtime_env, metadata, res, storage_root)
