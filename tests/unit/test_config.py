import json
import os
import re
import tempfile
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from dindind.base import config
from dindind.base.errors import ConfigError, DindindError, InputError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "config"
REPO_CONFIGS = sorted((config.ROOT / "config").glob("*.yaml")) + sorted(FIXTURES.glob("valid-*.yaml"))


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("valid-*.yaml")), ids=lambda p: p.name)
def test_valid_fixtures_load(path):
    cfg = config.load(path)
    assert cfg.kubernetes["source"] in ("sample", "dir", "release", "module", "checkout")


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
    # a merge of a plain mapping has no alias, and !!str is the one tag allowed
    cfg = config.parse("cluster:\n  name: !!str 123\n  <<: {workers: 3}\nnode: {tag: !!str 1.2}\n", "x.yaml")
    assert (cfg.cluster["name"], cfg.cluster["workers"], cfg.node["tag"]) == ("123", 3, "1.2")


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

    monkeypatch.setattr(config, "open", spy_open, raising=False)    # the module's open, not everyone's
    problems = _problems(big)
    assert problems == [f"(top level): the file is larger than {config.MAX_BYTES} bytes; a config is a few kilobytes"]
    assert reads == [config.MAX_BYTES + 1]
    exact = tmp_path / "exact.yaml"
    exact.write_bytes(b"node: {preload: false}\n".ljust(config.MAX_BYTES, b" "))
    assert config.load(exact).node["preload"] is False


class _Proxy:
    def __init__(self, f, read):
        self._f, self.read = f, read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_text_over_the_limit_is_refused_by_parse():
    assert _problems("#" * (config.MAX_BYTES + 1)) \
        == [f"(top level): the text is larger than {config.MAX_BYTES} bytes; a config is a few kilobytes"]
    assert _problems("#" + "é" * (config.MAX_BYTES // 2)) \
        == [f"(top level): the text is larger than {config.MAX_BYTES} bytes; a config is a few kilobytes"]


def test_bytes_that_are_not_utf8_name_their_offset(tmp_path):
    p = tmp_path / "c.yaml"
    for data, offset, line in [
        (b"node:\n  preload: \xff\n", 17, 2),
        (b"\xfe\xff\x00n\x00o", 0, 1),                        # UTF-16
        (b"cluster:\n  name: caf\xe9\n", 20, 2),            # Latin-1
        (b"a: \xed\xa0\x80\n", 3, 1),                         # an encoded surrogate
    ]:
        p.write_bytes(data)
        (problem,) = _problems(p)
        assert problem.startswith(f"line {line}: not UTF-8: byte 0x{data[offset]:02x} at offset {offset} ("), problem
    p.write_bytes(b"\xef\xbb\xbfnode: {preload: false}\n")        # a UTF-8 byte order mark is fine
    assert config.load(p).node["preload"] is False


@pytest.mark.parametrize("text, needle", [
    ("a: 2020-13-45\n", "cannot construct '2020-13-45': month must be in 1..12"),
    ("a: 2020-01-01T25:00:00\n", "hour must be in 0..23"),
    ("a: " + "9" * 5000 + "\n", "cannot construct '99999999999999999999999999999999999999999999999999999999999...(5002 "
     "chars): Exceeds the limit (4300 digits)"),
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
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: [2020-01-01 10:00:00]}]\n",
     "cluster.kubeadm_patches[0]: patch.a[0]: datetime datetime.datetime(2020, 1, 1, 10, 0) is not plain JSON "
     "(quote it)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: \"\\ud800\"}]\n",
     "cluster.kubeadm_patches[0]: patch.a: '\\ud800' is not valid Unicode (a lone surrogate escape)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, \"\\udfff\": 1}]\n",
     "cluster.kubeadm_patches[0]: patch: key '\\udfff' is not valid Unicode (a lone surrogate escape)"),
    ('cluster:\n  e2e_skip: "\\ud83d\\ude00"\n',
     "cluster.e2e_skip: '\\ud83d\\ude00' is not valid Unicode (a lone surrogate escape)"),
    ('kubernetes:\n  extra_images: ["\\ud800"]\n',
     "kubernetes.extra_images[0]: '\\ud800' is not valid Unicode (a lone surrogate escape)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: {1: b}}]\n",
     "cluster.kubeadm_patches[0]: patch.a: key 1 is not a string (quote it)"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: .nan}]\n",
     "cluster.kubeadm_patches[0]: patch.a: nan is not a finite number"),
    ("cluster:\n  kubeadm_patches: [{kind: ClusterConfiguration, a: 0x" + "f" * 17 + "}]\n",
     "cluster.kubeadm_patches[0]: patch.a: a 68-bit number is too large"),
    ("cluster:\n  name: '" + "x" * 5000 + "'\n",
     "cluster.name: '" + "x" * 79 + "...(5002 chars) is not " + config.NAME_FMT),
    ('"a\\nb": 1\n', "'a\\nb': unknown key (known: kubernetes, cni, base, node, cluster, build)"),
])
def test_hostile_values_are_one_problem_line(text, problem):
    assert _problems(text) == [problem]


