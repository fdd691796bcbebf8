"""Offline checks of infra/terraform/: formatting, checkov, and policy tests over the parsed HCL.

    .venv/bin/python -m pytest -q tests/test_infra_terraform.py

Nothing here reaches a registry or AWS: `terraform init/validate/plan` need the provider registry and are the
online checks (infra/terraform/README.md). What runs here:
- `terraform fmt -check` when a terraform binary is on PATH (skipped with a message otherwise);
- checkov from its own venv (.venv-checkov, made by `make test`; its pins clash with .venv's), zero failed checks,
  every skip justified inline;
- python-hcl2 policy tests: the .tf files are parsed, the IAM policy documents evaluated with the variables'
  defaults, and each role's grants compared with the project's storage layout, as computed by the project's
  own path functions (pipelines.layout, training.checkpoint, evaluation.results, evaluation.dashboard).
Each checker is also run on a planted mutation of the real files, to show it catches what it claims to.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from evaluation.config import DashboardConfig
from evaluation.dashboard import build_dashboard
from evaluation.results import result_uri
from pipelines import layout
from pipelines.schema import manifest_uri
from training.checkpoint import run_uri, step_dirname

REPO = Path(__file__).resolve().parent.parent
TF_DIR = REPO / "infra" / "terraform"
CHECKOV = Path(os.environ.get("WITFORGE_CHECKOV", REPO / ".venv-checkov" / "bin" / "checkov"))
HCL_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)

ROLES = ("crawler", "training", "evaluation")
DATA_BUCKET = "data"  # resource name of the bucket that holds storage.root (aws_s3_bucket.data)
WRITE_ACTIONS = {"s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject"}
OBJECT_ACTIONS = WRITE_ACTIONS | {"s3:GetObject"}
KMS_ACTIONS = {"kms:Decrypt", "kms:GenerateDataKey"}
ALLOWED_ACTIONS = OBJECT_ACTIONS | KMS_ACTIONS | {"s3:ListBucket"}
EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


# ---- loading and evaluating the HCL --------------------------------------------------------------------------

@lru_cache(maxsize=64)
def _parse(text: str) -> dict:
    return hcl2.loads(text, serialization_options=HCL_OPTIONS)


def tf_sources(directory: Path = TF_DIR) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.glob("*.tf"))}


@dataclass
class Config:
    """All .tf files of one directory merged: blocks by kind, then by type and name."""

    resources: dict[str, dict[str, dict]] = field(default_factory=dict)
    data: dict[str, dict[str, dict]] = field(default_factory=dict)
    modules: dict[str, dict] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    terraform: list[dict] = field(default_factory=list)


def load(sources: dict[str, str]) -> Config:
    cfg = Config()
    for name, text in sources.items():
        try:
            parsed = _parse(text)
        except Exception as e:  # lark's errors carry the position; say which file
            raise AssertionError(f"{name}: python-hcl2 cannot parse it: {e}") from e
        for kind, target in (("resource", cfg.resources), ("data", cfg.data)):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    target.setdefault(type_, {}).update(named)
        for kind, target in (("module", cfg.modules), ("variable", cfg.variables), ("output", cfg.outputs)):
            for block in parsed.get(kind, []):
                target.update(block)
        for block in parsed.get("locals", []):
            cfg.locals.update(block)
        cfg.terraform.extend(parsed.get("terraform", []))
    return cfg


class Unsupported(ValueError):
    """An expression the evaluator does not model: policies must stay simple enough to be checked here."""


_WHOLE_REF = re.compile(r"\$\{([^{}]*)\}")


class Evaluator:
    """Evaluates the small subset of HCL the policy documents use, with each variable at its default.

    References to AWS resources become symbols (`aws_s3_bucket.data.arn` -> `arn:aws:s3:::data`, anything else
    `<type.name.attr>`), module outputs `<module.x.y>`. Function calls, conditionals and for-expressions raise
    Unsupported, so a policy written with them fails the tests until this evaluator (and the review) covers it.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def ref(self, expr: str, bound: dict[str, Any]) -> Any:
        expr = expr.strip()
        if expr in bound:
            return bound[expr]
        if m := re.fullmatch(r"toset\((.+)\)", expr):
            return self.ref(m[1], bound)
        if m := re.fullmatch(r"var\.(\w+)", expr):
            if m[1] not in self.cfg.variables or "default" not in self.cfg.variables[m[1]]:
                raise Unsupported(f"var.{m[1]}: no such variable with a default")
            return self.value(self.cfg.variables[m[1]]["default"], bound)
        if m := re.fullmatch(r"local\.(\w+)", expr):
            if m[1] not in self.cfg.locals:
                raise Unsupported(f"local.{m[1]}: no such local")
            return self.value(self.cfg.locals[m[1]], bound)
        if m := re.fullmatch(r"aws_s3_bucket\.(\w+)\.arn", expr):
            return f"arn:aws:s3:::{m[1]}"
        if re.fullmatch(r"(aws_\w+|data\.\w+\.\w+|module\.\w+)\.[\w.\[\]\"]+", expr):
            return f"<{expr}>"
        raise Unsupported(f"cannot evaluate ${{{expr}}}")

    def value(self, v: Any, bound: dict[str, Any] | None = None) -> Any:
        bound = bound or {}
        if isinstance(v, list):
            return [self.value(x, bound) for x in v]
        if isinstance(v, dict):
            return {k: self.value(x, bound) for k, x in v.items()}
        if not isinstance(v, str):
            return v
        if m := _WHOLE_REF.fullmatch(v):
            return self.ref(m[1], bound)

        def scalar(m: re.Match) -> str:
            out = self.ref(m[1], bound)
            if not isinstance(out, (str, int, float)):
                raise Unsupported(f"{v!r}: ${{{m[1]}}} is not a scalar")
            return str(out)

        return _WHOLE_REF.sub(scalar, v)


