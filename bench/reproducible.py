#!/usr/bin/env python3
"""Which of dindind's artifacts are bit-identical across two clean builds? Not a test.

    .venv/bin/python bench/reproducible.py                 # two full builds, a fresh debootstrap in each
    .venv/bin/python bench/reproducible.py --shared-base   # both on one base image (faster; base not measured)
    .venv/bin/python bench/reproducible.py --keep          # keep the two project copies and the JSON results

Two fresh copies of the project, in different folders, each run `doit build` one
after the other (minutes apart, so on different wall-clock times) with the same
SOURCE_DATE_EPOCH and DINDIND_NO_CACHE=1: no docker build step comes from the layer
cache, and the base image is debootstrapped again for the second build (its own
repository, dindind-test/repro-base), unless --shared-base. Then it compares

  - the .debs, the rendered templates (artifacts/context), the generated sample
    Kubernetes tree, the CNI plugins and the saved node archive, byte for byte;
  - the base, node and cluster images layer by layer: `docker save` of both builds,
    the digest of each layer tar, and for a layer that differs, which files differ
    and how (content, or metadata only: mtime, mode, owner; present in one only).

Prints a Markdown table and the details; removes every image it built.
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import copy_project  # noqa: E402  (one project copier for tests and benchmarks)
sys.path.insert(0, str(ROOT))
from dindind.docker import images as docker_images  # noqa: E402
from dindind.base import fsutil  # noqa: E402

REPOS = {"base": "dindind-test/repro-base", "node": "dindind-test/repro-node", "cluster": "dindind-test/repro-cluster"}
EPOCH = 1700000000
CHUNK = 1 << 20
FILE_GROUPS = (                      # (label, folder under artifacts/, glob)
    (".debs", "debs", "*.deb"),
    ("rendered templates (artifacts/context)", "context", "**/*"),
    ("generated sample Kubernetes tree", "kubernetes/sample", "**/*"),
    ("CNI plugins", "cni", "**/*"),
    ("node image archive (node-image.tar.zst)", "images", "node-image.tar*"),
)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def doit_exe():
    exe = Path(sys.executable).parent / "doit"
    return str(exe) if exe.exists() else (shutil.which("doit") or "doit")


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {r.stderr.strip()}")
    return r




def build(project, shared_base):
    cfg = project / "repro.yaml"
    text = f"node:\n  repository: {REPOS['node']}\ncluster:\n  repository: {REPOS['cluster']}\n"
    if not shared_base:
        text += f"base:\n  repository: {REPOS['base']}\n"
    cfg.write_text(text)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH), DINDIND_NO_CACHE="1")
    env.pop("DINDIND_CONFIG", None)
    t0 = time.monotonic()
    p = subprocess.run([doit_exe(), f"config={cfg}", "build"], cwd=project, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise SystemExit(f"doit build in {project} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    cached = sum(1 for line in p.stdout.splitlines() if "Using cache" in line)
    log(f"  built {project} in {time.monotonic() - t0:.0f} s ({cached} steps from the cache)")
    return {n: json.loads((project / "artifacts" / "images" / f"{n}.json").read_text()) for n in REPOS}


# ------------------------------------------------------------------ files

def file_digests(project):
    art = project / "artifacts"
    out = {}
    for label, folder, pattern in FILE_GROUPS:
        files = sorted(p for p in (art / folder).glob(pattern) if p.is_file())
        out[label] = {p.relative_to(art).as_posix(): fsutil.sha256_file(p) for p in files}
    return out


# ------------------------------------------------------------------ image layers

class _Chunks:
    def __init__(self, it):
        self._it, self._buf = iter(it), b""

    def read(self, n=-1):
        while n < 0 or len(self._buf) < n:
            chunk = next(self._it, None)
            if chunk is None:
                break
            self._buf += chunk
        out, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return out


class _Hashing:
    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.sha.update(data)
        return data


def _entries(f):
    """(digest of the layer tar, {path: [type, mode, uid, gid, mtime, size, sha256 or link]})."""
    h = _Hashing(f)
    entries = {}
    try:
        with tarfile.open(fileobj=h, mode="r|", bufsize=CHUNK) as tf:
            for m in tf:
                what = m.linkname
                if m.isreg():
                    s = hashlib.sha256()
                    data = tf.extractfile(m)
                    for block in iter(lambda: data.read(CHUNK), b""):
                        s.update(block)
                    what = s.hexdigest()
                entries[str(PurePosixPath("/", m.name))] = [m.type.decode(), m.mode, m.uid, m.gid, int(m.mtime),
                                                            m.size, what]
    except tarfile.ReadError:
        pass                        # an empty layer
    while h.read(CHUNK):
        pass
    return "sha256:" + h.sha.hexdigest(), entries


def image_layers(ref):
    """[{diff_id, created_by, entries}] of each layer of ``ref``, from a streamed docker save."""
    layers, small, links = {}, {}, {}
    with tarfile.open(fileobj=_Chunks(docker_images.save_chunks(ref)), mode="r|", bufsize=CHUNK) as tf:
        for m in tf:
            if m.issym():
                links[m.name] = str(PurePosixPath(m.name).parent / m.linkname)
            elif m.isreg() and m.name.endswith("/layer.tar"):
                layers[m.name] = _entries(tf.extractfile(m))
            elif m.isreg() and m.name.endswith(".json"):
                small[m.name] = tf.extractfile(m).read()
    manifest = json.loads(small["manifest.json"])[0]
    config = json.loads(small[manifest["Config"]])
    history = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
    out = []
    for i, name in enumerate(manifest["Layers"]):
        while name in links:
            name = os.path.normpath(links[name])
        digest, entries = layers[name]
        assert digest == config["rootfs"]["diff_ids"][i], f"{ref}: layer {i + 1} digest mismatch"
        out.append({"diff_id": digest, "created_by": history[i] if len(history) == len(manifest["Layers"]) else "",
                    "entries": entries})
    return out


def _step(created_by):
    text = created_by.replace("/bin/sh -c #(nop) ", "").replace("/bin/sh -c ", "RUN ").strip()
    return " ".join(text.split())[:60]


FIELDS = ("type", "mode", "uid", "gid", "mtime", "size", "content")


def compare_layer(a, b, examples=3):
    """Why two layers differ: counts of differing files by kind, with example paths."""
    ea, eb = a["entries"], b["entries"]
    only_a, only_b = sorted(set(ea) - set(eb)), sorted(set(eb) - set(ea))
    content, meta = [], {}
    for path in sorted(set(ea) & set(eb)):
        x, y = ea[path], eb[path]
        if x == y:
            continue
        if x[0] != y[0] or x[5] != y[5] or x[6] != y[6]:
            content.append(path)
        else:
            for name, u, v in zip(FIELDS, x, y):
                if u != v:
                    meta.setdefault(name, []).append(path)
    reasons = []
    if content:
        reasons.append(f"{len(content)} file(s) differ in content ({', '.join(content[:examples])})")
    for name, paths in sorted(meta.items()):
        reasons.append(f"{len(paths)} differ in {name} only ({', '.join(paths[:examples])})")
    if only_a or only_b:
        reasons.append(f"{len(only_a)} only in the first build, {len(only_b)} only in the second "
                       f"({', '.join((only_a + only_b)[:examples])})")
    if not reasons:
        reasons.append("same files and metadata; the tar bytes differ (entry order or headers)")
    return {"files": len(ea), "content": content, "meta": {k: len(v) for k, v in meta.items()},
            "only_a": only_a, "only_b": only_b, "why": "; ".join(reasons)}


# ------------------------------------------------------------------ main

def measure(project, shared_base):
    stamps = build(project, shared_base)
    result = {"files": file_digests(project), "images": {}, "ids": {}}
    for name in REPOS:
        if shared_base and name == "base":
            continue
        ref = stamps[name]["tags"][0]
        log(f"  docker save {ref}: reading every layer")
        result["images"][name] = image_layers(ref)
        result["ids"][name] = stamps[name]["id"]
    return result, stamps


def remove_images(stamps, shared_base):
    for name in ("cluster", "node", "base"):
        if shared_base and name == "base":
            continue
        for ref in stamps[name]["tags"]:
            if ref.startswith("dindind-test/"):
                docker("rmi", ref, check=False)


def report(a, b, shared_base):
    rows = []
    for label, files in a["files"].items():
        other = b["files"].get(label, {})
        same = [p for p in files if other.get(p) == files[p]]
        diff = sorted(set(files) ^ set(other)) + [p for p in files if p in other and other[p] != files[p]]
        rows.append((f"{label} ({len(files)} file{'s' if len(files) != 1 else ''})",
                     "yes" if not diff and files else "no",
                     "" if not diff else f"{len(diff)} differ: {', '.join(diff[:4])}"
                     + (f" ({len(same)} identical)" if same else "")))
    details = []
    for name in a["images"]:
        la, lb = a["images"][name], b["images"][name]
        if len(la) != len(lb):
            rows.append((f"{name} image", "no", f"{len(la)} vs {len(lb)} layers"))
            continue
        for i, (x, y) in enumerate(zip(la, lb), 1):
            same = x["diff_id"] == y["diff_id"]
            why = "" if same else compare_layer(x, y)["why"]
            rows.append((f"{name} layer {i}: `{_step(x['created_by']) or 'docker import (debootstrap)'}`",
                         "yes" if same else "no", why))
            if why:
                details.append(f"{name} layer {i} ({_step(x['created_by'])}): {why}")
        rows.append((f"{name} image id", "yes" if a["ids"][name] == b["ids"][name] else "no",
                     "" if a["ids"][name] == b["ids"][name] else
                     "the image config records the build time (`created`); the classic builder ignores "
                     "SOURCE_DATE_EPOCH"))
    print(f"\nTwo clean builds, SOURCE_DATE_EPOCH={EPOCH}, no layer cache"
          + (", one shared base image" if shared_base else ", a fresh debootstrap each") + ":\n")
    print("| artifact | identical | why not |\n|---|---|---|")
    for what, same, why in rows:
        print(f"| {what} | {same} | {why.replace('|', '/')} |")
    if details:
        print("\nDetails of the layers that differ:\n")
        for line in details:
            print(f"- {line}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared-base", action="store_true", help="use one base image for both builds")
    ap.add_argument("--keep", action="store_true", help="keep the project copies and the JSON results")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dindind-repro-"))
    results, all_stamps = [], []
    try:
        snapshot = copy_project(work / "snapshot")          # one source for both: the tree may change meanwhile
        for i, where in enumerate((work / "one" / "project", work / "elsewhere" / "two" / "project"), 1):
            log(f"build {i} of 2 in {where}")
            project = copy_project(where, snapshot)
            result, stamps = measure(project, args.shared_base)
            all_stamps.append(stamps)
            results.append(result)
            remove_images(stamps, args.shared_base)      # the second build must not find the first's
            (work / f"result-{i}.json").write_text(json.dumps(result))
        report(results[0], results[1], args.shared_base)
    finally:
        for stamps in all_stamps:
            remove_images(stamps, args.shared_base)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
