"""fsutil: atomic writes and stale-temp cleanup."""

import os

import pytest

from dindind import fsutil


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "out.bin"
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list((tmp_path / "a").iterdir()) == []


def test_write_if_changed_keeps_mtime_on_same_content(tmp_path):
    p = tmp_path / "f"
    assert fsutil.write_if_changed(p, b"x") is True
    os.utime(p, (1, 1))
    assert fsutil.write_if_changed(p, b"x") is False
    assert p.stat().st_mtime == 1
    assert fsutil.write_if_changed(p, b"y") is True


def test_remove_stale_removes_only_temporaries(tmp_path):
    keep = [tmp_path / ".doit.db", tmp_path / ".lock", tmp_path / "images" / "node.json",
            tmp_path / "debs" / "kubelet.deb"]
    stale = [tmp_path / "images" / ".node-image.tar.zst.abc123.tmp", tmp_path / "debs" / ".kubelet.deb.x.deb.tmp"]
    stale_dirs = [tmp_path / "cni" / ".cni.k2j3.tmp", tmp_path / "debs" / ".kubelet.staging.abc", tmp_path / ".kubernetes.old"]
    for p in keep + stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for d in stale_dirs:
        (d / "inner").mkdir(parents=True)
        (d / "inner" / "f").write_text("x")
    removed = fsutil.remove_stale(tmp_path)
    assert sorted(removed) == sorted(str(p) for p in stale + stale_dirs)
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in stale + stale_dirs)


def test_stamp_is_stale_when_its_image_or_a_tag_is_gone(tmp_path, monkeypatch):
    import json

    from dindind import engine

    images = {"sha256:abc": "sha256:abc", "repo/node:v1": "sha256:abc"}
    monkeypatch.setattr(engine, "image_id", lambda ref: images.get(ref))
    stamp = tmp_path / "node.json"
    stamp.write_text(json.dumps({"id": "sha256:abc", "tags": ["repo/node:v1"]}))
    assert engine.stamp_uptodate(stamp) is True
    images["repo/node:v1"] = "sha256:other"          # retagged behind dindind's back
    assert engine.stamp_uptodate(stamp) is False
    del images["repo/node:v1"]                        # tag removed
    assert engine.stamp_uptodate(stamp) is False
    assert engine.stamp_uptodate(tmp_path / "missing.json") is False