@dataclass
class Statement:
    effect: str
    actions: list[str]
    resources: list[str]
    conditions: list[tuple[str, str, list[str]]]  # (test, variable, values)
    broad: list[str]  # NotAction / NotResource / NotPrincipal present: never acceptable in a role policy
    principals: list[tuple[str, list[str]]]


def statements(cfg: Config, doc: str, bound: dict[str, Any] | None = None) -> list[Statement]:
    """The statements of data.aws_iam_policy_document.<doc>, source documents and dynamic blocks expanded."""
    ev = Evaluator(cfg)
    body = cfg.data["aws_iam_policy_document"][doc]
    bound = dict(bound or {})
    out: list[Statement] = []
    for src in body.get("source_policy_documents", []):
        m = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", src)
        if not m:
            raise Unsupported(f"{doc}: source_policy_documents entry {src!r}")
        out += statements(cfg, m[1], bound)
    if "override_policy_documents" in body:
        raise Unsupported(f"{doc}: override_policy_documents")

    def make(st: dict, scope: dict[str, Any]) -> Statement:
        return Statement(
            effect=st.get("effect", "Allow"),
            actions=ev.value(st.get("actions", []), scope),
            resources=ev.value(st.get("resources", []), scope),
            conditions=[(c["test"], ev.value(c["variable"], scope), ev.value(c["values"], scope))
                        for c in st.get("condition", [])],
            broad=[k for k in ("not_actions", "not_resources", "not_principals") if k in st],
            principals=[(p["type"], ev.value(p["identifiers"], scope)) for p in st.get("principals", [])],
        )

    for st in body.get("statement", []):
        out.append(make(st, bound))
    for dyn in body.get("dynamic", []):
        for label, d in dyn.items():
            if label != "statement":
                raise Unsupported(f"{doc}: dynamic {label!r}")
            items = ev.value(d["for_each"], bound)
            pairs = items.items() if isinstance(items, dict) else [(x, x) for x in items]
            for key, value in pairs:
                for content in d["content"]:
                    out.append(make(content, {**bound, "statement.key": key, "statement.value": value}))
    return out


def role_policies(cfg: Config) -> dict[str, list[Statement]]:
    """Every statement granted to each workload role, through whatever policy resource attaches it."""
    attachments = {"aws_iam_role_policy_attachment", "aws_iam_policy_attachment", "aws_iam_policy",
                   "aws_iam_role_policies_exclusive", "aws_iam_role_policy_attachments_exclusive"}
    present = attachments & cfg.resources.keys()
    # Managed or standalone policies cannot be evaluated here: grants must be inline role policies.
    assert not present, f"{sorted(present)}: attach workload permissions as aws_iam_role_policy so they are checked"
    grants: dict[str, list[Statement]] = {}
    for name, body in cfg.resources.get("aws_iam_role_policy", {}).items():
        role = re.fullmatch(r'\$\{aws_iam_role\.workload\["(\w+)"\]\.(id|name)\}', body["role"])
        doc = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", body["policy"])
        if not role or not doc:
            raise Unsupported(f"aws_iam_role_policy.{name}: role/policy must name a workload role and a policy document")
        grants.setdefault(role[1], []).extend(statements(cfg, doc[1]))
    return grants


