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


# ---------------------------------------------------------------- hostile files

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


def _problems(text_or_path):
    with pytest.raises(ConfigError) as info:
        if isinstance(text_or_path, Path):
            config.load(text_or_path)
        else:
            config.parse(text_or_path, "x.yaml")
    return info.value.problems


def test_an_alias_bomb_is_refused_at_the_first_alias():
    # 9**9 strings once expanded; refused when the first alias is read, before anything is built
    assert _problems(BOMB) == ["line 2: aliases (*a) are not supported; write the value out"]


def test_a_merge_key_is_an_alias_too():
    text = "base: &b {suite: bookworm}\nnode:\n  <<: *b\n"
    assert _problems(text) == ["line 3: aliases (*b) are not supported; write the value out"]


@pytest.mark.parametrize("text", [
    "[" * 10000 + "]" * 10000,
    "[" * ((1 << 20) - 1),
    "{a: " * 5000 + "1" + "}" * 5000,
    "".join(" " * i + f"k{i}:\n" for i in range(500)),
    "".join("  " * i + "-\n" for i in range(500)),
], ids=["flow-seq", "flow-unclosed-1MiB", "flow-map", "block-map", "block-seq"])
def test_deep_nesting_is_refused_without_a_recursion_error(text):
    (problem,) = _problems(text)
    assert re.fullmatch(r"line \d+: nested deeper than 20 levels", problem), problem


def test_nesting_up_to_the_limit_is_fine():
    # kubeadm patches nest; 20 levels (top, cluster, the list, the patch, 16 more) still parse
    patch = "{kind: KubeletConfiguration, a: " + "{a: " * 15 + "1" + "}" * 16
    cfg = config.parse(f"cluster:\n  kubeadm_patches: [{patch}]\n", "x.yaml")
    assert cfg.cluster["kubeadm_patches"][0]["kind"] == "KubeletConfiguration"
    assert _problems(f"cluster:\n  kubeadm_patches: [{patch.replace('{a: ', '{a: {a: ', 1)}}}]\n") \
        == ["line 2: nested deeper than 20 levels"]


def test_too_many_values_are_refused():
    assert _problems("[" + "1, " * 20000 + "]") == ["line 1: more than 10000 values; a config is much smaller"]


def test_a_big_file_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * 500_000)   # 5 MB of valid YAML
    reads = []
    real_open = open

    def spy_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        real_read = f.read
        f_read = lambda n=-1: reads.append(n) or real_read(n)   # noqa: E731
        return _Proxy(f, f_read)

    monkeypatch.setattr("builtins.open", spy_open)
    problems = _problems(big)
    monkeypatch.undo()
    assert problems == [f"(top level): the file is larger than {config.MAX_BYTES} bytes; a config is a few kilobytes"]
    assert reads == [config.MAX_BYTES + 1]


class _Proxy:
    def __init__(self, f, read):
        self._f, self.read = f, read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_a_file_of_exactly_the_limit_is_read(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"node: {preload: false}\n".ljust(config.MAX_BYTES, b" "))
    assert config.load(p).node["preload"] is False


