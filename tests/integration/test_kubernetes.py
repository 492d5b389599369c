"""A real Kubernetes, built from Go modules, in a nested dindind cluster (issue 9).

One cluster (one control plane, two workers) is brought up once for the
module from the shared real build and examined with the real kubectl: every
node Ready at the built version, a Deployment spread over the nodes, pod-to-pod
traffic across nodes, a Service by ClusterIP and by its DNS name through
CoreDNS, ``kubectl logs`` and ``kubectl exec``, and an image loaded from the
host with ``cluster:load``. Nothing is pulled: pods use images already in the
nodes (``imagePullPolicy: Never``). A focused subset of the [Conformance] suite
(pods, services, DNS, ConfigMaps) passes on the e2e images the build made and
preloaded, with every pull refused. The pod manifest (``python -m dindind
manifest``) passes a server-side dry run. Last, the cluster is stopped and
started (``cluster:stop``/``cluster:start``) and must come back the same:
nodes, certificates, the Deployment. ``cluster:down`` must leave nothing.
"""

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time

import pytest
import yaml

from dindind.cluster import conformance
from dindind.cluster.plan import CLUSTER_LABEL

from conftest import REAL_VERSION

pytestmark = [pytest.mark.engine, pytest.mark.kubernetes]

# per test session, as the real build's repositories: two sessions on one engine (CI beside a developer's
# run) never take each other's cluster or remove each other's toolbox image
NAME = f"t-real-{os.getpid()}"
TOOLBOX = f"dindind-test/toolbox-{os.getpid()}:1"    # busybox-static on the base image: httpd, wget, nslookup, sh
NODES = [f"{NAME}-control-plane", f"{NAME}-worker", f"{NAME}-worker2"]


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