# ---- what each role may do, and the checkers -----------------------------------------------------------------

def expected_prefixes(cfg: Config) -> dict[str, dict[str, list[str]]]:
    """The access table of iam.tf's header, in key prefixes (trailing /) under the storage root."""
    ev = Evaluator(cfg)
    root = ev.ref("var.storage_prefix", {})
    datasets = [f"{root}/{d}/" for d in ev.ref("var.datasets", {})]
    return {
        "crawler": {"write": datasets + [f"{root}/scratch/crawler/"], "read": [f"{root}/checkpoints/"],
                    "external": ev.ref("var.crawler_source_object_arns", {})},
        "training": {"write": [f"{root}/checkpoints/", f"{root}/scratch/training/"], "read": datasets,
                     "external": []},
        "evaluation": {"write": [f"{root}/eval/", f"{root}/dashboard/", f"{root}/scratch/evaluation/"],
                       "read": [f"{root}/checkpoints/", f"{root}/evalsets/"], "external": []},
    }


def _under(pattern: str, prefixes: list[str]) -> bool:
    """A key pattern ("witforge/synthweb/*", "witforge/synthweb") lies within one of the prefixes."""
    return any(pattern == p.rstrip("/") or pattern.startswith(p) for p in prefixes)


def iam_violations(cfg: Config) -> list[str]:
    ev = Evaluator(cfg)
    bucket = f"arn:aws:s3:::{DATA_BUCKET}"
    key_arn = "<aws_kms_key.data.arn>"
    via_s3 = f"s3.{ev.ref('var.region', {})}.amazonaws.com"
    grants = role_policies(cfg)
    out = [f"{r}: no policy attached" for r in ROLES if r not in grants]
    for role, stmts in grants.items():
        allowed = expected_prefixes(cfg).get(role)
        if allowed is None:
            out.append(f"{role}: a role this test does not know; add it to expected_prefixes")
            continue
        for st in stmts:
            where = f"{role}: {st.actions} on {st.resources}"
            if st.broad:
                out.append(f"{where}: {st.broad} grant everything but a list")
            if st.effect != "Allow":
                continue  # a Deny only narrows
            for action in st.actions:
                if "*" in action or "?" in action:
                    out.append(f"{where}: wildcard action {action!r}")
                elif action not in ALLOWED_ACTIONS:
                    out.append(f"{where}: {action!r} is not an action any workload needs")
            if "*" in st.resources:
                out.append(f"{where}: resource '*'")
            acts = set(st.actions)
            if acts & KMS_ACTIONS:
                if acts - KMS_ACTIONS or st.resources != [key_arn]:
                    out.append(f"{where}: KMS actions must stand alone, on the data key only")
                if ("StringEquals", "kms:ViaService", [via_s3]) not in st.conditions:
                    out.append(f"{where}: KMS use not restricted to S3 (kms:ViaService {via_s3})")
            if "s3:ListBucket" in acts:
                prefixes = [c for c in st.conditions if c[1] == "s3:prefix" and c[0] in ("StringLike", "StringEquals")]
                if acts != {"s3:ListBucket"} or st.resources != [bucket]:
                    out.append(f"{where}: s3:ListBucket must stand alone, on the data bucket")
                if not prefixes:
                    out.append(f"{where}: s3:ListBucket without an s3:prefix condition lists the whole bucket")
                for _, _, values in prefixes:
                    for v in values:
                        if not _under(v, allowed["write"] + allowed["read"]):
                            out.append(f"{where}: lists {v!r}, outside its prefixes")
            for action in acts & OBJECT_ACTIONS:
                scope = allowed["write"] if action in WRITE_ACTIONS else allowed["write"] + allowed["read"]
                for res in st.resources:
                    if action == "s3:GetObject" and res in allowed["external"]:
                        continue
                    key = res.removeprefix(bucket + "/") if res.startswith(bucket + "/") else None
                    if key is None or not _under(key, scope):
                        out.append(f"{where}: {action} on {res!r} is outside {role}'s "
                                   f"{'write' if action in WRITE_ACTIONS else 'read'} prefixes {scope}")
    return out


