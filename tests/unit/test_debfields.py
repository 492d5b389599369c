"""dindind.build.debfields: the one reader of Debian control fields."""

import subprocess

import pytest

from dindind.base.errors import InputError
from dindind.build import debfields


def _deb(tmp_path, control):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(control)
    out = tmp_path / "pkg.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, out], check=True, capture_output=True)
    return out


CONTROL = "Package: demo\nVersion: 1:2.0-1\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: d\n long\n"


def test_read_one_and_several_fields(tmp_path):
    deb = _deb(tmp_path, CONTROL)
    assert debfields.read(deb, "Version") == {"Version": "1:2.0-1"}
    assert debfields.read(deb, "Package", "Version", "Architecture") == \
        {"Package": "demo", "Version": "1:2.0-1", "Architecture": "amd64"}


def test_a_missing_field_and_a_broken_deb_are_named(tmp_path):
    deb = _deb(tmp_path, CONTROL.replace("Architecture: amd64\n", "Architecture: all\n"))
    with pytest.raises(InputError, match="no Source") as err:
        debfields.read(deb, "Package", "Source", hint="rebuild it")
    assert str(deb) in err.value.message and err.value.hint == "rebuild it"
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"!<arch>\nnot really")
    with pytest.raises(InputError, match="not a valid .deb") as err:
        debfields.read(bad, "Version")
    assert str(bad) in err.value.message


def test_paragraphs_of_a_status_file():
    text = ("Package: a\nStatus: install ok installed\nDescription: x\n more\n .\n last\n\n"
            "Package: b\nVersion: 1\n\n\n")
    assert debfields.paragraphs(text) == [
        {"Package": "a", "Status": "install ok installed", "Description": "x\nmore\n.\nlast"},
        {"Package": "b", "Version": "1"}]
