#!/usr/bin/env python3
"""Benchmark `kubernetes.source: checkout` on a real Kubernetes checkout: prints figures, asserts nothing.

    .venv/bin/python bench/checkout.py [--version v1.37.2] [--checkout DIR] [--assemble-only] [--keep]

There is no GitHub here, so the checkout is assembled offline from the Go
module proxy, laid out as a clone of kubernetes/kubernetes at that tag is:
  - k8s.io/kubernetes@<version> (its module zip leaves out staging/ and
    vendor/, which hold other modules);
  - each staging module that upstream's go.mod replaces with
    ./staging/src/k8s.io/X, at its published v0.<minor>.<patch>, under
    staging/src/k8s.io/X;
  - go.work: the zip's own (upstream's), or else upstream's form (the
    go.mod's go and godebug lines, `use .` and every staging module); a
    staging module the proxy does not serve (sample-*: nothing built needs
    them) is left out of it and named;
  - vendor/ by `go work vendor`, as upstream's hack/update-vendor.sh makes it
    (upstream commits vendor/, so a clone builds in vendor mode);
  - a git repository with one commit of the whole tree (a clone has .git; the
    build stamps the commit HEAD names). Files 0644, folders 0755.
--checkout DIR assembles into DIR (kept), or reuses DIR when it is already
assembled; --assemble-only stops there.

Then, in a throwaway project copy (`dindind-bench-checkout/*` repositories),
with Go's caches as they are:
  1. the first `doit build` from the checkout;
  2. a no-op `doit build`;
  3. one string literal edited in pkg/kubelet, `doit build`;
  4. one string literal edited in staging k8s.io/apimachinery, `doit build`.
For each: wall time, the tasks doit ran and how long each took (from when
doit printed its start line to the next one), and which files under artifacts/ changed (binaries, image archives,
debs, image stamps), plus which binaries Go wrote or touched. The checkout's tree
(paths, bytes, modes, mtimes, .git included) is hashed before and after every
build: a change is printed as a FAILURE line. After the first build the
binaries' version output is printed (kubelet --version, kubectl and kubeadm
version), and checked for `$Format` and the checkout's HEAD commit.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import copy_project, executed  # noqa: E402
from dindind.base.errors import InputError  # noqa: E402
from dindind.build.sources import gobuild  # noqa: E402

DOIT = str(Path(sys.executable).parent / "doit")
REPOS = {"node": "dindind-bench-checkout/node", "cluster": "dindind-bench-checkout/cluster"}
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
#: (file in the checkout, string literal, its replacement): a semantic edit, not a comment
EDITS = {
    "kubelet": ("pkg/kubelet/kubelet.go", '"Starting kubelet main sync loop"',
                '"Starting kubelet main sync loop (bench edit)"'),
    "apimachinery": ("staging/src/k8s.io/apimachinery/pkg/util/runtime/runtime.go",
                     '"Observed a panic", "panic", r,', '"Observed a panic (bench edit)", "panic", r,'),
}
FAILURES = []


def say(msg=""):
    print(msg, flush=True)


def fail(msg):
    FAILURES.append(msg)
    say(f"FAILURE: {msg}")


# ---------------------------------------------------------------- the checkout

def _copy_module(src, dst):
    """A module from Go's (read-only) module cache, as a clone would have it: files 0644, folders 0755."""
    shutil.copytree(src, dst, dirs_exist_ok=True, copy_function=shutil.copyfile)
    for d, dirs, files in os.walk(dst):
        os.chmod(d, 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)


def upstream_gowork(gomod, staging):
    """go.work as upstream's hack/update-vendor.sh writes it (pure)."""
    lines = ["// This is a generated file. Do not edit directly.", "", f"go {gomod['go']}", ""]
    if gomod["godebug"]:
        lines += [f"godebug {g}" for g in gomod["godebug"]] + [""]
    lines += ["use ("] + ["\t."] + [f"\t./staging/src/{m}" for m in sorted(staging)] + [")"]
    return "\n".join(lines) + "\n"


