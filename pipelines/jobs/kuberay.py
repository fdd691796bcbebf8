"""KubeRay manifests generated from the same job templates as `submit`: one RayJob per pipeline (a short-lived
RayCluster per run, token authentication on), plus a RayCronJob for a template with a kuberay.schedule.

    python -m pipelines.jobs render --out infra/kuberay          # writes the files
    python -m pipelines.jobs render --out infra/kuberay --check  # exit 1 if the checked-in files drifted

The entrypoint is the one `submit` builds (plus kuberay.storage_root and kuberay.overrides); the runtime_env is
the template's with working_dir = the code the image carries (kuberay.code_dir), which the submitter pod (same
image) uploads, and no pip list: the image holds the pinned dependencies (infra/kuberay/Dockerfile).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from pipelines.config import config_hash
from pipelines.jobs.spec import JobSpec, WorkerGroup, build_entrypoint, load_spec, pipeline_names, project_config

HEADER = ("# Generated from configs/jobs/{name}.yaml by `python -m pipelines.jobs render --out infra/kuberay`.\n"
          "# Do not edit: change the template and rerender (tests/test_ops_manifests.py fails on drift).\n")


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (runtimeEnvYAML stays readable YAML inside YAML), no &anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def kuberay_overrides(spec: JobSpec) -> list[str]:
    k = spec.kuberay
    return [*spec.overrides, *([f"storage.root={k.storage_root}"] if k.storage_root else []), *k.overrides]


def entrypoint(spec: JobSpec) -> str:
    return build_entrypoint(spec.entrypoint, spec.config, kuberay_overrides(spec))


def runtime_env(spec: JobSpec) -> dict[str, Any]:
    return {"working_dir": spec.kuberay.code_dir, "excludes": list(spec.runtime_env.excludes),
            "env_vars": dict(spec.runtime_env.env_vars)}


def _container(name: str, image: str, cpu: str, memory: str, gpu: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpu:
        amounts["nvidia.com/gpu"] = gpu
    return {"name": name, "image": image, "resources": {"requests": dict(amounts), "limits": dict(amounts)}}


def _pod(spec: JobSpec, container: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [container]}
    if spec.kuberay.service_account:
        pod = {"serviceAccountName": spec.kuberay.service_account, **pod}
    return {"spec": pod}


def _worker_group(spec: JobSpec, group: WorkerGroup) -> dict[str, Any]:
    return {
        "groupName": group.name,
        "replicas": group.min_replicas,
        "minReplicas": group.min_replicas,
        "maxReplicas": group.max_replicas,
        "rayStartParams": {},
        "template": _pod(spec, _container("ray-worker", spec.kuberay.image, group.cpu, group.memory, group.gpu)),
    }


def cluster_spec(spec: JobSpec) -> dict[str, Any]:
    k = spec.kuberay
    return {
        "rayVersion": k.ray_version,
        # KubeRay >= 1.5.1 creates a Secret with a random token and sets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN
        # in every Ray container, the submitter's included.
        "authOptions": {"mode": "token"},
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            # The submitter pod and the operator reach the dashboard through the head Service, so it listens on
            # the pod's interfaces; the Service stays ClusterIP (no LoadBalancer, no Ingress) and every request
            # needs the token. From a laptop: kubectl port-forward svc/<cluster>-head-svc 8265.
            "serviceType": "ClusterIP",
            "rayStartParams": {"dashboard-host": "0.0.0.0"},
            "template": _pod(spec, _container("ray-head", k.image, k.head_cpu, k.head_memory)),
        },
        "workerGroupSpecs": [_worker_group(spec, g) for g in k.workers],
    }


def rayjob_spec(spec: JobSpec, config_digest: str) -> dict[str, Any]:
    k, res = spec.kuberay, spec.resources
    out: dict[str, Any] = {
        "entrypoint": entrypoint(spec),
        "runtimeEnvYAML": yaml.safe_dump(runtime_env(spec), sort_keys=True, width=1000),
        "metadata": {"witforge_pipeline": spec.name, "config_hash": config_digest, "image": k.image},
        "entrypointNumCpus": res.num_cpus,
        "entrypointNumGpus": res.num_gpus,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": k.shutdown_after_job_finishes,
        "ttlSecondsAfterFinished": k.ttl_seconds_after_finished,
        "backoffLimit": k.backoff_limit,
        "rayClusterSpec": cluster_spec(spec),
    }
    if res.custom:
        out["entrypointResources"] = json.dumps(res.custom, sort_keys=True)
    if k.active_deadline_seconds:
        out["activeDeadlineSeconds"] = k.active_deadline_seconds
    return out


def manifests(spec: JobSpec) -> dict[str, dict[str, Any]]:
    """{file name: manifest} for one template: <name>.yaml (RayJob) and, with a schedule, <name>-cron.yaml."""
    if not spec.kuberay.image or spec.kuberay.image.endswith(":latest") or ":" not in spec.kuberay.image:
        raise ValueError(f"{spec.name}: kuberay.image must be a pinned tag, got {spec.kuberay.image!r}")
    raw = project_config(spec.config, kuberay_overrides(spec))
    body = rayjob_spec(spec, "")
    digest = config_hash({"config": raw, "rayjob": body})
    body["metadata"]["config_hash"] = digest
    labels = {"app.kubernetes.io/name": "witforge", "app.kubernetes.io/component": spec.name}
    where = {"namespace": spec.kuberay.namespace} if spec.kuberay.namespace else {}
    out = {f"{spec.name}.yaml": {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        # Same template and config, same name: applying it twice never starts a second run.
        "metadata": {"name": f"witforge-{spec.name}-{digest[:10]}", **where, "labels": labels},
        "spec": body,
    }}
    if spec.kuberay.schedule:
        out[f"{spec.name}-cron.yaml"] = {
            "apiVersion": "ray.io/v1", "kind": "RayCronJob",
            "metadata": {"name": f"witforge-{spec.name}", **where, "labels": labels},
            "spec": {"schedule": spec.kuberay.schedule, "jobTemplate": body},
        }
    return out


def render_all() -> dict[str, str]:
    """{file name: YAML text} for every template in configs/jobs/."""
    files: dict[str, str] = {}
    for name in pipeline_names():
        for filename, doc in manifests(load_spec(name)).items():
            text = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=False)
            files[filename] = HEADER.format(name=name) + text
    return files
