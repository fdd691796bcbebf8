"""Generated KubeRay manifests (infra/kuberay/) and the AWS cluster-launcher YAML (infra/ray-cluster/aws.yaml):
they parse, carry the same entrypoint and runtime_env as `submit` builds, pin images at the project's Ray version,
turn token authentication on, bind the dashboard as documented, and the checked-in files equal freshly rendered
ones (so they never drift from configs/jobs/)."""

from __future__ import annotations

import re
import shutil

import pytest
import ray
import yaml
from conftest import REPO

from pipelines.jobs import kuberay
from pipelines.jobs.__main__ import main
from pipelines.jobs.spec import load_spec, pipeline_names, resolve

KUBERAY_DIR = REPO / "infra" / "kuberay"
AWS = REPO / "infra" / "ray-cluster" / "aws.yaml"
BASE_IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_checked_in_manifests_equal_fresh_render():
    files = kuberay.render_all()
    on_disk = {p.name for p in KUBERAY_DIR.glob("*.yaml")}
    assert on_disk == set(files), "stale or missing manifests: python -m pipelines.jobs render --out infra/kuberay"
    for name, text in files.items():
        assert (KUBERAY_DIR / name).read_text() == text, f"{name} drifted: rerender"


def test_render_check_flags_drift(tmp_path, capsys):
    out = tmp_path / "kuberay"
    shutil.copytree(KUBERAY_DIR, out)
    assert main(["render", "--out", str(out), "--check"]) == 0
    (out / "train.yaml").write_text((out / "train.yaml").read_text().replace("ray-worker", "ray-wrker"))
    assert main(["render", "--out", str(out), "--check"]) == 1
    assert "train.yaml: differs" in capsys.readouterr().out


@pytest.mark.parametrize("name", pipeline_names())
def test_rayjob_matches_the_submit_template(name):
    spec = load_spec(name)
    doc = yaml.safe_load((KUBERAY_DIR / f"{name}.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    job = doc["spec"]
    # What `submit` would send with the Kubernetes overrides: same command, same env, same excludes.
    k = spec.kuberay
    sub = resolve(spec, overrides=[f"storage.root={k.storage_root}", *k.overrides], deps_mode="image")
    assert job["entrypoint"] == sub.entrypoint
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert env["working_dir"] == k.code_dir and "pip" not in env  # the image carries code and pinned deps
    assert env["excludes"] == sub.runtime_env["excludes"]
    assert env["env_vars"] == {key: v for key, v in sub.runtime_env["env_vars"].items() if key != "WITFORGE_CODE_VERSION"}
    assert job["entrypointNumCpus"] == spec.resources.num_cpus and job["entrypointNumGpus"] == spec.resources.num_gpus
    assert job["metadata"]["witforge_pipeline"] == name
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0

    cluster = job["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    # Reachable inside the pod network only (the submitter and the operator need it), never exposed outside.
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    pods = [head["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {k.image}
    image, _, tag = k.image.rpartition(":")
    assert image and tag and tag != "latest" and f"ray{ray.__version__}" in tag
    assert all("AWS_SECRET_ACCESS_KEY" not in yaml.safe_dump(p) for p in pods)


def test_nightly_is_a_short_lived_cluster_per_scheduled_run():
    cron = yaml.safe_load((KUBERAY_DIR / "nightly-cron.yaml").read_text())
    once = yaml.safe_load((KUBERAY_DIR / "nightly.yaml").read_text())
    assert cron["kind"] == "RayCronJob" and cron["spec"]["schedule"] == load_spec("nightly").kuberay.schedule
    assert cron["spec"]["jobTemplate"] == once["spec"]
    template = cron["spec"]["jobTemplate"]
    assert template["shutdownAfterJobFinishes"] is True and 0 < template["ttlSecondsAfterFinished"] <= 3600
    assert template["activeDeadlineSeconds"] > 0
    assert "evaluation.checkpoint=all" in template["entrypoint"] and "evaluation.dashboard" in template["entrypoint"]


def test_dockerfile_builds_the_pinned_image():
    text = (KUBERAY_DIR / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(BASE_IMAGE)}$", text, re.MULTILINE)
    makefile_torch = re.search(r"torch==\S+ torchvision==\S+", (REPO / "Makefile").read_text()).group(0)
    assert makefile_torch in text and "requirements.txt -c" in text
    assert f"WORKDIR {load_spec('train').kuberay.code_dir}" in text


def test_aws_cluster_launcher_config():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(AWS.read_text())
    validate_config(fillout_defaults(config))  # Ray's own schema for `ray up`, offline
    assert config["docker"]["image"] == BASE_IMAGE
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "RAY_AUTH_MODE=token ray start --address" in workers
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in AWS.read_text()
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    makefile_torch = re.search(r"torch==\S+ torchvision==\S+", (REPO / "Makefile").read_text()).group(0)
    assert any(makefile_torch in c for c in config["setup_commands"])
    assert all(n["node_config"]["MetadataOptions"]["HttpTokens"] == "required"
               for n in config["available_node_types"].values())
