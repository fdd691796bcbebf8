"""Typed configuration: one YAML file per run, validated into dataclasses, with dotted overrides.

Every entry point (`pipelines.build`, `training.train`, `evaluation.run`, `evaluation.dashboard`) reads the
same file. Each package declares the sections it owns as dataclasses; `load_config` validates the sections an
entry point asks for and checks that every other top-level key is a known section, so a typo anywhere fails
before any work, with the dotted name of the field in the message.

    cfg = load_config("configs/demo.yaml", ["training.steps=10"], {"storage": StorageConfig, ...})
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

# Top-level sections any entry point may meet in a config file; each package validates its own.
KNOWN_SECTIONS = ("storage", "web", "pipeline", "training", "evaluation", "dashboard")


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the dotted field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp` and convert it (dict -> dataclass, int -> float...)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item_tp = args[0] if args else Any
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(value).__name__} {value!r}")
        return build_dataclass(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # a bug in a section class, not in the file


def build_dataclass(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and naming the field on any error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown field {prefix}{unknown[0]} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required field {dotted}")
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from exc
    return obj


def _parse_scalar(text: str) -> Any:
    # YAML's own scalar rules, so `a.b=3` is an int, `a.b=true` a bool, `a.b=[1,2]` a list.
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override value {text!r} is not valid YAML: {exc}") from exc


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides to the raw mapping (before validation)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def read_yaml_mapping(path: Path, what: str = "config file") -> dict:
    """A YAML file whose top level is a mapping (empty file: {}); ConfigError naming the file otherwise."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: the top level must be a mapping of sections")
    return data


def read_raw(path: str | Path, overrides: list[str] | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    return apply_overrides(read_yaml_mapping(path), list(overrides or []))


def load_config(path: str | Path, overrides: list[str] | None, sections: dict[str, type]) -> dict[str, Any]:
    """Validate the sections named in `sections`; the others must be known section names holding mappings.

    Returns {section name: dataclass instance} plus "_raw" (the merged mapping, for saving beside outputs).
    """
    raw = read_raw(path, overrides)
    for key, value in raw.items():
        if key not in KNOWN_SECTIONS:
            raise ConfigError(f"unknown section {key} in {path} (known: {', '.join(KNOWN_SECTIONS)})")
        if not isinstance(value, dict):
            raise ConfigError(f"section {key} in {path} must be a mapping")
    out: dict[str, Any] = {name: build_dataclass(cls, raw.get(name, {}), name) for name, cls in sections.items()}
    out["_raw"] = raw
    return out


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def config_hash(obj: Any) -> str:
    """Stable short hash of a (section of a) config: same settings, same hash, whatever the key order."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def add_config_args(parser) -> None:
    """The CLI every entry point shares: --config FILE plus dotted overrides."""
    parser.add_argument("--config", required=True, help="YAML config file, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.steps=100 storage.root=s3://b/p")


def parse_cli(prog: str, description: str, argv: list[str] | None, sections: dict[str, type]) -> dict[str, Any]:
    """Parse `--config FILE [key=value ...]` and validate; a bad config exits with status 2 and names the field."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides, sections)
    except ConfigError as exc:
        parser.exit(2, f"{prog}: config error: {exc}\n")
