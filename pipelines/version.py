"""The code version stamped on every output (manifest, checkpoint, result row)."""

from __future__ import annotations

import functools
import os
import subprocess


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """git describe of the checkout (with -dirty), or WITFORGE_CODE_VERSION when there is no .git (Ray workers)."""
    env = os.environ.get("WITFORGE_CODE_VERSION")
    if env:
        return env
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here, capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ray_job_id() -> str:
    """The submission id of the `ray job submit` job this process runs in ("" outside one).

    Ray's job supervisor hands the entrypoint its job config (metadata included) in this variable; the id is what
    `ray job logs <id>` and the ops CLI take, so it is what provenance should name."""
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    if not raw:
        return ""
    try:
        return str(json.loads(raw).get("metadata", {}).get("job_submission_id", ""))
    except (ValueError, AttributeError):
        return ""
