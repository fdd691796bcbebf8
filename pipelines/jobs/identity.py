"""The code identity a submission carries: the version stamped on outputs and the short form in submission ids.

A clean checkout is its commit. A dirty one adds a digest of its uncommitted changes (tracked diff and untracked,
not ignored files), so editing a file and resubmitting gives a new submission id instead of "already submitted".
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from pipelines.version import code_version

REPO = Path(__file__).resolve().parents[2]
_SHA = re.compile(r"(?:^|-g)([0-9a-f]{7,40})(?:-dirty)?$")


def _git(*args: str, repo: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True, timeout=30).stdout


def worktree_digest(repo: Path = REPO) -> str:
    """sha256 (12 hex) over `git diff HEAD` and the untracked, not ignored files' names and contents."""
    h = hashlib.sha256(_git("diff", "HEAD", "--binary", repo=repo))
    for name in sorted(n for n in _git("ls-files", "-z", "--others", "--exclude-standard", repo=repo).split(b"\0") if n):
        h.update(b"\0" + name + b"\0")
        path = repo / name.decode()
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def slug_for(version: str) -> str:
    """The id-safe short form of a version: its commit's first 8 hex, else the version lowercased and dashed."""
    m = _SHA.search(version)
    if m:
        return m.group(1)[:8]
    return re.sub(r"[^a-z0-9]+", "-", version.lower()).strip("-")[:16]


def code_identity(repo: Path = REPO) -> tuple[str, str]:
    """(version for outputs, slug for submission ids)."""
    version = code_version()
    if version == "unknown":
        raise ValueError("no code version: this is not a git checkout and WITFORGE_CODE_VERSION is not set")
    slug = slug_for(version)
    if version.endswith("-dirty"):
        try:
            digest = worktree_digest(repo)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ValueError(f"code version {version}: cannot digest the uncommitted changes: {exc}") from exc
        return f"{version}+{digest}", f"{slug}-dirty{digest[:6]}"
    return version, slug