@pytest.mark.parametrize("text, tag", [
    ("a: !!python/object:os.system x\n", "!!python/object:os.system"),
    ("a: !!python/object/apply:os.system [echo]\n", "!!python/object/apply:os.system"),
    ("a: !!binary AAAA\n", "!!binary"),
    ("a: !!set {b}\n", "!!set"),
    ("a: !!bool maybe\n", "!!bool"),
    ("a: !!int 1\n", "!!int"),
    ("a: !!timestamp 2020-01-01\n", "!!timestamp"),
    ("a: !local x\n", "!local"),
    ("a: !<tag:example.com,2000:x> x\n", "!<tag:example.com,2000:x>"),
    ("--- !!map\na: 1\n", "!!map"),
])
def test_explicit_tags_are_refused(text, tag):
    line = text.count("\n", 0, text.index("!")) + 1
    assert _problems(text) == [f"line {line}: tags ({tag}) are not supported; write plain values (quote a string)"]


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


# ---------------------------------------------------------------- integer ranges

INTEGER_FIELDS = [(f"{section}.{key}", f) for section, fields in config.SPEC.items()
                  for key, f in fields.items() if f.kind == "integer"]


def test_every_integer_key_has_a_range():
    assert INTEGER_FIELDS
    schema = config.json_schema()["properties"]
    for key, f in INTEGER_FIELDS:
        assert f.minimum is not None and f.maximum is not None, f"{key} needs a minimum and a maximum"
        assert f.minimum <= f.default <= f.maximum, key
        section, name = key.split(".")
        prop = schema[section]["properties"][name]
        assert (prop["minimum"], prop["maximum"]) == (f.minimum, f.maximum), key
        assert config.int_range(key) == (f.minimum, f.maximum)


@pytest.mark.parametrize("key, f", INTEGER_FIELDS, ids=[k for k, _ in INTEGER_FIELDS])
def test_integer_keys_are_checked_against_their_range(key, f):
    section, name = key.split(".")
    for ok in (f.minimum, f.maximum):
        assert config.parse(yaml.safe_dump({section: {name: ok}}), "x.yaml").raw[section][name] == ok
    assert _problems(yaml.safe_dump({section: {name: f.minimum - 1}})) \
        == [f"{key}: {f.minimum - 1} is below the minimum {f.minimum}"]
    assert _problems(yaml.safe_dump({section: {name: f.maximum + 1}})) \
        == [f"{key}: {f.maximum + 1} is above the maximum {f.maximum}"]