def can(grants: list[Statement], action: str, arn: str) -> bool:
    """Whether an Allow grants `action` on `arn` (IAM's * matches across '/'; fnmatch's does too)."""
    return any(st.effect == "Allow" and action in st.actions and any(fnmatch.fnmatchcase(arn, r) for r in st.resources)
               for st in grants)


def can_list(grants: list[Statement], prefix: str) -> bool:
    return any(st.effect == "Allow" and "s3:ListBucket" in st.actions and
               any(c[1] == "s3:prefix" and any(fnmatch.fnmatchcase(prefix, v) for v in c[2]) for c in st.conditions)
               for st in grants)


def trust_violations(cfg: Config) -> list[str]:
    """Each workload role is assumable through the cluster's OIDC provider by exactly its one service account."""
    ev = Evaluator(cfg)
    out = []
    accounts = ev.ref("local.service_accounts", {})
    if set(accounts) != set(ROLES):
        out.append(f"local.service_accounts: {sorted(accounts)}, expected {sorted(ROLES)}")
    namespace = ev.ref("var.namespace", {})
    role = cfg.resources["aws_iam_role"]["workload"]
    if role.get("for_each") != "${local.service_accounts}":
        out.append("aws_iam_role.workload: for_each must be local.service_accounts")
    if role.get("assume_role_policy") != "${data.aws_iam_policy_document.irsa_trust[each.key].json}":
        out.append("aws_iam_role.workload: assume_role_policy must be irsa_trust[each.key]")
    for key, sa in accounts.items():
        stmts = statements(cfg, "irsa_trust", {"each.key": key, "each.value": sa})
        for st in stmts:
            where = f"trust of {key}"
            if st.effect != "Allow":
                continue
            if st.actions != ["sts:AssumeRoleWithWebIdentity"]:
                out.append(f"{where}: actions {st.actions}")
            if st.principals != [("Federated", ["<module.eks.oidc_provider_arn>"])]:
                out.append(f"{where}: principals {st.principals}")
            sub = [c for c in st.conditions if c[1] == "<module.eks.oidc_provider>:sub"]
            if sub != [("StringEquals", "<module.eks.oidc_provider>:sub", [f"system:serviceaccount:{namespace}:{sa}"])]:
                out.append(f"{where}: subject condition {sub}, expected StringEquals on {namespace}/{sa} alone")
            if ("StringEquals", "<module.eks.oidc_provider>:aud", ["sts.amazonaws.com"]) not in st.conditions:
                out.append(f"{where}: no audience condition")
    sa_res = cfg.resources["kubernetes_service_account_v1"]["workload"]
    meta = sa_res["metadata"][0]
    if sa_res.get("for_each") != "${local.service_accounts}" or meta["name"] != "${each.value}":
        out.append("kubernetes_service_account_v1.workload: one per local.service_accounts entry, named by it")
    if meta.get("annotations", {}).get("eks.amazonaws.com/role-arn") != "${aws_iam_role.workload[each.key].arn}":
        out.append("kubernetes_service_account_v1.workload: role-arn annotation must name its own role")
    return out


def _by_bucket(cfg: Config, type_: str) -> dict[str, dict]:
    out = {}
    for name, body in cfg.resources.get(type_, {}).items():
        m = re.fullmatch(r"\$\{aws_s3_bucket\.(\w+)\.(id|bucket)\}", body.get("bucket", ""))
        if not m:
            raise Unsupported(f"{type_}.{name}: bucket must reference an aws_s3_bucket resource")
        out[m[1]] = body
    return out


