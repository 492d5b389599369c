"""A real Kubernetes, built from Go modules, in a nested dindind cluster (issue 9).

One cluster (one control plane, two workers) is brought up once for the
module from the shared real build and examined with the real kubectl: every
node Ready at the built version, a Deployment spread over the nodes, pod-to-pod
traffic across nodes, a Service by ClusterIP and by its DNS name through
CoreDNS, ``kubectl logs`` and ``kubectl exec``, and an image loaded from the
host with ``cluster:load``. Nothing is pulled: pods use images already in the
nodes (``imagePullPolicy: Never``). A focused subset of the [Conformance] suite
(pods, services, DNS, ConfigMaps) passes on the e2e images the build made and
preloaded, with every pull refused. ``cluster:down`` must leave nothing.
"""

import json
import subprocess
import time

import pytest

from dindind.cluster import conformance
from dindind.cluster.plan import CLUSTER_LABEL

from conftest import REAL_VERSION

pytestmark = [pytest.mark.engine, pytest.mark.kubernetes]

NAME = "t-real"
TOOLBOX = "dindind-test/toolbox:1"      # busybox-static on the base image: httpd, wget, nslookup, sh


def labelled(name):
    flt = f"label={CLUSTER_LABEL}={name}"
    return {kind: subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout.split()
            for kind, cmd in (("containers", ["docker", "ps", "-aq", "--filter", flt]),
                              ("volumes", ["docker", "volume", "ls", "-q", "--filter", flt]),
                              ("networks", ["docker", "network", "ls", "-q", "--filter", flt]))}


def kubectl_bin(real):
    found = sorted(real.path.glob("artifacts/kubernetes/*/kubernetes/server/bin/kubectl"))
    assert found, "the real build has no kubectl"
    return found[0]


