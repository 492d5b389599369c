"""The local registry on a real Kubernetes (the shared real build): push from the host, run as a pod.

One nested cluster, a control plane only, with ``registry: {hostPort: PORT}``.
An image built on the host (busybox-static on an empty image, ~1 MB) is
pushed with ``docker push localhost:PORT/...``, and a pod of
``localhost:PORT/...`` (imagePullPolicy Always: containerd pulls it through
the node's hosts.toml) runs to completion; it also reads the registry's
catalog from inside the cluster at the address the ConfigMap
kube-public/local-registry-hosting gives (hostFromClusterNetwork). The pod
has no toleration: a cluster without workers leaves its control planes
untainted, as kind does. test_ha.py runs the same on an HA cluster's worker.
``cluster:down`` leaves nothing.
"""

import json
import os
import socket
import subprocess
import time

import pytest
import yaml

from integration.test_kubernetes import kubectl_runner, labelled

pytestmark = [pytest.mark.engine, pytest.mark.kubernetes]

NAME = f"t-registry-{os.getpid()}"
IMAGE = f"dindind-test/registry-busybox-{os.getpid()}:1"
REPO = f"dindind-test/busybox-{os.getpid()}"
CONFIG = """\
apiVersion: dindind.dev/v1alpha1
kind: Cluster
name: {name}
nodes: [{{role: control-plane}}]
registry: {{hostPort: {port}}}
"""
POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  restartPolicy: Never
  nodeSelector: {{kubernetes.io/hostname: {node}}}
  containers:
  - name: {pod}
    image: {image}
    imagePullPolicy: Always
    command: ["/bin/busybox", "sh", "-c", "echo running from the local registry; /bin/busybox wget -qO- http://{inner}/v2/_catalog"]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def busybox(real):
    """busybox-static alone on an empty image, built on the host from the build's base image (no registry)."""
    base = real.stamp("base")["tags"][0]
    dockerfile = (f"FROM {base} AS get\nRUN apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                  "busybox-static && rm -rf /var/lib/apt/lists/*\n"
                  "FROM scratch\nCOPY --from=get /bin/busybox /bin/busybox\n")
    r = subprocess.run(["docker", "build", "-q", "-t", IMAGE, "-"], input=dockerfile, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    yield IMAGE
    subprocess.run(["docker", "rmi", "-f", IMAGE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cluster(real, busybox, tmp_path_factory):
    port = free_port()
    path = tmp_path_factory.mktemp("registry") / "cluster.yaml"
    path.write_text(CONFIG.format(name=NAME, port=port))
    start = time.monotonic()
    up = real.doit("cluster:up", "--config", str(path), timeout=1200, check=False)
    took = time.monotonic() - start
    try:
        assert up.returncode == 0, up.stdout[-5000:] + up.stderr[-5000:]
        kubectl = kubectl_runner(real, NAME)

        print(f"\ncluster:up with a registry, 1 control plane, nested: {took:.1f}s")
        print("\n".join(line for line in up.stdout.splitlines() if " ✓ " in line or " is up in " in line))
        yield {"kubectl": kubectl, "port": port, "up": up}
    finally:
        start = time.monotonic()
        down = real.doit("cluster:down", "--name", NAME, check=False)
        print(f"cluster:down: {time.monotonic() - start:.1f}s")
        assert down.returncode == 0, down.stdout + down.stderr
        assert labelled(NAME) == {"containers": [], "volumes": [], "networks": []}


def push_and_run(kubectl, port, busybox, node, pod="pushed"):
    """Push ``busybox`` from the host to the registry at localhost:PORT, run it as ``pod`` on ``node``
    (imagePullPolicy Always: the node's containerd pulls it), check what it printed, the events and the
    local-registry-hosting ConfigMap; print the push and pod times."""
    ref = f"localhost:{port}/{REPO}:1"
    subprocess.run(["docker", "tag", busybox, ref], check=True)
    try:
        start = time.monotonic()
        push = subprocess.run(["docker", "push", ref], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print(f"docker push {ref}: {time.monotonic() - start:.1f}s")
        assert push.returncode == 0, push.stdout
    finally:
        subprocess.run(["docker", "rmi", ref], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cm = json.loads(kubectl("get", "configmap", "-n", "kube-public", "local-registry-hosting", "-o", "json").stdout)
    hosting = yaml.safe_load(cm["data"]["localRegistryHosting.v1"])
    assert hosting["host"] == f"localhost:{port}"
    # the controller-manager makes the namespace's default ServiceAccount a moment after the node is Ready
    deadline = time.monotonic() + 120
    while kubectl("get", "serviceaccount", "default", check=False).returncode != 0:
        assert time.monotonic() < deadline, "no default ServiceAccount after 120s"
        time.sleep(1)
    start = time.monotonic()
    kubectl("apply", "-f", "-", input=POD.format(pod=pod, node=node, image=ref, inner=hosting["hostFromClusterNetwork"]))
    phase, deadline = "", time.monotonic() + 180
    while time.monotonic() < deadline and phase not in ("Succeeded", "Failed"):
        time.sleep(1)
        phase = kubectl("get", "pod", pod, "-o", "jsonpath={.status.phase}").stdout
    print(f"pod of {ref} on {node}: {phase} after {time.monotonic() - start:.1f}s")
    events = kubectl("get", "events", "--field-selector", f"involvedObject.name={pod}", check=False).stdout
    assert phase == "Succeeded", events
    assert "Pulling image" in events and f'"{ref}"' in events, events
    logs = kubectl("logs", pod).stdout
    assert "running from the local registry" in logs
    assert REPO in json.loads(logs.splitlines()[-1])["repositories"], logs
    # the node pulled it by the name the host pushed
    got = json.loads(kubectl("get", "pod", pod, "-o", "json").stdout)
    assert got["status"]["containerStatuses"][0]["image"] == ref
    assert got["spec"]["nodeName"] == node


def test_an_image_pushed_from_the_host_runs_as_a_pod(cluster, busybox):
    # no toleration: a cluster without workers has no control-plane taint (kind's rule)
    push_and_run(cluster["kubectl"], cluster["port"], busybox, f"{NAME}-control-plane")