def bucket_violations(cfg: Config) -> list[str]:
    ev = Evaluator(cfg)
    buckets = cfg.resources.get("aws_s3_bucket", {})
    sse, pab = _by_bucket(cfg, "aws_s3_bucket_server_side_encryption_configuration"), \
        _by_bucket(cfg, "aws_s3_bucket_public_access_block")
    versioning, ownership = _by_bucket(cfg, "aws_s3_bucket_versioning"), _by_bucket(cfg, "aws_s3_bucket_ownership_controls")
    logging, lifecycle = _by_bucket(cfg, "aws_s3_bucket_logging"), _by_bucket(cfg, "aws_s3_bucket_lifecycle_configuration")
    policies = _by_bucket(cfg, "aws_s3_bucket_policy")
    log_targets = {m[1] for body in logging.values()
                   if (m := re.fullmatch(r"\$\{aws_s3_bucket\.(\w+)\.(id|bucket)\}", body["target_bucket"]))}
    out = [] if DATA_BUCKET in buckets else [f"aws_s3_bucket.{DATA_BUCKET}: missing"]
    for b in buckets:
        rule = (sse.get(b, {}).get("rule") or [{}])[0]
        default = (rule.get("apply_server_side_encryption_by_default") or [{}])[0]
        if b in log_targets:
            # S3 server access logging delivers only to buckets whose default encryption is SSE-S3.
            if default.get("sse_algorithm") != "AES256":
                out.append(f"{b}: access-log target must use SSE-S3 (AES256), got {default.get('sse_algorithm')}")
        else:
            key = re.fullmatch(r"\$\{aws_kms_key\.(\w+)\.arn\}", str(default.get("kms_master_key_id")))
            if default.get("sse_algorithm") != "aws:kms" or not key:
                out.append(f"{b}: default encryption must be SSE-KMS with a key of this stack, got {default}")
            elif cfg.resources["aws_kms_key"][key[1]].get("enable_key_rotation") is not True:
                out.append(f"{b}: KMS key {key[1]} has no rotation")
            if b not in logging:
                out.append(f"{b}: no server access logging")
        flags = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
        if b not in pab or any(pab[b].get(f) is not True for f in flags):
            out.append(f"{b}: public access block must set all of {flags}")
        if ((versioning.get(b, {}).get("versioning_configuration") or [{}])[0]).get("status") != "Enabled":
            out.append(f"{b}: versioning not enabled")
        if ((ownership.get(b, {}).get("rule") or [{}])[0]).get("object_ownership") != "BucketOwnerEnforced":
            out.append(f"{b}: ACLs not disabled (object_ownership BucketOwnerEnforced)")
        rules = [r for r in lifecycle.get(b, {}).get("rule", []) if r.get("status") == "Enabled"]
        if not any(r.get("abort_incomplete_multipart_upload") and r.get("filter") in (None, [{}]) for r in rules):
            out.append(f"{b}: no whole-bucket rule aborting incomplete multipart uploads")
        policy = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", policies.get(b, {}).get("policy", ""))
        if not policy or not any(st.effect == "Deny" and ("Bool", "aws:SecureTransport", ["false"]) in st.conditions
                                 for st in statements(cfg, policy[1])):
            out.append(f"{b}: bucket policy does not deny requests without TLS")
    scratch = f"{ev.ref('var.storage_prefix', {})}/scratch/"
    data_rules = [r for r in lifecycle.get(DATA_BUCKET, {}).get("rule", []) if r.get("status") == "Enabled"]
    if not any(ev.value(r.get("filter", [{}])[0].get("prefix", ""), {}) == scratch and r.get("expiration")
               for r in data_rules):
        out.append(f"{DATA_BUCKET}: no lifecycle rule expiring {scratch}")
    return out


def pin_violations(cfg: Config) -> list[str]:
    out = []
    for name, body in cfg.modules.items():
        if not re.fullmatch(r"terraform-aws-modules/[\w-]+/aws(//[\w/-]+)?", body.get("source", "")):
            out.append(f"module.{name}: source {body.get('source')!r} is not a terraform-aws-modules registry module")
        if not EXACT_VERSION.fullmatch(str(body.get("version", ""))):
            out.append(f"module.{name}: version {body.get('version')!r} is not an exact release")
    providers = [p for t in cfg.terraform for block in t.get("required_providers", []) for p in block.items()]
    if not providers:
        out.append("terraform.required_providers: missing")
    for name, spec in providers:
        if not EXACT_VERSION.fullmatch(str(spec.get("version", ""))):
            out.append(f"provider {name}: version {spec.get('version')!r} is not an exact release")
    for name, body in cfg.resources.get("helm_release", {}).items():
        if not EXACT_VERSION.fullmatch(str(body.get("version", ""))):
            out.append(f"helm_release.{name}: chart version {body.get('version')!r} is not an exact release")
        if not str(body.get("repository", "")).startswith("https://"):
            out.append(f"helm_release.{name}: repository must be an https URL")
    return out


