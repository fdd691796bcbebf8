"""Pinned pip dependencies for a job's runtime_env, derived from requirements.txt (+ constraints.txt for the
versions requirements.txt leaves open), so a job installs exactly what the tests ran with."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def _requirement_lines(path: Path) -> Iterable[tuple[int, str]]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if text:
            yield number, text


def _parse(path: Path, number: int, text: str) -> Requirement:
    if text.startswith("-"):
        raise ValueError(f"{path}:{number}: pip option lines ({text.split()[0]}) are not supported in job deps")
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise ValueError(f"{path}:{number}: {exc}") from exc


def _exact(req: Requirement) -> str | None:
    pins = [s.version for s in req.specifier if s.operator == "=="]
    return pins[0] if len(pins) == 1 and len(req.specifier) == 1 else None


def pinned_packages(requirements: Path, constraints: Path, exclude: Iterable[str]) -> list[str]:
    """`name[extras]==version` for every requirement not in `exclude`; a requirement without an exact pin takes
    its version from the constraints file, and one pinned in neither is an error naming it."""
    skip = {canonicalize_name(n) for n in exclude}
    constraint_pins: dict[str, str] = {}
    if constraints.is_file():
        for number, text in _requirement_lines(constraints):
            req = _parse(constraints, number, text)
            version = _exact(req)
            if version:
                constraint_pins[canonicalize_name(req.name)] = version
    out = []
    for number, text in _requirement_lines(requirements):
        req = _parse(requirements, number, text)
        name = canonicalize_name(req.name)
        if name in skip:
            continue
        version = _exact(req) or constraint_pins.get(name)
        if version is None:
            raise ValueError(f"{requirements}:{number}: {req.name} has no exact pin there or in {constraints}")
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        marker = f"; {req.marker}" if req.marker else ""
        out.append(f"{req.name}{extras}=={version}{marker}")
    return out