def test_the_epoch_fits_a_32_bit_time_t(monkeypatch):
    # file mtimes on ext4 with 128-byte inodes or XFS without bigtime, gzip and ustar headers
    assert config.int_range("build.source_date_epoch") == (0, 2**31 - 1)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    cfg = config.parse("build: {source_date_epoch: 2147483647}", "x.yaml")
    assert cfg.source_date_epoch == 2**31 - 1
    for env, expected in [("0", 0), ("1234", 1234), ("2147483647", 2**31 - 1), ("0001700000000", 1700000000)]:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", env)
        assert cfg.source_date_epoch == expected


@pytest.mark.parametrize("key", ["cluster.name", "cluster", "nope.workers", "cluster.nope", ""])
def test_int_range_is_only_for_integer_keys(key):
    with pytest.raises(KeyError):
        config.int_range(key)


@pytest.mark.parametrize("env, problem", [
    ("", "is not a whole number"),
    ("abc", "is not a whole number"),
    ("1700000000 ", "is not a whole number"),
    (" 1700000000", "is not a whole number"),
    ("+1700000000", "is not a whole number"),
    ("1_700_000_000", "is not a whole number"),
    ("1.7e9", "is not a whole number"),
    ("1700000000.5", "is not a whole number"),
    ("١٧٠٠٠٠٠٠٠٠", "is not a whole number"),          # Arabic-Indic digits: int() takes them
    ("-1", "is out of range"),
    ("2147483648", "is out of range"),
    ("253402300799", "is out of range"),
    ("9" * 5000, "is out of range"),
])
def test_a_malformed_source_date_epoch_is_an_error_not_ignored(monkeypatch, env, problem):
    cfg = config.load(config.DEFAULT_CONFIG)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", env)
    with pytest.raises(InputError) as info:
        cfg.source_date_epoch
    assert info.value.message.startswith("SOURCE_DATE_EPOCH: ")
    assert f"{problem}" in info.value.message and "from 0 to 2147483647" in info.value.message
    assert "\n" not in info.value.message and len(info.value.message) < 200
    assert "date +%s" in info.value.hint


# ---------------------------------------------------------------- validators for task parameters

@pytest.mark.parametrize("value, expected", [
    ("3", 3), ("0", 0), ("10", 10), ("007", 7), ("-0", 0), (3, 3), (0, 0),
])
def test_parse_int_accepts(value, expected):
    assert config.parse_int(value, "--workers", 0, 10) == expected


@pytest.mark.parametrize("value, message", [
    ("abc", "--workers: 'abc' is not a whole number from 0 to 10"),
    ("", "--workers: '' is not a whole number from 0 to 10"),
    (" 3", "--workers: ' 3' is not a whole number from 0 to 10"),
    ("3\n", "--workers: '3\\n' is not a whole number from 0 to 10"),
    ("+3", "--workers: '+3' is not a whole number from 0 to 10"),
    ("1e3", "--workers: '1e3' is not a whole number from 0 to 10"),
    ("3.0", "--workers: '3.0' is not a whole number from 0 to 10"),
    ("1_0", "--workers: '1_0' is not a whole number from 0 to 10"),
    ("٣", "--workers: '٣' is not a whole number from 0 to 10"),
    ("0x3", "--workers: '0x3' is not a whole number from 0 to 10"),
    (None, "--workers: None is not a whole number from 0 to 10"),
    (True, "--workers: True is not a whole number from 0 to 10"),
    (3.0, "--workers: 3.0 is not a whole number from 0 to 10"),
    ("-5", "--workers: '-5' is out of range: use a whole number from 0 to 10"),
    ("11", "--workers: '11' is out of range: use a whole number from 0 to 10"),
    (11, "--workers: 11 is out of range: use a whole number from 0 to 10"),
    ("99999999999999999999", "--workers: '99999999999999999999' is out of range: use a whole number from 0 to 10"),
    ("9" * 100000, "--workers: '" + "9" * 79 + "...(100002 chars) is out of range: use a whole number from 0 to 10"),
    ("0" * 21 + "11", "--workers: '" + "0" * 21 + "11' is out of range: use a whole number from 0 to 10"),
])
def test_parse_int_refuses_with_one_line(value, message):
    with pytest.raises(DindindError) as info:
        config.parse_int(value, "--workers", 0, 10, hint="see doit help cluster:up")
    assert info.value.message == message
    assert info.value.hint == "see doit help cluster:up"
    assert "\n" not in info.value.message