# ---- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cfg() -> Config:
    return load(tf_sources())


def mutated(file: str, old: str, new: str) -> Config:
    sources = tf_sources()
    assert old in sources[file], f"{file}: the planted mutation's anchor {old!r} is gone; update the test"
    sources[file] = sources[file].replace(old, new, 1)
    return load(sources)


# ---- formatting and checkov ----------------------------------------------------------------------------------

def _terraform() -> str:
    exe = shutil.which("terraform")
    if exe is None:
        pytest.skip("terraform is not installed: `terraform fmt -check` skipped (install Terraform >= 1.10 to run it)")
    return exe


def test_terraform_fmt_check_passes_and_catches_misformatting(tmp_path):
    exe = _terraform()
    run = subprocess.run([exe, "fmt", "-check", "-diff", "-recursive", str(TF_DIR)],
                         check=False, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"terraform fmt -check failed; run `terraform fmt infra/terraform`:\n{run.stdout}"
    (tmp_path / "bad.tf").write_text('variable "x" {\ntype=string\n}\n')
    bad = subprocess.run([exe, "fmt", "-check", str(tmp_path)], check=False, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "bad.tf" in bad.stdout


@pytest.fixture(scope="module")
def checkov_checks(tmp_path_factory) -> dict[str, list[dict]]:
    """One checkov run (its start-up is most of its cost) over a copy of the stack beside a planted bad bucket;
    checks by outcome ("passed", "failed", "skipped"), each with its file_path (/stack/... or /planted/...)."""
    if not CHECKOV.exists():
        message = f"checkov not found at {CHECKOV}: `make test` creates .venv-checkov (or set WITFORGE_CHECKOV)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    scan = tmp_path_factory.mktemp("checkov")
    shutil.copytree(TF_DIR, scan / "stack", ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    (scan / "planted").mkdir()
    (scan / "planted" / "main.tf").write_text('resource "aws_s3_bucket" "open" {\n  bucket = "x"\n}\n')
    # --skip-download: no guideline/policy download from Prisma Cloud (without it checkov resolves its API host).
    # Registry modules are not fetched either, so checkov judges this stack's own resources.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    run = subprocess.run([str(CHECKOV), "-d", str(scan), "--framework", "terraform", "--skip-download",
                          "--download-external-modules", "false", "-o", "json"],
                         check=False, capture_output=True, text=True, timeout=300, env={**env, "LOG_LEVEL": "WARNING"})
    assert run.stdout.strip(), f"checkov printed nothing (rc {run.returncode}):\n{run.stderr[-3000:]}"
    report = json.loads(run.stdout)
    report = report[0] if isinstance(report, list) else report
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    return {outcome: report["results"].get(f"{outcome}_checks", []) for outcome in ("passed", "failed", "skipped")}


def test_checkov_has_zero_failed_checks_and_every_skip_is_justified(checkov_checks):
    mine = {k: [c for c in v if c["file_path"].startswith("/stack/")] for k, v in checkov_checks.items()}
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']}): {c['check_name']}"
              for c in mine["failed"]]
    assert not failed, "checkov failed checks (fix, or skip inline with a reason):\n" + "\n".join(failed)
    assert len(mine["passed"]) >= 100, f"checkov passed only {len(mine['passed'])} checks: did it scan the stack?"
    for c in mine["skipped"]:
        reason = c["check_result"].get("suppress_comment", "")
        assert len(reason) >= 40, f"{c['check_id']} on {c['resource']}: skip reason too thin: {reason!r}"


def test_checkov_report_is_read_correctly_on_a_bad_bucket(checkov_checks):
    planted = {c["check_id"] for c in checkov_checks["failed"] if c["file_path"].startswith("/planted/")}
    assert {"CKV2_AWS_6", "CKV_AWS_21"} <= planted, planted


def test_checkov_skips_in_code_all_carry_a_reason():
    for name, text in tf_sources().items():
        for line in text.splitlines():
            if "checkov:skip=" in line:
                assert re.search(r"checkov:skip=CKV\w+:\S.{30,}", line), f"{name}: skip without a reason: {line.strip()}"


# ---- policy tests --------------------------------------------------------------------------------------------

def test_buckets_are_private_encrypted_versioned_logged_and_expire_what_they_should(cfg):
    assert bucket_violations(cfg) == []