@pytest.fixture(scope="module")
def toolbox(real):
    """A small image built on the host from the build's own base image (no registry)."""
    base = real.stamp("base")["tags"][0]
    dockerfile = (f"FROM {base}\nRUN apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                  "busybox-static && rm -rf /var/lib/apt/lists/*\n")
    r = subprocess.run(["docker", "build", "-q", "-t", TOOLBOX, "-"], input=dockerfile, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    yield TOOLBOX
    subprocess.run(["docker", "rmi", "-f", TOOLBOX], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cluster(real, toolbox):
    start = time.monotonic()
    up = real.doit("cluster:up", "--name", NAME, "--workers", "2", timeout=1200, check=False)
    took = time.monotonic() - start
    try:
        assert up.returncode == 0, up.stdout[-5000:] + up.stderr[-5000:]
        kubeconfig = real.path / "artifacts" / "clusters" / NAME / "kubeconfig"
        kc = kubectl_bin(real)

        def kubectl(*args, check=True, input=None, timeout=300):
            r = subprocess.run([str(kc), f"--kubeconfig={kubeconfig}", *args], input=input, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
            if check:
                assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
            return r

        load = real.doit("cluster:load", "--name", NAME, "--image", toolbox, timeout=600)
        yield {"kubectl": kubectl, "up": up, "up_seconds": took, "load": load}
    finally:
        down = real.doit("cluster:down", "--name", NAME, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert labelled(NAME) == {"containers": [], "volumes": [], "networks": []}


def test_every_node_is_ready_at_the_built_version(cluster):
    nodes = json.loads(cluster["kubectl"]("get", "nodes", "-o", "json").stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [f"{NAME}-control-plane", f"{NAME}-worker",
                                                           f"{NAME}-worker2"]
    for n in nodes:
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"]
        assert ready == "True", n["metadata"]["name"]
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == REAL_VERSION
        assert info["containerRuntimeVersion"].startswith("containerd://2.")
        assert "trixie" in info["osImage"]
    version = json.loads(cluster["kubectl"]("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == REAL_VERSION
    system = json.loads(cluster["kubectl"]("get", "pods", "-n", "kube-system", "-o", "json").stdout)["items"]
    running = {(p["metadata"].get("labels") or {}).get("k8s-app") for p in system if p["status"]["phase"] == "Running"}
    assert {"kube-dns", "kube-proxy"} <= running, running


WEB = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      tolerations: [{{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}}]
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
          labelSelector: {{matchLabels: {{app: web}}}}}}
      containers:
      - name: web
        image: {TOOLBOX}
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && echo web-started && exec busybox httpd -f -p 8080 -h /www']
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


@pytest.fixture(scope="module")
def web(cluster):
    k = cluster["kubectl"]
    k("apply", "-f", "-", input=WEB)
    k("rollout", "status", "deployment/web", "--timeout=240s", timeout=300)
    pods = json.loads(k("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
    return [(p["metadata"]["name"], p["spec"]["nodeName"], p["status"]["podIP"]) for p in pods]


def test_a_deployment_spreads_over_every_node_and_becomes_ready(web):
    assert len({node for _, node, _ in web}) == 3, web


def test_pods_reach_each_other_across_nodes(cluster, web):
    k = cluster["kubectl"]
    for name, node, _ in web:
        for other, other_node, ip in web:
            if other_node == node:
                continue
            r = k("exec", name, "--", "busybox", "wget", "-q", "-T", "5", "-O", "-", f"http://{ip}:8080/")
            assert r.stdout.strip() == other, (name, other, r.stdout)


def test_a_service_answers_by_cluster_ip_and_by_dns_name(cluster, web):
    k = cluster["kubectl"]
    ip = k("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    client = web[0][0]
    names = {p for p, _, _ in web}
    for url in (f"http://{ip}/", "http://web.default.svc.cluster.local/", "http://web/"):
        r = k("exec", client, "--", "busybox", "wget", "-q", "-T", "5", "-O", "-", url)
        assert r.stdout.strip() in names, (url, r.stdout)
    r = k("exec", client, "--", "busybox", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "10.96.0.1" in r.stdout, r.stdout


def test_kubectl_logs_and_exec(cluster, web):
    k = cluster["kubectl"]
    name = web[0][0]
    assert "web-started" in k("logs", name).stdout
    assert k("exec", name, "--", "cat", "/www/index.html").stdout.strip() == name


def test_an_image_loaded_from_the_host_runs_as_a_pod(cluster, web):
    # the web pods run TOOLBOX, which exists only because cluster:load put it into every node
    assert f"into 3 node(s) of {NAME}: docker.io/{TOOLBOX}\n" in cluster["load"].stdout
    k = cluster["kubectl"]
    k("run", "once", f"--image={TOOLBOX}", "--image-pull-policy=Never", "--restart=Never", "--",
      "sh", "-c", "echo loaded-image-ran")
    for _ in range(120):
        phase = k("get", "pod", "once", "-o", "jsonpath={.status.phase}").stdout
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(1)
    assert phase == "Succeeded"
    assert "loaded-image-ran" in k("logs", "once").stdout


# A few minutes on 2 cores: pods, services, DNS and ConfigMaps, all on images built here and preloaded.
CONFORMANCE_SUBSET = {
    "[sig-node] Pods should be submitted and removed",
    "[sig-node] Pods should be updated",
    "[sig-node] Pods should get a host IP",
    "[sig-node] Pods should contain environment variables for services",
    "[sig-network] DNS should provide DNS for the cluster",
    "[sig-network] DNS should provide DNS for services",
    "[sig-network] Services should serve a basic endpoint from pods",
    "[sig-network] Services should serve multiport endpoints from pods",
    "[sig-node] ConfigMap should be consumable via the environment",
    "[sig-node] ConfigMap should be consumable via environment variable",
    "[sig-node] ConfigMap should run through a ConfigMap lifecycle",
}


def test_a_conformance_subset_passes_offline_on_the_preloaded_e2e_images(real, cluster):
    focus = "|".join(conformance.re2_escape(name) + " " for name in sorted(CONFORMANCE_SUBSET))
    run = real.doit("cluster:e2e", "--name", NAME, "--conformance", "--focus", focus, "--parallel", "2",
                    timeout=2400, check=False)
    dest = real.path / "artifacts" / "clusters" / NAME / "e2e"
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    cases = conformance.read_junit(sorted(dest.rglob("junit*.xml")))
    passed = {name for name, status in cases if status == "passed"}
    for name in CONFORMANCE_SUBSET:
        assert any(p.startswith(name + " [") for p in passed), (name, run.stdout[-3000:])
    summary = json.loads((dest / "summary.json").read_text())
    assert (summary["passed"], summary["failed"]) == (len(CONFORMANCE_SUBSET), 0), summary
    assert "conformance: " in run.stdout