def test_text_over_the_limit_is_refused_by_parse():
    assert _problems("#" * (config.MAX_BYTES + 1)) \
        == [f"(top level): the text is larger than {config.MAX_BYTES} bytes; a config is a few kilobytes"]
    assert _problems("#" + "é" * (config.MAX_BYTES // 2)) \
        == [f"(top level): the text is larger than {config.MAX_BYTES} bytes; a config is a few kilobytes"]


@pytest.mark.parametrize("data, offset, line", [
    (b"node:\n  preload: \xff\n", 17, 2),
    (b"\xfe\xff\x00n\x00o", 0, 1),                        # UTF-16
    (b"cluster:\n  name: caf\xe9\n", 20, 2),            # Latin-1
    (b"a: \xed\xa0\x80\n", 3, 1),                         # an encoded surrogate
])
def test_bytes_that_are_not_utf8_name_their_offset(tmp_path, data, offset, line):
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    (problem,) = _problems(p)
    assert problem.startswith(f"line {line}: not UTF-8: byte 0x{data[offset]:02x} at offset {offset} ("), problem


def test_a_utf8_byte_order_mark_is_fine(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xef\xbb\xbfnode: {preload: false}\n")
    assert config.load(p).node["preload"] is False


def test_a_directory_is_a_config_error(tmp_path):
    assert _problems(tmp_path) == ["cannot read the config file: Is a directory"]


@pytest.mark.parametrize("text, needle", [
    ("a: 2020-13-45\n", "cannot construct '2020-13-45': month must be in 1..12"),
    ("a: !!timestamp 2020-01-01T25:00:00\n", "hour must be in 0..23"),
    ("a: !!float abc\n", "cannot construct 'abc'"),
    ("a: !!int " + "9" * 5000 + "\n", "cannot construct"),
    ("a: !!python/object:os.system x\n", "could not determine a constructor"),
    ("? [1]\n: 2\n", "found unhashable key"),
    ("a: 1\n---\nb: 2\n", "expected a single document"),
    ("a: \x00\n", "special characters are not allowed"),
])
def test_what_pyyaml_cannot_construct_is_invalid_yaml(text, needle):
    (problem,) = _problems(text)
    assert problem.startswith("not valid YAML: ") and needle in problem, problem
    assert "\n" not in problem


@pytest.mark.parametrize("text, problem", [
    ("cluster:\n  e2e_skip: 'a{99999999999}'\n",
     "cluster.e2e_skip: 'a{99999999999}' is not a usable regular expression (the repetition number is too large)"),
    ("cluster:\n  workers: 0x" + "f" * 1000 + "\n", "cluster.workers: a 4000-bit number is above the maximum 10"),
    ("cluster:\n  name: 0b" + "1" * 100000 + "\n",
     "cluster.name: expected string, got int a 100000-bit number (quote it in YAML)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: 2020-01-01}]\n",
     "cluster.kubeadm_patches[0]: patch.a: date datetime.date(2020, 1, 1) is not plain JSON (quote it)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: [!!binary AAAA]}]\n",
     "cluster.kubeadm_patches[0]: patch.a[0]: bytes b'\\x00\\x00\\x00' is not plain JSON (quote it)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: !!set {b}}]\n",
     "cluster.kubeadm_patches[0]: patch.a: set {'b'} is not plain JSON (quote it)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: {1: b}}]\n",
     "cluster.kubeadm_patches[0]: patch.a: key 1 is not a string (quote it)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: .nan}]\n",
     "cluster.kubeadm_patches[0]: patch.a: nan is not a finite number"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: 0x" + "f" * 17 + "}]\n",
     "cluster.kubeadm_patches[0]: patch.a: a 68-bit number is too large"),
    ("cluster:\n  name: '" + "x" * 5000 + "'\n",
     "cluster.name: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...(5002 chars) is not "
     + config.NAME_FMT),
    ('"a\\nb": 1\n', "'a\\nb': unknown key (known: kubernetes, cni, base, node, cluster, build)"),
])
def test_hostile_values_are_one_problem_line(text, problem):
    assert _problems(text) == [problem]


def test_a_regex_too_deep_for_the_re_parser_is_a_problem():
    (problem,) = _problems("cluster:\n  e2e_skip: '" + "(" * 5000 + ")" * 5000 + "'\n")
    assert problem.startswith("cluster.e2e_skip: '" + "(" * 79 + "...(10002 chars) is not a usable regular "
                              "expression (maximum recursion depth exceeded"), problem


@pytest.mark.parametrize("path", ["a\x00b", "a" * 5000, "../" * 2000 + "x"])
def test_a_path_the_os_refuses_is_a_problem_not_a_crash(path):
    text = yaml.safe_dump({"kubernetes": {"source": "dir", "path": path}})
    problems = _problems(text)
    assert any(p.startswith("kubernetes.path: ") for p in problems), problems
    text = yaml.safe_dump({"kubernetes": {"source": "dir", "path": ".", "extra_images": [path]}})
    problems = _problems(text)
    assert any(p.startswith("kubernetes.extra_images[0]: ") for p in problems), problems