@pytest.mark.parametrize("file, old, new, expect", [
    ("storage.tf", 'sse_algorithm     = "aws:kms"', 'sse_algorithm     = "AES256"', "SSE-KMS"),
    ("storage.tf", "block_public_policy     = true", "block_public_policy     = false", "public access block"),
    ("storage.tf", 'status = "Enabled"\n  }\n}', 'status = "Suspended"\n  }\n}', "versioning"),
    ("storage.tf", "abort_incomplete_multipart_upload {", "dummy {", "multipart"),
    ("storage.tf", '"${var.storage_prefix}/scratch/"', '"${var.storage_prefix}/tmp/"', "scratch"),
    ("storage.tf", "enable_key_rotation     = true", "enable_key_rotation     = false", "rotation"),
    ("storage.tf", 'bucket        = aws_s3_bucket.data.id\n  target_bucket', 'bucket        = aws_s3_bucket.logs.id\n  target_bucket',
     "no server access logging"),
])
def test_bucket_checker_catches_planted_faults(file, old, new, expect):
    found = bucket_violations(mutated(file, old, new))
    assert any(expect in v for v in found), found


def test_roles_have_least_privilege(cfg):
    assert iam_violations(cfg) == []
    assert trust_violations(cfg) == []


def test_roles_reach_exactly_the_project_layout(cfg, tmp_path):
    """URIs from the project's own path functions: the writer can write and list them, the readers read them,
    nobody else writes them."""
    ev = Evaluator(cfg)
    root = f"s3://bucket/{ev.ref('var.storage_prefix', {})}"
    dataset = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())["pipeline"]["dataset"]
    assert dataset in ev.ref("var.datasets", {}), f"the demo's dataset {dataset!r} is not in var.datasets"
    version = layout.version_uri(root, dataset, "v1")
    run = run_uri(root, "demo")
    # The dashboard's default place, from the code itself: render an empty one under a local root.
    page = Path(build_dashboard(str(tmp_path), DashboardConfig())).relative_to(tmp_path).as_posix()
    page = f"{root}/{page}"
    table = [  # (uri, writer, readers)
        (manifest_uri(root, dataset, "v1"), "crawler", ["training"]),
        (f"{version}/shards/000000.tar", "crawler", ["training"]),
        # Training reads the whole version prefix (manifest-listed shards); the stages' work dirs lie inside it.
        (f"{layout.work_uri(version, 'download')}/{layout.COMMIT_MARKER}", "crawler", ["training"]),
        (f"{run}/{step_dirname(100)}/model.safetensors", "training", ["evaluation", "crawler"]),
        (f"{run}/latest.json", "training", ["evaluation", "crawler"]),
        (result_uri(root, "0123abcd", "colour"), "evaluation", []),
        (page, "evaluation", []),
    ]
    grants = role_policies(cfg)
    for uri, writer, readers in table:
        key = uri.removeprefix("s3://bucket/")
        arn = f"arn:aws:s3:::{DATA_BUCKET}/{key}"
        parent = key.rsplit("/", 1)[0] + "/"
        assert can(grants[writer], "s3:PutObject", arn), f"{writer} cannot write {key}"
        assert can(grants[writer], "s3:AbortMultipartUpload", arn), f"{writer} cannot abort a multipart upload of {key}"
        assert can_list(grants[writer], parent), f"{writer} cannot list {parent}"
        for reader in readers:
            assert can(grants[reader], "s3:GetObject", arn), f"{reader} cannot read {key}"
            assert can_list(grants[reader], parent), f"{reader} cannot list {parent}"
        for other in set(ROLES) - {writer}:
            for action in WRITE_ACTIONS:
                assert not can(grants[other], action, arn), f"{other} may {action} {key} ({writer}'s)"
        for other in set(ROLES) - {writer} - set(readers):
            assert not can(grants[other], "s3:GetObject", arn), f"{other} may read {key}"
    prefix = f"arn:aws:s3:::{DATA_BUCKET}/{ev.ref('var.storage_prefix', {})}"
    assert not any(can(grants[r], a, f"{prefix}/scratch/{o}/x")
                   for r in ROLES for o in ROLES if o != r for a in OBJECT_ACTIONS), "a role reaches another's scratch"
    # External evaluation datasets (evaluation.external): operators upload them, evaluation only reads them.
    evalset = f"{prefix}/evalsets/cifar10/test/0.tar"
    assert can(grants["evaluation"], "s3:GetObject", evalset)
    assert can_list(grants["evaluation"], f"{ev.ref('var.storage_prefix', {})}/evalsets/cifar10/test/")
    assert not any(can(grants[r], a, evalset) for r in ROLES for a in WRITE_ACTIONS), "a role may write evalsets/"


