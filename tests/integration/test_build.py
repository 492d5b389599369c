"""`doit build` against the real engine: the cold build, the cluster image smoke check, the no-op,
the two incremental cases, the `dir` source on a copy of the sample tree, and the `release`
source served over HTTP (issue 2, items 7, 9, 13)."""

import hashlib
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import (TEST_REPOS, artifact_mtimes, copy_project, copy_sample_tree, dir_source_yaml, doit,
                      executed, project_config)

pytestmark = pytest.mark.engine

VERSION = "v1.31.2+sample"
TAG = "v1.31.2_sample"
DEBS = ("kubernetes-cni", "kubelet", "kubectl", "kubeadm")


def docker(*args, check=True, timeout=300):
    r = subprocess.run(["docker", *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def inspect(ref):
    return json.loads(docker("image", "inspect", ref).stdout)[0]


def run_in(image, script):
    """Run ``sh -c script`` in a throwaway container of ``image`` (its entrypoint bypassed)."""
    return docker("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout


def tree_refs(project):
    tree = json.loads((Path(project) / "artifacts" / "kubernetes" / "tree.json").read_text())
    return [ref for img in tree["images"] for ref in img["refs"]]


# ------------------------------------------------------------------ 1. the cold build

def test_cold_build_stamps_labels_and_default_tags(built):
    out = built.cold_run.stdout
    for task in ("kubernetes", "cni", "base", "render-node", "node", "node-archive", "render-cluster",
                 "cluster") + tuple(f"deb-{d}" for d in DEBS):
        assert f"build:{task}" in executed(out), task        # a fresh checkout: every task ran
    stamps = {name: built.stamp(name) for name in ("base", "node", "cluster")}
    for name, stamp in stamps.items():
        assert stamp["id"].startswith("sha256:") and stamp["tags"], (name, stamp)
        assert inspect(stamp["tags"][0])["Id"] == stamp["id"], name
    # default tags: <repository>:<kubernetes version with '+' as '_'>
    assert stamps["node"]["tags"] == [f"{TEST_REPOS['node']}:{TAG}"]
    assert stamps["cluster"]["tags"] == [f"{TEST_REPOS['cluster']}:{TAG}"]
    # each image carries its input digests as labels, equal to the stamp's record
    for name in ("node", "cluster"):
        labels = inspect(stamps[name]["id"])["Config"]["Labels"]
        assert stamps[name]["inputs"], name
        for key, digest in stamps[name]["inputs"].items():
            assert labels[f"io.dindind.input.{key}"] == digest, (name, key)
        assert labels["io.dindind.inputs"].startswith("sha256:")
        assert labels["io.dindind.kubernetes.version"] == VERSION
    assert stamps["node"]["inputs"]["base"] == stamps["base"]["id"]
    assert stamps["cluster"]["inputs"]["node"] == stamps["node"]["id"]
    assert {f"deb.{d}" for d in DEBS} | {"image.pause", "image.kube-apiserver"} <= set(stamps["node"]["inputs"])
    assert inspect(stamps["base"]["id"])["Config"]["Labels"]["io.dindind.inputs"].startswith("sha256:")


def test_node_image_has_the_debs_installed_and_the_images_preloaded(built):
    node = built.stamp("node")["tags"][0]
    status = run_in(node, "dpkg -s " + " ".join(DEBS))
    blocks = [b for b in status.strip().split("\n\n") if b.strip()]
    assert len(blocks) == len(DEBS)
    for block in blocks:
        assert "Status: install ok installed" in block, block
    assert "Package: kubelet\nStatus: install ok installed" in status
    assert "Version: 1.31.2+sample-1" in status
    assert "Depends: " in status and "conntrack" in status  # upstream's kubelet dependencies came along
    preloaded = set(run_in(node, "cat /var/lib/dindind/preloaded.txt").split())
    refs = tree_refs(built.path)
    assert len(refs) == 7            # 4 components + etcd, coredns, pause
    missing = [r for r in refs if r not in preloaded]
    assert not missing, f"not preloaded into containerd: {missing}"


def test_cluster_image_holds_the_node_image_once_and_the_test_binaries(built):
    cluster = built.stamp("cluster")["tags"][0]
    archive = built.path / "artifacts" / "images" / "node-image.tar.zst"
    bins = {n: built.path / "artifacts" / "kubernetes" / "sample" / "kubernetes" / sub / n
            for n, sub in (("e2e.test", "test/bin"), ("ginkgo", "test/bin"), ("kubectl", "server/bin"))}
    out = run_in(cluster, "cd / && sha256sum opt/dindind/node/node-image.tar.zst usr/local/bin/e2e.test "
                          "usr/local/bin/ginkgo usr/local/bin/kubectl && test -x usr/local/bin/e2e.test "
                          "&& test -x usr/local/bin/ginkgo && test -x usr/local/bin/kubectl && echo EXEC-OK; "
                          "echo ARCHIVES; find / -xdev -type f \\( -name '*.tar' -o -name '*.tar.*' \\) -size +1M; "
                          "echo DOCKER; find /var/lib/docker -type f | head -3")
    sums = {line.split()[1]: line.split()[0] for line in out.split("EXEC-OK")[0].splitlines() if line.strip()}
    assert sums["opt/dindind/node/node-image.tar.zst"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    for name, path in bins.items():
        assert sums[f"usr/local/bin/{name}"] == hashlib.sha256(path.read_bytes()).hexdigest(), name
    assert "EXEC-OK" in out
    archives = out.split("ARCHIVES")[1].split("DOCKER")[0].split()
    assert archives == ["/opt/dindind/node/node-image.tar.zst"], archives   # the node image, exactly once
    assert out.split("DOCKER")[1].split() == []       # and not a second time in the inner engine's store
    # the archive is a docker-archive of the node image, tagged with its reference
    listing = subprocess.run(f"zstd -dc {archive} | tar -xO manifest.json", shell=True, text=True,
                             stdout=subprocess.PIPE, check=True).stdout
    manifest = json.loads(listing)
    assert len(manifest) == 1 and manifest[0]["RepoTags"] == built.stamp("node")["tags"]
    assert manifest[0]["Config"].split(".")[0] in built.stamp("node")["id"]


# ------------------------------------------------------------------ 2. cluster image smoke (issue item 7)

def test_cluster_image_smoke_dockerd_starts_and_node_image_loads(built, janitor):
    from dindind.docker import containers

    cluster = built.stamp("cluster")["tags"][0]
    node = built.stamp("node")
    opts = containers.privilege_opts(cluster)
    assert opts in (containers.PRIVILEGED, containers.FALLBACK)
    name = f"dindind-test-smoke-{int(time.time())}"
    janitor.container(name)
    docker("run", "-d", "--name", name, *containers.run_args(opts),
           "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", cluster,
           "--no-cluster")      # the engine and the node image only: no arguments would bring up a cluster
    deadline = time.monotonic() + 120
    logs = ""
    while time.monotonic() < deadline:
        logs = docker("logs", name, check=False).stdout
        if "dindind: ready" in logs.splitlines():
            break
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["Running"], f"the cluster container exited ({state['ExitCode']}):\n{logs}"
        time.sleep(0.5)
    else:
        pytest.fail(f"no 'dindind: ready' within 120 s:\n{logs}")
    assert "dindind: dockerd is up" in logs
    inner = docker("exec", name, "docker", "image", "inspect", "-f", "{{.Id}}", node["tags"][0]).stdout.strip()
    assert inner == node["id"]          # the very image the pipeline built, loaded from the embedded archive
    mounted = [m["Name"] for m in json.loads(docker("inspect", name).stdout)[0]["Mounts"] if m["Type"] == "volume"]
    assert mounted, "the inner engine's /var/lib/docker should be a volume"
    t0 = time.monotonic()
    docker("stop", "-t", "30", name)
    stop_s = time.monotonic() - t0
    state = json.loads(docker("inspect", name).stdout)[0]["State"]
    assert state["ExitCode"] == 0, docker("logs", name).stdout
    assert stop_s < 25, f"docker stop took {stop_s:.1f} s: SIGTERM was not handled"
    assert "dindind: stopping" in docker("logs", name).stdout
    docker("rm", "-v", name)
    # its volumes went with it (compared by name: other work on this engine may create volumes meanwhile)
    leaked = set(mounted) & set(docker("volume", "ls", "-q").stdout.split())
    assert not leaked, f"volumes left behind: {leaked}"


# ------------------------------------------------------------------ 3. no-op

def test_second_build_is_a_noop(built):
    before = artifact_mtimes(built.path)
    assert "images/node.build.log" in before and "images/cluster.build.log" in before
    assert any(p.startswith("debs/") for p in before)
    stamps = {n: built.stamp(n) for n in ("base", "node", "cluster")}
    r = built.doit("build")
    assert executed(r.stdout) == [], r.stdout
    assert "docker build" not in r.stdout and "Step " not in r.stdout
    assert artifact_mtimes(built.path) == before
    assert {n: built.stamp(n) for n in ("base", "node", "cluster")} == stamps


# ------------------------------------------------------------------ 4. incremental, on a dir source

def _layers(ref):
    return inspect(ref)["RootFS"]["Layers"]


def _containerd_layer_index(ref):
    """Index in RootFS.Layers of the layer made by ``COPY --from=preload /var/lib/containerd/``."""
    hist = json.loads("[" + ",".join(docker("history", "--no-trunc", "--format", "{{json .}}", ref)
                                     .stdout.split("\n")[:-1]) + "]")
    idx = -1
    for h in reversed(hist):            # oldest first
        created_by = h["CreatedBy"]
        makes_layer = "#(nop)" not in created_by or "#(nop) COPY" in created_by or "#(nop) ADD" in created_by
        if makes_layer:
            idx += 1
            if "in /var/lib/containerd/" in created_by:
                return idx
    raise AssertionError(f"no /var/lib/containerd COPY layer in {ref}")


def _step_lines(log_text):
    """[(step line, used cache?)] of a classic-builder log."""
    steps, cur = [], None
    for line in log_text.splitlines():
        if line.startswith("Step "):
            cur = [line, False]
            steps.append(cur)
        elif cur and "Using cache" in line:
            cur[1] = True
    return steps


def test_incremental_rebuilds_on_a_dir_source(built, tmp_path, janitor):
    tree = copy_sample_tree(built.path, tmp_path / "k8s-build")
    proj = copy_project(tmp_path / "inc")
    cfg = tmp_path / "inc.yaml"
    cfg.write_text(project_config("dindind-inc/node", "dindind-inc/cluster", dir_source_yaml(tree)))
    janitor.image(f"dindind-inc/node:{TAG}", f"dindind-inc/cluster:{TAG}")

    def build():
        r = doit(proj, f"config={cfg}", "build")
        janitor.stamps(proj)
        return r

    def stamp(name):
        return json.loads((proj / "artifacts" / "images" / f"{name}.json").read_text())

    # cold build here: the same inputs as the sample, so the same node image (reproducible, cache hits)
    cold = build()
    assert "build:node" in executed(cold.stdout) and "build:cluster" in executed(cold.stdout)
    tree_json = json.loads((proj / "artifacts" / "kubernetes" / "tree.json").read_text())
    assert tree_json["source"] == "dir" and tree_json["version"] == VERSION
    assert tree_json["root"] == str(tree)
    assert stamp("node")["id"] == built.stamp("node")["id"]
    assert stamp("node")["tags"] == [f"dindind-inc/node:{TAG}"]
    for d in DEBS:       # byte-identical debs from the same binaries in another checkout
        assert (proj / "artifacts" / "debs" / f"{d}.deb").read_bytes() == \
            (built.path / "artifacts" / "debs" / f"{d}.deb").read_bytes(), d

    # (a) one systemd template edited: re-render, node, its archive and the cluster; nothing else
    unit = proj / "templates" / "node" / "files" / "etc" / "systemd" / "system" / "dindind-preload.service"
    unit.write_text(unit.read_text() + "# an edit by the incremental test\n")
    before = artifact_mtimes(proj)
    node0, cluster0 = stamp("node"), stamp("cluster")
    r = build()
    ran = executed(r.stdout)
    assert set(ran) - {"build:render-cluster"} == {"build:render-node", "build:node", "build:node-archive",
                                                   "build:cluster"}, ran
    after = artifact_mtimes(proj)
    changed = {p for p in after if after[p] != before.get(p)}
    assert "context/node/files/etc/systemd/system/dindind-preload.service" in changed
    assert not {p for p in changed if p.startswith(("debs/", "kubernetes/", "cni/", "cache/"))}, changed
    assert not {p for p in changed if p.startswith("context/node/") and "dindind-preload" not in p}, changed
    assert "images/base.json" not in changed
    assert stamp("node")["id"] != node0["id"] and stamp("cluster")["id"] != cluster0["id"]
    steps = _step_lines((proj / "artifacts" / "images" / "node.build.log").read_text())
    rebuilt = [s for s, cached in steps if not cached and ("RUN" in s or "COPY" in s)]
    assert rebuilt and all("COPY files/ /" in s or "systemctl enable" in s for s in rebuilt), rebuilt
    assert "# an edit by the incremental test" in run_in(
        stamp("node")["id"], "cat /etc/systemd/system/dindind-preload.service")

    # (b) only the kubelet binary changes: the kubelet deb, node, archive, cluster; the preload layers reused
    node1 = stamp("node")
    kubelet = tree / "kubernetes" / "server" / "bin" / "kubelet"
    kubelet.write_text(kubelet.read_text() + "# a new kubelet build\n")
    before = artifact_mtimes(proj)
    r = build()
    ran = executed(r.stdout)
    assert set(ran) - {"build:render-cluster", "build:kubernetes"} == {
        "build:deb-kubelet", "build:node", "build:node-archive", "build:cluster"}, ran
    after = artifact_mtimes(proj)
    changed = {p for p in after if after[p] != before.get(p)}
    assert "debs/kubelet.deb" in changed
    assert not {p for p in changed if p.startswith("debs/") and p != "debs/kubelet.deb"}, changed
    assert not {p for p in changed if p.startswith("context/node/")}, changed
    assert "images/base.json" not in changed
    node2 = stamp("node")
    assert node2["id"] != node1["id"]
    assert node2["inputs"]["deb.kubelet"] != node1["inputs"]["deb.kubelet"]
    assert {k: v for k, v in node2["inputs"].items() if k != "deb.kubelet"} == \
        {k: v for k, v in node1["inputs"].items() if k != "deb.kubelet"}
    old_layers, new_layers = _layers(node1["id"]), _layers(node2["id"])
    cut = _containerd_layer_index(node2["id"]) + 1
    assert cut >= 3          # base, packages, ... , the preloaded containerd store
    assert new_layers[:cut] == old_layers[:cut], "the preloaded-images layers were rebuilt"
    assert new_layers != old_layers
    steps = _step_lines((proj / "artifacts" / "images" / "node.build.log").read_text())
    preload = [(s, c) for s, c in steps if "AS preload" in s or "ctr -n k8s.io images import" in s
               or "--from=preload" in s or "COPY images/" in s]
    assert len(preload) >= 4 and all(c for _, c in preload[1:]), preload     # "Using cache" all along
    dpkg = [c for s, c in steps if "dpkg -i" in s]
    assert dpkg == [False]
    assert "# a new kubelet build" in run_in(node2["id"], "cat /usr/bin/kubelet")


# ------------------------------------------------------------------ 5. the release source over HTTP

def _tarball(path, root, members):
    with tarfile.open(path, "w:gz") as tf:
        for rel in members:
            tf.add(root / rel, arcname=rel)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_release_source_from_local_http_server(built, tmp_path, http_server):
    sample = built.path / "artifacts" / "kubernetes" / "sample"
    served = tmp_path / "served"
    served.mkdir()
    server_sha = _tarball(served / "kubernetes-server-linux-amd64.tar.gz", sample,
                          ["kubernetes/version", "kubernetes/server"])
    test_sha = _tarball(served / "kubernetes-test-linux-amd64.tar.gz", sample, ["kubernetes/test"])
    url = http_server(served)
    cfgdir = tmp_path / "cfg"
    cfgdir.mkdir()
    extras = []
    for tar in sorted((sample / "kubernetes" / "extra-images").glob("*.tar")):
        (cfgdir / tar.name).write_bytes(tar.read_bytes())
        extras.append(tar.name)

    def config(name, server_sha256):
        path = cfgdir / name
        path.write_text(project_config("dindind-inc/rel-node", "dindind-inc/rel-cluster", (
            "kubernetes:\n  source: release\n"
            f"  server_url: {url}/kubernetes-server-linux-amd64.tar.gz\n  server_sha256: '{server_sha256}'\n"
            f"  test_url: {url}/kubernetes-test-linux-amd64.tar.gz\n  test_sha256: '{test_sha}'\n"
            f"  extra_images: [{', '.join(extras)}]\n")))
        return path

    proj = copy_project(tmp_path / "rel")
    downloads = proj / "artifacts" / "cache" / "downloads"

    # a bad checksum: refused, one clear line naming the URL and both digests, nothing cached
    wrong = "0" * 64
    bad = doit(proj, f"config={config('bad.yaml', wrong)}", "build:kubernetes", check=False)
    assert bad.returncode != 0
    assert "Traceback" not in bad.stdout + bad.stderr
    errors = [line for line in bad.stderr.splitlines() if "ERROR:" in line]
    assert len(errors) == 1, bad.stderr
    assert f"{url}/kubernetes-server-linux-amd64.tar.gz" in errors[0]
    assert wrong in errors[0] and server_sha in errors[0]
    assert not downloads.exists() or not any(downloads.iterdir()), list(downloads.iterdir())
    assert not list((proj / "artifacts" / "kubernetes").glob("release-*"))

    # the right checksums: downloaded, verified, extracted; the debs build from it, as from the sample
    # (kubernetes-cni is left out: it packages Debian's CNI plugins, not the tree, and xz takes ~25 s)
    good = config("good.yaml", server_sha)
    tree_debs = [d for d in DEBS if d != "kubernetes-cni"]
    r = doit(proj, f"config={good}", *(f"build:deb-{d}" for d in tree_debs))
    assert {"build:kubernetes", "build:cni"} | {f"build:deb-{d}" for d in tree_debs} <= set(executed(r.stdout))
    tree = json.loads((proj / "artifacts" / "kubernetes" / "tree.json").read_text())
    assert tree["source"] == "release" and tree["version"] == VERSION
    assert sorted(tree_refs(proj)) == sorted(tree_refs(built.path))
    assert sorted(p.name for p in downloads.iterdir()) == sorted([f"{server_sha}.tar.gz", f"{test_sha}.tar.gz"])
    for d in tree_debs:
        assert (proj / "artifacts" / "debs" / f"{d}.deb").read_bytes() == \
            (built.path / "artifacts" / "debs" / f"{d}.deb").read_bytes(), d
    again = doit(proj, f"config={good}", *(f"build:deb-{d}" for d in tree_debs))
    assert executed(again.stdout) == []
