"""The ops CLI: every pipeline is a Ray job, submitted from a template in configs/jobs/.

    python -m pipelines.jobs submit PIPELINE [--config FILE] [section.key=value ...] [--no-wait] [--deps image]
    python -m pipelines.jobs status SUBMISSION_ID
    python -m pipelines.jobs logs SUBMISSION_ID [--follow]
    python -m pipelines.jobs stop SUBMISSION_ID [--no-wait]
    python -m pipelines.jobs list [--pipeline PIPELINE] [--json]
    python -m pipelines.jobs render --out infra/kuberay [--check]

PIPELINE is build, train, evaluate or nightly (configs/jobs/<name>.yaml) or a path to a job template. The cluster
is --address, else RAY_API_SERVER_ADDRESS or RAY_ADDRESS, else http://127.0.0.1:8265. Token authentication is on
unless RAY_AUTH_MODE says otherwise; the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

The submission id is witforge-<pipeline>-<config hash[:10]>-<commit[:8]>[-dirty<digest>][-<UTC date> for nightly]:
submitting the same pipeline, config and code again reports the existing job (and follows it) instead of starting
a duplicate. Exit codes: 0 succeeded (or still running, for status/--no-wait), 1 failed, 2 bad usage or template,
3 stopped, 4 cluster unreachable or authentication refused, 5 no such job.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from pipelines import storage
from pipelines.jobs import client as jc
from pipelines.jobs.spec import REPO, JobSpecError, load_spec, resolve

PROG = "python -m pipelines.jobs"


def _env_pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobSpecError(f"--env {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _when(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _rerun_hint(submission_id: str) -> str:
    return (f"to run it again: {PROG} submit ... --submission-id {submission_id}-r2 "
            "(the pipelines skip work already committed)")


def cmd_submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.pipeline)
    sub = resolve(spec, args.config, args.overrides, env=_env_pairs(args.env), deps_mode=args.deps,
                  submission_id=args.submission_id)
    if not storage.is_remote(sub.storage_root):
        print(f"warning: storage.root={sub.storage_root} is local to the node that runs the job; on a cluster use "
              "storage.root=s3://bucket/prefix", file=sys.stderr)
    if args.dry_run:
        print(json.dumps(sub.client_kwargs(), indent=2, sort_keys=True))
        return 0
    client = jc.connect(args.address)
    existing = jc.submit_once(client, sub.client_kwargs())
    sid = sub.submission_id
    if existing is None:
        print(f"submitted {sid}", flush=True)
        status = "PENDING"
    else:
        status = str(existing.status.value)
        print(f"{sid}: already submitted ({status}); not starting a duplicate", flush=True)
    if args.no_wait or status in jc.TERMINAL:
        if status not in jc.TERMINAL:
            print(f"follow it: {PROG} logs --follow {sid}")
        elif status != "SUCCEEDED":
            print(_rerun_hint(sid))
        return jc.exit_code(status)
    try:
        status = jc.follow(client, sid)
    except KeyboardInterrupt:
        print(f"\ndetached; {sid} keeps running: {PROG} logs --follow {sid}  |  {PROG} stop {sid}", file=sys.stderr)
        return 130
    print(f"{sid}: {status}")
    if status != "SUCCEEDED":
        print(_rerun_hint(sid))
    return jc.exit_code(status)


def cmd_status(args: argparse.Namespace) -> int:
    client = jc.connect(args.address)
    info = jc.call(client.get_job_info, args.submission_id)
    status = str(info.status.value)
    print(f"{args.submission_id}: {status}")
    print(f"  message:    {info.message or '-'}")
    print(f"  entrypoint: {info.entrypoint}")
    print(f"  started:    {_when(info.start_time)}   ended: {_when(info.end_time)}")
    for key, value in sorted((info.metadata or {}).items()):
        print(f"  {key}: {value}")
    return jc.exit_code(status)


def cmd_logs(args: argparse.Namespace) -> int:
    client = jc.connect(args.address)
    if not args.follow:
        sys.stdout.write(jc.call(client.get_job_logs, args.submission_id))
        return 0
    jc.call(client.get_job_info, args.submission_id)  # a clear "no such job" before opening the stream
    try:
        status = jc.follow(client, args.submission_id)
    except KeyboardInterrupt:
        return 130
    print(f"{args.submission_id}: {status}", file=sys.stderr)
    return jc.exit_code(status)


def cmd_stop(args: argparse.Namespace) -> int:
    client = jc.connect(args.address)
    was_running = jc.call(client.stop_job, args.submission_id)
    if args.no_wait:
        print(f"{args.submission_id}: stop requested" if was_running else f"{args.submission_id}: was not running")
        return 0
    status = jc.wait_terminal(client, args.submission_id, timeout=args.timeout)
    print(f"{args.submission_id}: {status}")
    if status not in jc.TERMINAL:
        print(f"still {status} after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = jc.connect(args.address)
    rows = []
    for job in jc.call(client.list_jobs):
        if not job.submission_id:
            continue  # drivers started by hand (ray.init), not submissions
        meta = job.metadata or {}
        if args.pipeline and meta.get("witforge_pipeline") != args.pipeline:
            continue
        rows.append({"submission_id": job.submission_id, "status": str(job.status.value),
                     "pipeline": meta.get("witforge_pipeline", "-"), "started": _when(job.start_time),
                     "ended": _when(job.end_time), "code_version": meta.get("code_version", "-"),
                     "config_hash": meta.get("config_hash", "-")})
    rows.sort(key=lambda r: r["started"])
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    cols = ["submission_id", "status", "pipeline", "started", "code_version"]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in cols))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from pipelines.jobs.kuberay import render_all

    try:
        files = render_all()
    except ValueError as exc:
        raise JobSpecError(str(exc)) from exc
    out = Path(args.out)
    if args.check:
        drifted = [name for name, text in files.items()
                   if not (out / name).is_file() or (out / name).read_text() != text]
        for name in drifted:
            print(f"{out / name}: differs from configs/jobs/ (rerun: {PROG} render --out {args.out})")
        return 1 if drifted else 0
    for name, text in files.items():
        storage.write_bytes(str(out / name), text.encode())
        print(out / name)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Submit and operate witforge pipelines as Ray jobs.",
                                epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{submit,status,logs,stop,list,render}")
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--address", help="job server URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, "
                                           f"else {jc.DEFAULT_ADDRESS})")

    s = sub.add_parser("submit", parents=[cluster], help="submit a pipeline; waits and exits with its status")
    s.add_argument("pipeline", help="build, train, evaluate, nightly, or a path to a job template .yaml")
    s.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. storage.root=s3://bucket/prefix")
    s.add_argument("--config", help="project config (default: the template's, configs/demo.yaml)")
    s.add_argument("--no-wait", action="store_true", help="return once submitted (exit 0) instead of following")
    s.add_argument("--deps", choices=["requirements", "image"],
                   help="requirements: pip-install the pinned deps per job; image: the cluster's Python has them")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra env var for the job (shown in the dashboard: no secrets)")
    s.add_argument("--submission-id", help="use this id instead of the deterministic one (e.g. a rerun: <id>-r2)")
    s.add_argument("--dry-run", action="store_true", help="print the submission (JSON) without contacting Ray")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("status", parents=[cluster], help="a job's status and metadata; exit code = its status")
    s.add_argument("submission_id")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("logs", parents=[cluster], help="a job's logs; --follow streams until it ends")
    s.add_argument("submission_id")
    s.add_argument("--follow", "-f", action="store_true", help="stream until the job ends; exit code = its status")
    s.set_defaults(fn=cmd_logs)

    s = sub.add_parser("stop", parents=[cluster], help="stop a job and wait until it has stopped")
    s.add_argument("submission_id")
    s.add_argument("--no-wait", action="store_true", help="return once the stop is requested")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the job to stop (default 60)")
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("list", parents=[cluster], help="submitted jobs, oldest first")
    s.add_argument("--pipeline", help="only this pipeline's jobs")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("render", help="write the KubeRay manifests generated from configs/jobs/")
    s.add_argument("--out", default=str(REPO / "infra" / "kuberay"), help="directory (default infra/kuberay)")
    s.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files there differ")
    s.set_defaults(fn=cmd_render)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # Overrides may come after options (`submit train --no-wait storage.root=...`), which argparse's positional
    # handling alone refuses.
    args, extra = p.parse_known_args(argv)
    if extra:
        if args.command != "submit" or any(x.startswith("-") or "=" not in x for x in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        return args.fn(args)
    except JobSpecError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return jc.EXIT_USAGE
    except jc.ClusterError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return jc.EXIT_CLUSTER
    except jc.NoSuchJob as exc:
        print(f"{PROG}: error: no such job: {exc}", file=sys.stderr)
        return jc.EXIT_NO_JOB


if __name__ == "__main__":
    sys.exit(main())
