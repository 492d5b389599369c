import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from dindind import config
from dindind.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
REPO_CONFIGS = sorted((config.ROOT / "config").glob("*.yaml")) + sorted(FIXTURES.glob("valid-*.yaml"))


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("valid-*.yaml")), ids=lambda p: p.name)
def test_valid_fixtures_load(path):
    cfg = config.load(path)
    assert cfg.kubernetes["source"] in ("sample", "dir", "release")


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("invalid-*.yaml")), ids=lambda p: p.name)
def test_invalid_fixtures_report_every_problem(path):
    expected = re.findall(r"^# expect: (.*)$", path.read_text(), re.M)
    assert expected, f"{path.name} names no expected problem"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    text = info.value.render()
    assert text.startswith(f"ERROR: invalid config {path}")
    for needle in expected:
        assert needle in text, f"{needle!r} missing from:\n{text}"
    # one problem per line, each with its key path (or line number)
    assert all(re.match(r"^(line \d+|\(top level\)|[a-z_]+(\.[a-z_0-9]+)?(\[\d+\])?)[: ]", p)
               for p in info.value.problems), info.value.problems


def test_defaults_match_the_default_file():
    embedded = config.load(config.DEFAULT_CONFIG).as_dict()
    empty = config.parse("", "empty.yaml").as_dict()
    assert embedded == empty


def test_env_and_explicit_path(monkeypatch, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("node:\n  preload: false\n")
    monkeypatch.setenv("DINDIND_CONFIG", str(p))
    assert config.load().node["preload"] is False
    assert config.load(config.DEFAULT_CONFIG).node["preload"] is True


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        config.load(tmp_path / "nope.yaml")


def test_config_is_frozen():
    cfg = config.load(config.DEFAULT_CONFIG)
    with pytest.raises(TypeError):
        cfg.node["preload"] = False


def test_source_date_epoch_env_wins(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234")
    assert config.load(config.DEFAULT_CONFIG).source_date_epoch == 1234


def test_committed_schema_is_generated_from_spec():
    committed = json.loads(config.SCHEMA_PATH.read_text())
    assert committed == config.json_schema(), "run: python -m dindind schema > config/config.schema.json"


@pytest.mark.parametrize("path", REPO_CONFIGS, ids=lambda p: p.name)
def test_repo_configs_validate_against_schema(path):
    schema = json.loads(config.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = yaml.safe_load(path.read_text()) or {}
    jsonschema.validate(data, schema)


def test_schema_rejects_what_the_validator_rejects():
    schema = json.loads(config.SCHEMA_PATH.read_text())
    for bad in ({"nodes": {}}, {"node": {"preload": "yes"}}, {"kubernetes": {"version": "1.2.3"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