def test_parse_int_uses_the_config_ranges():
    assert config.parse_int("3600", "--wait", *config.int_range("cluster.wait")) == 3600
    with pytest.raises(DindindError, match="from 0 to 3600"):
        config.parse_int("3601", "--wait", *config.int_range("cluster.wait"))
    with pytest.raises(DindindError, match="from 0 to 65535"):
        config.parse_int("65536", "--port", *config.int_range("cluster.api_port"))


@pytest.mark.parametrize("value", ["dindind", "a", "0", "a-b", "k8s-1-31", "a" * 32, "1a"])
def test_check_name_accepts(value):
    assert config.check_name(value) == value


@pytest.mark.parametrize("value", [
    "", "A", "Dindind", "a_b", "a.b", "-a", "a-", "a" * 33, "a\n", "a\nb", "a b", "a\x00", "ä", "ａ",
    "../x", "a/b", None, 3, ["a"],
])
def test_check_name_refuses(value):
    with pytest.raises(DindindError) as info:
        config.check_name(value, "--name")
    assert info.value.message.startswith("invalid --name ")
    assert "\n" not in info.value.message
    assert info.value.hint == f"use {config.NAME_FMT}"


def test_check_name_is_the_config_rule():
    for value in ("ok-1", "Bad", "a" * 33):
        try:
            config.check_name(value)
            by_function = True
        except DindindError:
            by_function = False
        by_config = not any(p.startswith("cluster.name") for p in
                            _problems_or_none(yaml.safe_dump({"cluster": {"name": value}})))
        assert by_function == by_config, value


def _problems_or_none(text):
    try:
        config.parse(text, "x.yaml")
    except ConfigError as exc:
        return exc.problems
    return []


# ---------------------------------------------------------------- fuzzing: Config or ConfigError, nothing else

# Nothing is written into the checkout: no example database, and hypothesis's caches
# (constants of the modules under test, unicode tables) go to the temp dir, not ./.hypothesis
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"dindind-hypothesis-{os.getuid()}")
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _outcome(call):
    """The Config, or the ConfigError's problems, checking what both promise; any other exception fails."""
    try:
        cfg = call()
    except ConfigError as exc:
        assert exc.problems
        for p in exc.problems:      # one printable line each: safe on a terminal, never a traceback on print
            assert isinstance(p, str) and p.isprintable() and len(p) <= 1000, p[:2000]
        exc.render().encode("utf-8")
        return exc.problems
    # what release.py digests and templates write: no dates, sets, bytes, NaN or lone surrogates
    json.dumps(cfg.as_dict(), ensure_ascii=False, allow_nan=False).encode("utf-8")
    for key, f in INTEGER_FIELDS:
        section, name = key.split(".")
        assert f.minimum <= cfg.raw[section][name] <= f.maximum
    config.check_name(cfg.cluster["name"])
    return cfg


@FUZZ
@given(data=st.binary(max_size=4096))
def test_fuzz_load_random_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.yaml"
        p.write_bytes(data)
        _outcome(lambda: config.load(p))


@FUZZ
@given(text=st.text(max_size=2048))
def test_fuzz_parse_random_text(text):
    _outcome(lambda: config.parse(text, "x.yaml", base_dir="/nonexistent"))


