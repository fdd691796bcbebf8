"""Talking to a Ray cluster's job server through JobSubmissionClient, with token authentication on by default.

The token reaches the client the way Ray 2.60 looks for it: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH
names, else ~/.ray/auth_token. Ray only attaches it when RAY_AUTH_MODE=token in this process, so that is set
unless the caller chose otherwise (RAY_AUTH_MODE=disabled for a cluster without authentication).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # the dashboard bound to loopback (or `ray dashboard cluster.yaml`)
EXIT_FOR_STATUS = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
EXIT_USAGE, EXIT_CLUSTER, EXIT_NO_JOB = 2, 4, 5
TERMINAL = frozenset(EXIT_FOR_STATUS)


class ClusterError(RuntimeError):
    """The cluster could not be reached or refused the request (exit code 4)."""


class NoSuchJob(LookupError):
    """No job with that submission id on this cluster (exit code 5)."""


def _prepare_auth() -> None:
    # Must run before ray reads its config in this process: RAY_AUTH_MODE is read once.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    # Ray aborts the process on an unreadable RAY_AUTH_TOKEN_PATH; say which variable is wrong instead.
    if path and not (Path(path).is_file() and Path(path).read_text().strip()):
        raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path}: no token in that file")


def connect(address: str | None = None) -> JobSubmissionClient:
    """A client for --address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS, else the loopback dashboard."""
    _prepare_auth()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if address:
        # Ray lets these variables override an explicit address; the command line must win.
        os.environ["RAY_API_SERVER_ADDRESS"] = address
    elif not (os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")):
        address = DEFAULT_ADDRESS
    where = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ["RAY_ADDRESS"]
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise ClusterError(f"{where} refused the request: {exc}") from None
    except ConnectionError as exc:
        raise ClusterError(f"cannot reach the Ray job server at {where}: {exc}") from None


def call(fn, *args: Any, **kwargs: Any) -> Any:
    """Run one client request, turning Ray's errors into ClusterError / NoSuchJob."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args, **kwargs)
    except AuthenticationError as exc:
        raise ClusterError(f"the cluster refused the request: {exc}") from None
    except ConnectionError as exc:
        raise ClusterError(f"cannot reach the Ray job server: {exc}") from None
    except RuntimeError as exc:
        # The SDK reports HTTP errors as RuntimeError("Request failed with status code 404: ...").
        if "status code 404" in str(exc):
            raise NoSuchJob(str(exc)) from None
        raise


def job_info(client: JobSubmissionClient, submission_id: str):
    """JobDetails of that submission, or None when the cluster has no such job."""
    try:
        return call(client.get_job_info, submission_id)
    except NoSuchJob:
        return None


def submit_once(client: JobSubmissionClient, kwargs: dict[str, Any]):
    """Submit unless a job with this submission id exists; returns the existing JobDetails, or None if submitted.

    Ray refuses a second job with the same submission id; checking first avoids uploading the working_dir for
    nothing, and a race between two submitters ends in the same report."""
    existing = job_info(client, kwargs["submission_id"])
    if existing is not None:
        return existing
    try:
        call(client.submit_job, **kwargs)
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise ClusterError(f"submission {kwargs['submission_id']} failed: {exc}") from None
        return job_info(client, kwargs["submission_id"])
    return None


def status_of(client: JobSubmissionClient, submission_id: str) -> str:
    return str(call(client.get_job_status, submission_id).value)


def wait_terminal(client: JobSubmissionClient, submission_id: str, timeout: float | None = None,
                  poll: float = 1.0) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or `timeout` seconds pass); returns the last status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = status_of(client, submission_id)
        if status in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return status
        time.sleep(poll)


def follow(client: JobSubmissionClient, submission_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as exc:
        # The log stream can drop (proxy timeouts, a dashboard restart); the job's status is still authoritative.
        print(f"log stream interrupted ({exc}); waiting for the job to end", file=sys.stderr)
    return wait_terminal(client, submission_id)


def exit_code(status: str) -> int:
    """0 SUCCEEDED, 1 FAILED, 3 STOPPED; 0 for a job still PENDING or RUNNING."""
    return EXIT_FOR_STATUS.get(status, 0)