def kubectl_runner(real, name):
    """kubectl(*args, check=True, input=None, timeout=300): the real build's kubectl with cluster ``name``'s
    kubeconfig; asserts success unless check=False."""
    kubeconfig = real.path / "artifacts" / "clusters" / name / "kubeconfig"
    kc = kubectl_bin(real)

    def kubectl(*args, check=True, input=None, timeout=300):
        r = subprocess.run([str(kc), f"--kubeconfig={kubeconfig}", *args], input=input, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
        return r
    return kubectl


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
        kubectl = kubectl_runner(real, NAME)

        load = real.doit("cluster:load", "--name", NAME, "--image", toolbox, timeout=600)
        yield {"kubectl": kubectl, "up": up, "up_seconds": took, "load": load}
    finally:
        down = real.doit("cluster:down", "--name", NAME, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert labelled(NAME) == {"containers": [], "volumes": [], "networks": []}


def test_every_node_is_ready_at_the_built_version(cluster):
    nodes = json.loads(cluster["kubectl"]("get", "nodes", "-o", "json").stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == NODES
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


# A few minutes on 2 cores: pods, services, DNS, ConfigMaps and the aggregator, all on images built here and preloaded.
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
    # the unclaimed-service-port reject rule on the nodes (this machine's network answers any TCP port 80)
    "[sig-network] Services should serve endpoints on same port and different protocols",
    # sample-apiserver, built from this Kubernetes' staging module, behind the aggregator (with etcd)
    "[sig-api-machinery] Aggregator Should be able to support the 1.17 Sample API Server using the current Aggregator",
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


def test_the_pod_manifest_passes_a_server_side_dry_run_and_a_broken_one_does_not(real, cluster):
    k = cluster["kubectl"]
    made = subprocess.run([sys.executable, "-m", "dindind", "manifest", "--name", "t-real-job", "--focus",
                           r"\[sig-node\] Pods"], cwd=real.path, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    assert made.returncode == 0, made.stderr
    image = real.stamp("cluster")["tags"][0]
    assert f"image: {image}" in made.stdout          # the image this build made, by default
    r = k("apply", "--dry-run=server", "-f", "-", "-o", "json", input=made.stdout)
    job = json.loads(r.stdout)
    assert (job["kind"], job["metadata"]["name"]) == ("Job", "t-real-job")
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["privileged"] is True and container["args"][0] == "--e2e"
    # defaulted by the API server, so the server (not kubectl) took the whole object through its checks
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert job["spec"]["completionMode"] == "NonIndexed"
    missing = k("get", "job", "t-real-job", check=False)      # a dry run creates nothing
    assert missing.returncode != 0 and "NotFound" in missing.stderr, missing.stdout + missing.stderr
    # a Job's pod restarts Never or OnFailure: a check only the API server makes
    broken = made.stdout.replace("restartPolicy: Never", "restartPolicy: Always")
    assert broken != made.stdout
    r = k("apply", "--dry-run=server", "-f", "-", input=broken, check=False)
    assert r.returncode != 0 and "is invalid" in r.stderr and "restartPolicy" in r.stderr, r.stderr


def _sha256_of_pem(pem):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def identity(real, cluster):
    """What must survive a restart: node names and uids, the CA, the API server's certificate, the Deployment."""
    k = cluster["kubectl"]
    top = f"dindind-{NAME}"
    nodes = json.loads(k("get", "nodes", "-o", "json").stdout)["items"]
    # the CA as the image hands it out, and as the control plane holds it
    inside = subprocess.run(["docker", "exec", top, "dindind", "kubeconfig"], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert inside.returncode == 0, inside.stderr
    ca = base64.b64decode(yaml.safe_load(inside.stdout)["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    on_disk = subprocess.run(["docker", "exec", top, "docker", "exec", f"{NAME}-control-plane", "cat",
                              "/etc/kubernetes/pki/ca.crt"], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert on_disk.returncode == 0, on_disk.stderr
    server = yaml.safe_load((real.path / "artifacts" / "clusters" / NAME / "kubeconfig").read_text())[
        "clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    serving = ssl.get_server_certificate((host, int(port)), timeout=10)
    web = json.loads(k("get", "deployment", "web", "-o", "json").stdout)
    return {"nodes": sorted((n["metadata"]["name"], n["metadata"]["uid"]) for n in nodes),
            "ca": _sha256_of_pem(ca), "ca on the control plane": _sha256_of_pem(on_disk.stdout),
            "api server certificate": _sha256_of_pem(serving),
            "deployment": (web["metadata"]["uid"], web["spec"]["replicas"])}


def renewed_since(k, since):
    """{node: True if its kubelet renewed its Lease at or after ``since`` (epoch seconds)}."""
    leases = json.loads(k("get", "leases", "-n", "kube-node-lease", "-o", "json").stdout)["items"]
    return {item["metadata"]["name"]: int(api_epoch(item["spec"].get("renewTime"))) >= int(since) for item in leases}


# Last in the module on purpose (tests run in definition order): it stops and starts the shared cluster.
def test_the_same_cluster_comes_back_after_stop_and_start(real, cluster, web):
    k = cluster["kubectl"]
    top = f"dindind-{NAME}"
    before = identity(real, cluster)
    assert before["ca"] == before["ca on the control plane"]
    stop = real.doit("cluster:stop", "--name", NAME, timeout=300)
    state = json.loads(subprocess.run(["docker", "inspect", top], stdout=subprocess.PIPE, text=True,
                                      check=True).stdout)[0]["State"]
    logs = subprocess.run(["docker", "logs", top], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    # SIGTERM stopped the nodes cleanly, within the grace period (no SIGKILL: exit 0)
    assert (state["Running"], state["ExitCode"]) == (False, 0), (state, stop.stdout)
    assert "dindind: stopped 3 node(s)" in logs, logs[-3000:]
    stopped = time.time()
    t0 = time.monotonic()
    start = real.doit("cluster:start", "--name", NAME, timeout=900)
    start_wall = time.monotonic() - t0
    assert f"cluster {NAME} is Ready again in " in start.stdout, start.stdout
    # every node Ready, and as reported by a kubelet that runs again (not the Ready of before the stop)
    nodes = json.loads(k("get", "nodes", "-o", "json").stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == NODES
    assert all({c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"] == "True" for n in nodes)
    assert renewed_since(k, stopped) == dict.fromkeys(NODES, True)
    # the image's own view agrees once its entry point has finished the restart (nodes, CNI routes, Ready)
    for _ in range(300):
        logs = subprocess.run(["docker", "logs", top], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True).stdout
        if logs.count("dindind: cluster ready") == 2:
            break
        time.sleep(1)
    assert "restarting 3 existing node(s)" in logs and logs.count("dindind: cluster ready") == 2, logs[-3000:]
    inner = subprocess.run(["docker", "exec", top, "dindind", "status"], text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert inner.returncode == 0, inner.stdout + inner.stderr
    # the Deployment made before the stop is back: the same pods, their containers started again by the
    # kubelets (the API's Ready of before the stop does not count), every replica Ready, and answering
    deadline = time.monotonic() + 300
    while True:
        pods = json.loads(k("get", "pods", "-l", "app=web", "-o", "json").stdout)["items"]
        fresh = [p for p in pods if {c["type"]: c["status"] for c in p["status"].get("conditions", [])}.get("Ready")
                 == "True" and any(api_epoch((s.get("state") or {}).get("running", {}).get("startedAt")) >= int(stopped)
                                   for s in p["status"].get("containerStatuses", []))]
        if len(fresh) == len(pods) == 3 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert len(fresh) == len(pods) == 3, [(p["metadata"]["name"], p["status"]) for p in pods]
    web_wall = time.monotonic() - t0
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(name for name, _, _ in web)
    k("rollout", "status", "deployment/web", "--timeout=60s", timeout=90)
    status = json.loads(k("get", "deployment", "web", "-o", "json").stdout)["status"]
    assert status.get("readyReplicas") == 3 and status.get("availableReplicas") == 3, status
    after = identity(real, cluster)
    assert after == before
    running = [(p["metadata"]["name"], p["spec"]["nodeName"], p["status"]["podIP"]) for p in pods]
    assert len({node for _, node, _ in running}) == 3, running
    client = running[0][0]
    for name, node, ip in running[1:]:      # across nodes, by pod IP (the routes are back)
        r = k("exec", client, "--", "busybox", "wget", "-q", "-T", "5", "-O", "-", f"http://{ip}:8080/")
        assert r.stdout.strip() == name, (client, name, r.stdout)
    # by the Service's DNS name: CoreDNS and kube-proxy restarted too, and may take a few seconds more
    for _ in range(30):
        r = k("exec", client, "--", "busybox", "wget", "-q", "-T", "5", "-O", "-",
              "http://web.default.svc.cluster.local/", check=False)
        if r.returncode == 0:
            break
        time.sleep(2)
    assert r.stdout.strip() in {p for p, _, _ in running}, r.stdout + r.stderr
    first = float(cluster["up"].stdout.split(f"cluster {NAME} is up in ", 1)[1].split("s", 1)[0])
    again = float(start.stdout.split(f"cluster {NAME} is Ready again in ", 1)[1].split("s", 1)[0])
    print(f"\nFIGURE real 1+2 nested: first cluster:up -> Ready {first:.1f}s (doit wall {cluster['up_seconds']:.1f}s); "
          f"cluster:start -> Ready {again:.1f}s (doit wall {start_wall:.1f}s), {100 * again / first:.0f}% of the first "
          f"(goal <= 50%); start -> every web pod Ready again {web_wall:.1f}s; "
          f"{stop.stdout.strip().splitlines()[-1]}")


def api_epoch(text):
    from dindind.cluster import api

    return api.epoch(text) if text else 0