KEYS = sorted({s for s in config.SPEC} | {k for fields in config.SPEC.values() for k in fields})
SCALARS = st.one_of(
    st.sampled_from(["~", "null", "yes", "no", "on", "true", "0", "-1", "0x1f", "0o17", "0b101", "1_000", "1:30",
                     "0x" + "f" * 40, "1e400", ".nan", "-.inf", "2020-01-01", "2020-13-45",
                     "2001-12-14t21:59:43.10-05:00",
                     "'quoted'", '"esc\\n\\x00\\x1b[31m"', '"\\ud800"', '"\\U0001F600"', "ClusterConfiguration",
                     "KubeletConfiguration", "sample", "dir", "release", "tgz", "debian", "none", "zstd", "default",
                     "dindind", "10.0.0.0/8", "127.0.0.1", "http://x/y", "--a=b", "v1.2.3"]),
    st.sampled_from(["|\n  block", ">-\n  folded", "=", "<<", "!", "&", "*", "'", '"', "%YAML 1.1", "---", "...",
                     "#", "? ", "- ", ": ", "\t", "\ufeff", "\x85", "\u2028", "\xa0",
                     "!!python/object:os.system echo", "!!python/name:os.system ''", "!!binary AAAA", "!!binary !",
                     "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]", "!!timestamp 2020-99-01", "!!float x",
                     "!!int 12x", "!!int " + "9" * 5000, "!!str 1", "!!bool maybe", "!!null x", "!<tag:x> y",
                     "!<" + "t" * 3000 + "> y", "!local v", "!!map x", "!!seq x"]),
    st.sampled_from(KEYS),
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12).map(json.dumps),
    st.from_regex(r"[a-z0-9 .:/_-]{0,12}", fullmatch=True),
)
ANCHORS = st.sampled_from(["a", "b", "x1"])


def _with_props(node):
    return st.tuples(st.sampled_from(["", "&a ", "&b ", "!!str ", "!!map ", "!!seq ", "!!python/tuple ", "!x "]),
                     st.just(node)).map(lambda t: t[0] + t[1])


YAMLISH = st.recursive(
    st.one_of(SCALARS, ANCHORS.map(lambda a: f"*{a}")),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]").flatmap(_with_props),
        st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), inner), inner), max_size=4)
          .map(lambda kvs: "{" + ", ".join(f"{k}: {v}" for k, v in kvs) + "}").flatmap(_with_props),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: "".join(f"\n- {x}" for x in xs)),
        st.lists(st.tuples(st.sampled_from(KEYS), inner), min_size=1, max_size=4)
          .map(lambda kvs: "".join(f"\n{k}: {v}".replace("\n", "\n  ") for k, v in kvs)),
    ),
    max_leaves=30,
)


@FUZZ
@given(doc=st.lists(st.tuples(st.sampled_from(list(config.SPEC) + ["nope"]), YAMLISH), max_size=6),
       head=st.sampled_from(["", "---\n", "%YAML 1.1\n---\n", "# c\n", "\ufeff"]))
def test_fuzz_parse_yaml_from_a_grammar(doc, head):
    text = head + "".join(f"{section}:{' ' if not v.startswith(chr(10)) else ''}{v.replace(chr(10), chr(10) + '  ')}\n"
                          for section, v in doc)
    _outcome(lambda: config.parse(text, "x.yaml", base_dir="/nonexistent"))


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**40, max_value=2**40), st.floats(),
              st.text(max_size=20), st.dates(), st.binary(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3)),
    max_leaves=12,
)


def _value_for(f):
    """A value for field ``f``: often a plausible one, sometimes anything."""
    plausible = [st.just(f.default)]
    if f.enum:
        plausible.append(st.sampled_from(f.enum))
    if f.kind == "integer":
        plausible.append(st.integers(min_value=f.minimum - 2, max_value=f.maximum + 2))
        plausible.append(st.integers())
    if f.kind == "string" and f.pattern:
        plausible.append(st.from_regex(f.pattern, fullmatch=True).filter(lambda s: len(s) < 200))
    if f.kind == "array" and f.items.kind == "object":
        plausible.append(st.lists(st.dictionaries(st.sampled_from(["kind", "a", "b"]), JSONISH, max_size=3)
                                  .map(lambda d: {"kind": "ClusterConfiguration", **d}), max_size=2))
    if f.kind == "array" and f.items.pattern:
        plausible.append(st.lists(st.from_regex(f.items.pattern, fullmatch=True), max_size=3))
    return st.one_of(*plausible, JSONISH)