def assemble(dest, version, log):
    """Assemble a Kubernetes checkout at ``version`` into ``dest`` (see the module doc); return HEAD."""
    minor = gobuild.check_version(version)
    local = f"v0.{minor}.{version.split('.')[2]}"
    env = gobuild.go_env("-mod=mod -buildvcs=false")
    t = time.monotonic()
    info = gobuild.mod_download(gobuild.K8S_MODULE, version, env, log)
    kdir = Path(info["Dir"])
    gomod = gobuild.parse_gomod((kdir / "go.mod").read_text())
    replaced = [old for old, _, new, newv in gomod["replace"] if newv is None and new == f"./staging/src/{old}"]
    zip_work = (kdir / "go.work").read_text() if (kdir / "go.work").is_file() else None
    staging = re.findall(r"(?m)^\s*\./staging/src/(\S+)\s*$", zip_work) if zip_work else replaced
    say(f"  {gobuild.K8S_MODULE}@{version}: go.work in the zip: {zip_work is not None}; "
        f"vendor/ in the zip: {sorted(p.name for p in (kdir / 'vendor').iterdir()) if (kdir / 'vendor').is_dir() else '-'}; "
        f"{len(staging)} staging modules (go.mod replaces {len(replaced)}"
        f"{'' if set(replaced) == set(staging) else ', not the same set'})")
    dest.mkdir(parents=True)
    _copy_module(kdir, dest)
    missing = []
    for mod in staging:
        try:
            _copy_module(Path(gobuild.mod_download(mod, local, env, log)["Dir"]), dest / "staging" / "src" / mod)
        except InputError:
            missing.append(mod)
    say(f"  module download and copy: {time.monotonic() - t:.1f} s")
    if missing:     # the proxy here does not serve them; nothing the build needs requires them
        say(f"  not served by the Go module proxy, left out of go.work: {' '.join(missing)}")
    work = zip_work or upstream_gowork(gomod, staging)
    for mod in missing:
        work = re.sub(rf"(?m)^\s*\./staging/src/{re.escape(mod)}\s*\n", "", work)
    (dest / "go.work").write_text(work)
    t = time.monotonic()
    gobuild.run_go(["go", "work", "vendor"], cwd=dest, log=log, what="go work vendor",
                   env={**env, "GOWORK": str(dest / "go.work")})
    say(f"  go work vendor: {time.monotonic() - t:.1f} s "
        f"(go.work.sum written: {(dest / 'go.work.sum').is_file()})")
    commit = (json.loads(Path(info["Info"]).read_text()).get("Origin") or {}).get("Hash")
    git = {**os.environ, **GIT_ENV}
    for argv in (["git", "init", "-q", "-b", "master"], ["git", "-c", "core.safecrlf=false", "add", "-A"],
                 ["git", "-c", "gc.auto=0", "commit", "-q", "-m",
                  f"Kubernetes {version}, assembled from the Go module proxy"],
                 ["git", "gc", "-q"]):      # packed, as a clone is; and no auto gc later in the background
        subprocess.run(argv, cwd=dest, env=git, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, env=git, check=True,
                          stdout=subprocess.PIPE, text=True).stdout.strip()
    say(f"  git: HEAD {head} (upstream's commit of {version}: "
        f"{commit or 'not in the proxy .info, so it cannot be had here'})")
    return head


