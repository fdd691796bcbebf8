"""Config validation: a malformed config fails before any work, naming the field."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pipelines.build_config import PipelineConfig
from pipelines.config import ConfigError, build_dataclass, config_hash, load_config, parse_cli
from pipelines.storage import StorageConfig


@dataclass
class Inner:
    size: int = 3
    ratio: float = 1.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    flag: bool = False


def test_builds_nested_and_converts_ints_to_floats():
    obj = build_dataclass(Outer, {"inner": {"ratio": 2, "names": ["a"]}, "flag": True})
    assert obj.inner.ratio == 2.0 and isinstance(obj.inner.ratio, float)
    assert obj.inner.names == ["a"] and obj.flag is True


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"inner": {"size": "big"}}, "inner.size: expected an integer"),
        ({"inner": {"sizes": 3}}, "unknown field inner.sizes"),
        ({"flag": "yes"}, "flag: expected true/false"),
        ({"inner": {"names": "a"}}, "inner.names: expected a list"),
        ({"inner": 5}, "inner: expected a mapping"),
    ],
)
def test_errors_name_the_field(data, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        build_dataclass(Outer, data)


def test_load_config_overrides_and_unknown_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("storage:\n  root: /tmp/x\npipeline:\n  dataset: d\n")
    cfg = load_config(path, ["pipeline.version=v7", "pipeline.shard.samples_per_shard=10"],
                      {"storage": StorageConfig, "pipeline": PipelineConfig})
    assert cfg["pipeline"].version == "v7" and cfg["pipeline"].shard.samples_per_shard == 10
    assert cfg["storage"].root == "/tmp/x"
    path.write_text("storgae:\n  root: /tmp/x\n")
    with pytest.raises(ConfigError, match="unknown section storgae"):
        load_config(path, [], {"storage": StorageConfig})


def test_post_init_checks_name_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pipeline:\n  source:\n    kind: warc\n")
    with pytest.raises(ConfigError, match=r"pipeline\.source\.warc"):
        load_config(path, [], {"pipeline": PipelineConfig})
    path.write_text("pipeline:\n  source:\n    kind: ftp\n")
    with pytest.raises(ConfigError, match=r"pipeline\.source\.kind: 'ftp' is not one of"):
        load_config(path, [], {"pipeline": PipelineConfig})


def test_cli_exits_2_with_the_field(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("pipeline:\n  dedupe:\n    phash_max_distance: many\n")
    with pytest.raises(SystemExit) as exc:
        parse_cli("prog", "", ["--config", str(path)], {"pipeline": PipelineConfig})
    assert exc.value.code == 2
    assert "pipeline.dedupe.phash_max_distance" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_cli("prog", "", ["--config", str(tmp_path / "missing.yaml")], {"pipeline": PipelineConfig})
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_config_hash_is_stable_and_sensitive():
    a, b = PipelineConfig(), PipelineConfig()
    assert config_hash(a) == config_hash(b)
    b.shard.samples_per_shard += 1
    assert config_hash(a) != config_hash(b)