@pytest.mark.parametrize("file, old, new, expect", [
    # the crawler given write access to checkpoints/
    ("iam.tf", 'sid       = "ReadCheckpoints"\n    actions   = local.s3_read_actions',
     'sid       = "ReadCheckpoints"\n    actions   = local.s3_write_actions', "checkpoints"),
    ("iam.tf", 's3_read_actions  = ["s3:GetObject"]', 's3_read_actions  = ["s3:GetObject", "s3:*"]', "wildcard"),
    ("iam.tf", '"${aws_s3_bucket.data.arn}/${var.storage_prefix}/dashboard/*",', '"${aws_s3_bucket.data.arn}/*",',
     "outside evaluation's write"),
    ("iam.tf", '"${var.storage_prefix}/eval", "${var.storage_prefix}/eval/*",', '"*",', "lists '*'"),
    ("iam.tf", 'variable = "kms:ViaService"', 'variable = "kms:CallerAccount"', "ViaService"),
    ("iam.tf", 'actions   = ["kms:Decrypt", "kms:GenerateDataKey"]', 'actions   = ["kms:*"]', "wildcard"),
    ("iam.tf", 'resources = [statement.value]', 'resources = ["*"]', "resource '*'"),
])
def test_iam_checker_catches_planted_faults(file, old, new, expect):
    found = iam_violations(mutated(file, old, new))
    assert any(expect in v for v in found), found


def test_trust_checker_catches_a_wildcard_subject():
    bad = mutated("iam.tf", 'test     = "StringEquals"\n      variable = "${module.eks.oidc_provider}:sub"\n'
                            '      values   = ["system:serviceaccount:${var.namespace}:${each.value}"]',
                  'test     = "StringLike"\n      variable = "${module.eks.oidc_provider}:sub"\n'
                  '      values   = ["system:serviceaccount:${var.namespace}:*"]')
    assert any("subject condition" in v for v in trust_violations(bad))


def test_modules_providers_and_charts_are_pinned_exactly(cfg):
    assert pin_violations(cfg) == []
    assert {"vpc", "eks"} <= cfg.modules.keys()
    assert cfg.resources["helm_release"]["kuberay_operator"]["chart"] == "kuberay-operator"


@pytest.mark.parametrize("file, old, new", [
    ("eks.tf", 'version = "21.29.0"', 'version = "~> 21.0"'),
    ("versions.tf", 'version = "6.39.0"', 'version = ">= 6.0"'),
    ("kuberay.tf", 'version          = "1.5.1"', 'version          = "1.5"'),
])
def test_pin_checker_catches_ranges(file, old, new):
    assert pin_violations(mutated(file, old, new))


def test_node_groups_split_cpu_and_tainted_gpu(cfg):
    groups = cfg.modules["eks"]["eks_managed_node_groups"]
    assert set(groups) == {"cpu", "gpu"}
    assert "NVIDIA" in groups["gpu"]["ami_type"] and "NVIDIA" not in groups["cpu"]["ami_type"]
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"} in groups["gpu"]["taints"].values()
    assert "taints" not in groups["cpu"]
    assert groups["gpu"]["labels"]["witforge.io/pool"] == "gpu" and groups["cpu"]["labels"]["witforge.io/pool"] == "cpu"
    assert cfg.modules["eks"]["enable_irsa"] is True
    # The device plugin must tolerate the GPU taint, or no GPU is ever advertised.
    assert "nvidia.com/gpu" in cfg.resources["helm_release"]["nvidia_device_plugin"]["values"][0]


def test_variables_and_outputs_are_documented_in_code_and_readme(cfg):
    readme = (TF_DIR / "README.md").read_text()
    for kind, blocks, needs in (("variable", cfg.variables, ("description", "type")), ("output", cfg.outputs, ("description",))):
        for name, body in blocks.items():
            for attr in needs:
                assert body.get(attr), f"{kind} {name}: no {attr}"
            assert f"| `{name}` |" in readme, f"{kind} {name} is not in infra/terraform/README.md's table"