def snapshot(root):
    """{relative path: (kind, mode, size, mtime_ns, sha256 or link target)} of every entry under ``root``."""
    snap = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                snap[rel] = ("link", 0, 0, st.st_mtime_ns, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                snap[rel] = ("dir", st.st_mode, 0, st.st_mtime_ns, "")
            else:
                snap[rel] = ("file", st.st_mode, st.st_size, st.st_mtime_ns, _sha256(p))
    return snap


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_unchanged(before, after, when):
    if before == after:
        say(f"  checkout unchanged by the build ({len(after)} entries hashed)")
        return
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    fail(f"the build {when} changed the checkout: {len(changed)} entries, e.g. {changed[:10]}")


def edit(src, which):
    rel, old, new = EDITS[which]
    path = src / rel
    text = path.read_text()
    if text.count(old) != 1:
        sys.exit(f"{rel} holds {old} {text.count(old)} times, not once: pick another literal in EDITS")
    path.write_text(text.replace(old, new))
    return rel


# ---------------------------------------------------------------- the project

class Artifacts:
    """sha256 of every file under artifacts/ (cached by size and mtime), to tell what a build changed."""

    SKIP = (".doit.db", ".lock", "logs/", "tmp/", "context/", ".build.log")

    def __init__(self, project):
        self.root = project / "artifacts"
        self.cache = {}

    def digests(self):
        out = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if not p.is_file() or p.is_symlink() or any(s in rel for s in self.SKIP):
                continue
            st = p.stat()
            key = (rel, st.st_size, st.st_mtime_ns)
            if key not in self.cache:
                self.cache[key] = _sha256(p)
            out[rel] = (self.cache[key], st.st_mtime_ns)
        return out


def build(project, cfg, arts, label):
    before = arts.digests()
    t0 = time.time()
    p = subprocess.Popen([DOIT, f"config={cfg}", "build"], cwd=project, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = [(time.time(), line) for line in p.stdout]      # doit prints a line as each task starts
    p.wait()
    wall = time.time() - t0
    out = "".join(line for _, line in lines)
    if p.returncode:
        sys.exit(f"doit build ({label}) failed:\n{out[-4000:]}")
    after = arts.digests()
    starts = [(t, line[3:].strip()) for t, line in lines if line.startswith(".  ")]
    took = {name: (starts[i + 1][0] if i + 1 < len(starts) else t0 + wall) - t
            for i, (t, name) in enumerate(starts)}
    go_part = took.get("build:kubernetes", 0.0)
    tasks = executed(out)
    changed = sorted(k for k in after if before.get(k, (None,))[0] != after[k][0])
    touched = sorted(k for k in after if k in before and before[k] == (after[k][0], before[k][1])
                     and after[k][1] != before[k][1])
    relinked = sorted((after[k][1] / 1e9 - t0, k.rsplit("/", 1)[1]) for k in after if "/.work/bin/" in k
                      and (k not in before or before[k][1] != after[k][1]))
    relinked = [f"{name} (+{at:.0f} s)" for at, name in relinked]
    say(f"\n== {label}: {wall:.1f} s, of which build:kubernetes {go_part:.1f} s")
    say(f"  tasks run ({len(tasks)}): " + (", ".join(f"{n} {took[n]:.0f} s" for n in tasks) or "-"))
    say(f"  binaries Go wrote or touched (.work/bin, mtime changed; Go touches an up-to-date output), "
        f"in order: {', '.join(relinked) or '-'}")
    groups = {"published tree": "kubernetes/checkout-", "debs": "debs/", "image stamps": "images/",
              "e2e images": "kubernetes/e2e-images/"}
    for name, prefix in groups.items():
        hit = [k for k in changed if k.startswith(prefix) and "/.work/" not in k]
        say(f"  {name} changed ({len(hit)}): {' '.join(_short(k) for k in hit) or '-'}")
    rest = [k for k in changed if not any(k.startswith(p) for p in groups.values())]
    say(f"  other artifacts changed ({len(rest)}): {' '.join(rest[:20]) or '-'}")
    if touched:
        say(f"  same bytes, new mtime ({len(touched)}): {' '.join(_short(k) for k in touched[:20])}")
    return {"wall": wall, "go": go_part, "tasks": tasks, "changed": changed, "relinked": relinked}


def _short(rel):
    return re.sub(r"^kubernetes/checkout-[^/]+/kubernetes/", "", rel)


def versions(project, head, version):
    """Print what the built binaries say about their version; FAILURE lines for $Format or a wrong commit."""
    sbin = next((project / "artifacts" / "kubernetes").glob("checkout-*/kubernetes/server/bin"))
    outs = {}
    for name, argv in (("kubelet", ["--version"]), ("kubectl", ["version", "--client", "-o", "json"]),
                       ("kubeadm", ["version", "-o", "json"])):
        p = subprocess.run([sbin / name, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outs[name] = p.stdout.strip()
    say(f"  kubelet --version: {outs['kubelet']}")
    for name in ("kubectl", "kubeadm"):
        try:
            v = json.loads(outs[name])["clientVersion"]
        except (ValueError, KeyError):
            fail(f"{name} version printed no JSON: {outs[name][:300]}")
            continue
        say(f"  {name} version: " + ", ".join(f"{k}={v.get(k)!r}" for k in
                                                ("gitVersion", "gitCommit", "gitTreeState", "buildDate")))
        if v.get("gitCommit") != head:
            fail(f"{name} reports commit {v.get('gitCommit')!r}, the checkout's HEAD is {head}")
        if v.get("gitVersion") != version:
            fail(f"{name} reports {v.get('gitVersion')!r}, not {version}")
    if outs["kubelet"] != f"Kubernetes {version}":
        fail(f"kubelet --version printed {outs['kubelet']!r}, not 'Kubernetes {version}'")
    if any("$Format" in o for o in outs.values()):
        fail("a binary prints $Format (version ldflags missing)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", default="v1.37.2")
    ap.add_argument("--checkout", type=Path, help="assemble into (or reuse) this folder; kept")
    ap.add_argument("--assemble-only", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and the images")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dindind-bench-checkout-"))
    stamps = []
    try:
        src = (a.checkout or work / "kubernetes").resolve()
        log = work / "assemble.log"
        if (src / ".git").is_dir():
            say(f"checkout: {src} (already assembled)")
        else:
            say(f"assembling Kubernetes {a.version} into {src}")
            assemble(src, a.version, log)
        git = {**os.environ, **GIT_ENV, "GIT_OPTIONAL_LOCKS": "0"}
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, env=git, check=True,
                              stdout=subprocess.PIPE, text=True).stdout.strip()
        t = time.monotonic()
        snap = snapshot(src)
        say(f"checkout tree: {len(snap)} entries, "
            f"{sum(v[2] for v in snap.values()) / 1e9:.2f} GB, hashed in {time.monotonic() - t:.1f} s")
        if a.assemble_only:
            return
        project = copy_project(work / "project")
        cfg = project / "checkout.yaml"
        cfg.write_text(f"kubernetes:\n  source: checkout\n  path: {src}\n  version: {a.version}\n"
                       f"node:\n  repository: {REPOS['node']}\ncluster:\n  repository: {REPOS['cluster']}\n")
        stamps = [project / "artifacts" / "images" / f"{n}.json" for n in ("node", "cluster")]
        arts = Artifacts(project)
        results = {}
        results["first"] = build(project, cfg, arts, "first build from the checkout")
        check_unchanged(snap, snapshot(src), "first")
        versions(project, head, a.version)
        results["noop"] = build(project, cfg, arts, "no-op rebuild")
        check_unchanged(snap, snapshot(src), "no-op")
        for which in EDITS:
            rel = edit(src, which)
            snap = snapshot(src)
            results[which] = build(project, cfg, arts, f"one edited file: {rel}")
            check_unchanged(snap, snapshot(src), f"after the {which} edit")
        say("\n| step | wall (s) | build:kubernetes (s) | binaries rewritten | tasks run |")
        say("|---|---:|---:|---|---|")
        for key, r in results.items():
            bins = [_short(k) for k in r["changed"] if k.startswith("kubernetes/checkout-")
                    and "/bin/" in k and "/.work/" not in k and not k.endswith((".tar", ".docker_tag"))]
            say(f"| {key} | {r['wall']:.1f} | {r['go']:.1f} | {' '.join(b.rsplit('/', 1)[1] for b in bins) or '-'} "
                f"| {len(r['tasks'])} |")
        say(f"\n{len(FAILURES)} failure(s)" + "".join(f"\n  {f}" for f in FAILURES))
    finally:
        if not a.keep:
            for s in stamps:
                if s.is_file():
                    tags = json.loads(s.read_text()).get("tags", [])
                    subprocess.run(["docker", "rmi", "-f", *tags], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            subprocess.run(["chmod", "-R", "u+w", str(work)])
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"kept: {work}")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
