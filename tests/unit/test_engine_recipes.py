"""The engine images of the engine matrix (tests/enginematrix.py): what their recipes pin."""

import re

import pytest

import enginematrix as em
from dindind.base import config

BASE = "dindind/base:trixie-000000000000"
MIRROR = "http://deb.debian.org/debian"


@pytest.mark.parametrize("key", sorted(em.ENGINES))
def test_every_package_is_fetched_at_its_version_and_checked_by_sha256(key):
    spec = em.ENGINES[key]
    text = em.dockerfile(spec, BASE, MIRROR)
    download = re.search(r"apt-get download -qq (.*) \\", text).group(1).split()
    assert download == [f"{d.name}={d.version}" for d in spec.debs]
    sums = re.search(r"printf '%s  %s\\n' (.*) \| sha256sum -c --strict", text).group(1).split()
    assert sums == [x for d in spec.debs for x in (d.sha256, d.file)]
    assert all(re.fullmatch(r"[0-9a-f]{64}", d.sha256) for d in spec.debs)
    install = re.search(r"apt-get install -y -qq --no-install-recommends (\./.*) \\", text).group(1).split()
    assert install == [f"./{d.file}" for d in spec.debs]
    assert spec.debs[0].name == "docker.io" and spec.debs[0].version.startswith(spec.server)
    assert text.startswith("# ") and f"FROM {BASE}\n" in text


def test_forky_engine_takes_the_nodes_containerd_and_runc_pins():
    node = config.load(config.DEFAULT_CONFIG).node
    pinned = {d.name: (d.version, d.sha256) for d in em.ENGINES["28"].debs}
    for name in ("containerd", "runc"):
        assert pinned[name] == (node[f"{name}_version"], node[f"{name}_sha256"])


def test_the_extra_suite_is_added_at_low_priority_and_removed_again():
    text = em.dockerfile(em.ENGINES["28"], BASE, MIRROR)
    assert f"check-valid-until=no] {MIRROR} forky main' > /etc/apt/sources.list.d/dindind-engine.list" in text
    assert "Pin: release n=forky\\nPin-Priority: 100" in text
    assert "rm -rf /tmp/engine /etc/apt/sources.list.d/dindind-engine.list /etc/apt/preferences.d/dindind-engine" in text
    assert "forky" not in em.dockerfile(em.ENGINES["26"], BASE, MIRROR)


def test_an_epoch_is_quoted_in_the_file_name_as_apt_writes_it():
    assert em.Deb("x", "1:2.0-1", "0" * 64).file == "x_1%3a2.0-1_amd64.deb"