CONFIG_DICTS = st.fixed_dictionaries({}, optional={
    section: st.fixed_dictionaries({}, optional={key: _value_for(f) for key, f in fields.items()})
    for section, fields in config.SPEC.items()
})


@FUZZ
@given(data=CONFIG_DICTS, extra=st.dictionaries(st.sampled_from(["nope", "cluster"]), JSONISH, max_size=1))
def test_fuzz_parse_valid_shaped_dicts(data, extra):
    text = yaml.safe_dump({**data, **extra}, allow_unicode=True)
    _outcome(lambda: config.parse(text, "x.yaml", base_dir="/nonexistent"))


@settings(FUZZ, max_examples=30)
@given(size=st.one_of(st.integers(min_value=0, max_value=3 * config.MAX_BYTES),
                      st.integers(min_value=config.MAX_BYTES - 2, max_value=config.MAX_BYTES + 2)),
       fill=st.sampled_from([b"#", b" ", b"\n", b"a"]))
def test_fuzz_the_size_limit_holds_for_any_size(size, fill):
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "c.yaml"
        p.write_bytes(fill * size)
        out = _outcome(lambda: config.load(p))
    too_big = [f"(top level): the file is larger than {config.MAX_BYTES} bytes; a config is a few kilobytes"]
    assert (out == too_big) == (size > config.MAX_BYTES)


# ---------------------------------------------------------------- python -m dindind check

# what the old loader turned into a traceback, a hang or a wrong answer (missing files, lists and
# duplicate keys were always one clear error: see the invalid-*.yaml fixtures)
CHECK_CASES = {
    "huge": (b"#" * 5_000_000, f"the file is larger than {config.MAX_BYTES} bytes"),
    "latin1": (b"cluster:\n  name: caf\xe9\n", "line 2: not UTF-8: byte 0xe9 at offset 20"),
    "bomb": (BOMB.encode(), "line 2: aliases (*a) are not supported"),
    "deep": (b"[" * 10000 + b"]" * 10000, "line 1: nested deeper than 20 levels"),
    "tag": (b"cluster: !!python/object/apply:os.system [echo hi]\n", "tags (!!python/object/apply:os.system)"),
    "tab": (b"cluster:\n\tname: x\n", "found character '\\t' that cannot start any token   in \"c.yaml\", line 2"),
    "range": (b"build: {source_date_epoch: 99999999999}\n",
              "build.source_date_epoch: 99999999999 is above the maximum"),
}


@pytest.mark.parametrize("case", CHECK_CASES)
def test_check_prints_one_error_without_a_traceback(tmp_path, capsys, monkeypatch, case):
    from dindind.__main__ import main

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    data, needle = CHECK_CASES[case]
    p = tmp_path / "c.yaml"
    p.write_bytes(data)
    assert main(["check", str(p)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"ERROR: invalid config {p}: 1 problem(s)\n  - ") and needle in err, err
    assert len(err.splitlines()) == 3 and "Traceback" not in err


def test_check_reports_a_malformed_source_date_epoch(capsys, monkeypatch):
    from dindind.__main__ import main

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert main(["check", str(config.DEFAULT_CONFIG)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "ERROR: SOURCE_DATE_EPOCH: 'yesterday' is not a whole number from 0 to 2147483647",
        "hint: set it to seconds since 1970 (date +%s), or unset it to use build.source_date_epoch"]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert main(["check", str(config.DEFAULT_CONFIG)]) == 0
