"""The versioned cluster config on a real Kubernetes (issue 11: nodes, knobs, kubeconfig).

The sample (test_cluster_config.py) shows what each node, kubeadm, the kubelet and containerd
are given; here a real cluster - a control plane and a worker from one ``kind: Cluster`` file -
shows that it takes effect: the Nodes carry their labels, the worker's kubeadm patch sets its pod
capacity, the feature gate is on in the API server and the kubelet, containerd runs with the
patch merged, runtimeConfig turns on an alpha API version, the API server is published on the
address and port the config names (127.0.0.2, a loopback address that is not the default), a pod
reads the host folder mounted into the worker, a NodePort answers on the host port mapped to the
worker through both hops, an image loaded from a ``docker save`` archive runs as a pod, and
``cluster:nodes``, ``cluster:kubeconfig --merge`` and ``--internal`` work against it.
``cluster:down`` removes the merged context and leaves nothing.
"""

import base64
import json
import os
import socket
import subprocess
import time

import pytest
import yaml

from dindind.cluster import host

from integration.test_kubernetes import kubectl_bin, kubectl_runner, labelled

pytestmark = [pytest.mark.engine, pytest.mark.kubernetes]

NAME = f"t-realcfg-{os.getpid()}"
CP, WORKER = f"{NAME}-control-plane", f"{NAME}-worker"
NODE_PORT = 30080
# an alpha gate, off by default in REAL_VERSION (the test checks that with the built kube-apiserver)
GATE = "ImageVolumeWithDigest"
# an alpha API version (off by default; needs no feature gate) that runtimeConfig turns on, and one it leaves off
ALPHA_ON, ALPHA_OFF = "internal.apiserver.k8s.io/v1alpha1", "coordination.k8s.io/v1alpha2"
API_ADDRESS = "127.0.0.2"
ARCHIVED = f"dindind-test/archived-{os.getpid()}:1"
CONFIG = """\
apiVersion: dindind.dev/v1alpha1
kind: Cluster
name: {name}
networking: {{apiServerAddress: {address}, apiServerPort: {port}}}
nodes:
- role: control-plane
  labels: {{example.com/tier: front}}
- role: worker
  labels: {{example.com/tier: back}}
  kubeadmConfigPatches:
  - {{kind: KubeletConfiguration, maxPods: 42}}
  extraMounts:
  - {{hostPath: shared, containerPath: /srv/shared, readOnly: true}}
  extraPortMappings:
  - {{containerPort: {node_port}}}
featureGates: {{{gate}: true}}
runtimeConfig: {{"{alpha}": "true"}}
containerdConfigPatches:
- |
  [plugins.'io.containerd.cri.v1.runtime']
    max_container_log_line_size = 32768
"""


def e2e_image(real, recipe):
    doc = json.loads((real.path / "artifacts/kubernetes/e2e-images/e2e-images.json").read_text())
    return next(i["ref"] for i in doc["images"] if i.get("recipe") == recipe and i["status"] == "built")


@pytest.fixture(scope="module")
def up(real, tmp_path_factory):
    d = tmp_path_factory.mktemp("real-config")
    (d / "shared").mkdir()
    (d / "shared" / "hello.txt").write_text("hello from the host\n")
    with socket.socket() as sock:
        sock.bind((API_ADDRESS, 0))
        api_port = sock.getsockname()[1]
    (d / "cluster.yaml").write_text(CONFIG.format(name=NAME, address=API_ADDRESS, port=api_port, node_port=NODE_PORT,
                                                  gate=GATE, alpha=ALPHA_ON))
    env = {**os.environ, "KUBECONFIG": str(d / "user-kubeconfig")}
    start = time.monotonic()
    run = real.doit("cluster:up", "--config", str(d / "cluster.yaml"), timeout=1200, check=False)
    took = time.monotonic() - start
    try:
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
        kubectl = kubectl_runner(real, NAME)

        print(f"\nFIGURE real config 1+1 nested: cluster:up {took:.1f}s")
        yield {"run": run, "dir": d, "env": env, "kubectl": kubectl, "kc": kubectl_bin(real), "api_port": api_port}
    finally:
        down = real.doit("cluster:down", "--name", NAME, env=env, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert labelled(NAME) == {"containers": [], "volumes": [], "networks": []}
        merged = d / "user-kubeconfig"
        if merged.exists():     # --merge ran: down took its entries out again
            doc = yaml.safe_load(merged.read_text()) or {}
            assert not [c for c in doc.get("contexts") or [] if c["name"] == f"dindind-{NAME}"], doc


def test_cluster_nodes_lists_both_nodes_ready_with_their_roles(real, up):
    out = real.doit("cluster:nodes", "--name", NAME).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(NAME)}
    assert set(rows) == {CP, WORKER}, out
    assert rows[CP][1] == "control-plane" and rows[WORKER][1] == "worker", out
    assert all(r[-1] == "Ready" and r[-2] == "running" for r in rows.values()), out


def test_the_nodes_carry_their_labels_and_the_workers_patch_sets_its_capacity(up):
    nodes = {n["metadata"]["name"]: n for n in json.loads(up["kubectl"]("get", "nodes", "-o", "json").stdout)["items"]}
    assert nodes[CP]["metadata"]["labels"]["example.com/tier"] == "front"
    assert nodes[WORKER]["metadata"]["labels"]["example.com/tier"] == "back"
    # the kubeadm patch (KubeletConfiguration maxPods) reached the worker's kubelet only
    assert nodes[WORKER]["status"]["capacity"]["pods"] == "42"
    assert nodes[CP]["status"]["capacity"]["pods"] == "110"


def test_the_feature_gate_is_on_in_the_api_server_and_the_kubelet(real, up):
    apiserver = kubectl_bin(real).with_name("kube-apiserver")
    helptext = subprocess.run([str(apiserver), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True).stdout
    assert f"{GATE}=true|false (ALPHA - default=false)" in helptext, "pick another alpha gate for this version"
    metrics = up["kubectl"]("get", "--raw", "/metrics").stdout
    enabled = [line for line in metrics.splitlines()
               if line.startswith("kubernetes_feature_enabled{") and f'name="{GATE}"' in line]
    assert enabled and enabled[0].endswith(" 1"), enabled
    configz = json.loads(up["kubectl"]("get", "--raw", f"/api/v1/nodes/{WORKER}/proxy/configz").stdout)
    assert configz["kubeletconfig"]["featureGates"].get(GATE) is True, configz["kubeletconfig"].get("featureGates")
    assert configz["kubeletconfig"]["maxPods"] == 42


def test_runtime_config_turns_on_an_alpha_api_version(up):
    versions = up["kubectl"]("api-versions").stdout.split()
    assert ALPHA_ON in versions, versions
    assert ALPHA_OFF not in versions, versions       # alpha versions stay off unless asked for
    assert up["kubectl"]("get", "storageversions.internal.apiserver.k8s.io").returncode == 0


def test_the_api_server_is_published_on_the_configured_address_and_port(real, up):
    assert "WARNING" not in up["run"].stdout        # 127.0.0.2 is a loopback address: nothing to warn about
    server = up["kubectl"]("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    assert server == f"https://{API_ADDRESS}:{up['api_port']}", server
    assert up["kubectl"]("get", "--raw", "/readyz").stdout == "ok"     # TLS: the address is in the serving cert
    # the cluster container publishes exactly that, and nothing on the default loopback address
    ports = json.loads(subprocess.run(["docker", "inspect", f"dindind-{NAME}"], stdout=subprocess.PIPE, check=True,
                                      text=True).stdout)[0]["NetworkSettings"]["Ports"]
    api = [b for b in ports["6443/tcp"] or []]
    assert [(b["HostIp"], b["HostPort"]) for b in api] == [(API_ADDRESS, str(up["api_port"]))], ports


def _find(doc, key):
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        doc = list(doc.values())
    if isinstance(doc, list):
        for item in doc:
            found = _find(item, key)
            if found is not None:
                return found
    return None


def test_containerd_runs_with_the_patch(up):
    sh = host.Shell(NAME)
    for node in (CP, WORKER):
        _, info = sh.run(node, ["crictl", "info"])
        assert _find(json.loads(info), "maxContainerLogLineSize") == 32768, (node, info[:2000])


def _wait_phase(kubectl, pod, phases=("Succeeded", "Failed"), seconds=180):
    phase = ""
    for _ in range(seconds):
        phase = kubectl("get", "pod", pod, "-o", "jsonpath={.status.phase}").stdout
        if phase in phases:
            break
        time.sleep(1)
    return phase


def test_a_pod_reads_the_host_folder_mounted_into_the_worker(real, up):
    k = up["kubectl"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reads-host"},
           "spec": {"restartPolicy": "Never", "nodeSelector": {"example.com/tier": "back"},
                    "containers": [{"name": "c", "image": e2e_image(real, "busybox"), "imagePullPolicy": "Never",
                                    "command": ["cat", "/host/hello.txt"],
                                    "volumeMounts": [{"name": "h", "mountPath": "/host", "readOnly": True}]}],
                    "volumes": [{"name": "h", "hostPath": {"path": "/srv/shared", "type": "Directory"}}]}}
    k("apply", "-f", "-", input=json.dumps(pod))
    assert _wait_phase(k, "reads-host") == "Succeeded", k("describe", "pod", "reads-host").stdout[-3000:]
    assert k("logs", "reads-host").stdout == "hello from the host\n"


def test_a_node_port_answers_on_the_host_port_mapped_to_the_worker(real, up):
    line = next(l for l in up["run"].stdout.splitlines() if l.strip().startswith("port 127.0.0.1:"))
    assert line.endswith(f"/TCP -> {WORKER}:{NODE_PORT}"), line
    port = int(line.split(":")[1].split("/")[0])
    k = up["kubectl"]
    k("create", "deployment", "echo", f"--image={e2e_image(real, 'agnhost')}", "--", "/agnhost", "netexec",
      "--http-port=8080")
    k("patch", "deployment", "echo", "--type=json", "-p", json.dumps([
        {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"},
        {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"example.com/tier": "back"}}]))
    k("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo"},
        "spec": {"type": "NodePort", "selector": {"app": "echo"},
                 "ports": [{"port": 80, "targetPort": 8080, "nodePort": NODE_PORT}]}}))
    k("rollout", "status", "deployment/echo", "--timeout=180s", timeout=240)
    pods = {p["metadata"]["name"] for p in json.loads(k("get", "pods", "-l", "app=echo", "-o", "json").stdout)["items"]}
    deadline, answer = time.monotonic() + 60, b""
    while time.monotonic() < deadline and answer.decode(errors="replace").strip() not in pods:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
                answer = b"".join(iter(lambda: s.recv(4096), b"")).partition(b"\r\n\r\n")[2]
        except OSError:
            time.sleep(1)
    assert answer.decode(errors="replace").strip() in pods, answer


def test_an_image_loaded_from_an_archive_runs_as_a_pod(real, up):
    archive = up["dir"] / "archived.tar"
    busybox = e2e_image(real, "busybox")
    subprocess.run(["docker", "tag", busybox, ARCHIVED], check=True)
    try:
        subprocess.run(["docker", "save", "-o", str(archive), ARCHIVED], check=True)
    finally:
        subprocess.run(["docker", "rmi", ARCHIVED], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = real.doit("cluster:load", "--name", NAME, "--archive", str(archive), timeout=600)
    assert f"docker.io/{ARCHIVED}" in load.stdout, load.stdout
    k = up["kubectl"]
    k("run", "from-archive", f"--image={ARCHIVED}", "--image-pull-policy=Never", "--restart=Never",
      "--overrides", json.dumps({"spec": {"nodeSelector": {"example.com/tier": "back"}}}),
      "--", "sh", "-c", "echo archive-image-ran")
    assert _wait_phase(k, "from-archive") == "Succeeded", k("describe", "pod", "from-archive").stdout[-3000:]
    assert k("logs", "from-archive").stdout == "archive-image-ran\n"


def test_kubeconfig_merge_gives_a_context_and_internal_works_from_a_node(real, up):
    merged = up["dir"] / "user-kubeconfig"
    real.doit("cluster:kubeconfig", "--name", NAME, "--merge", env=up["env"])
    assert merged.stat().st_mode & 0o777 == 0o600
    r = subprocess.run([str(up["kc"]), f"--kubeconfig={merged}", "--context", f"dindind-{NAME}", "get", "nodes",
                        "-o", "name"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0 and sorted(r.stdout.split()) == [f"node/{CP}", f"node/{WORKER}"], r.stdout + r.stderr
    out = real.doit("cluster:kubeconfig", "--name", NAME, "--internal").stdout
    path = real.path / "artifacts" / "clusters" / NAME / "kubeconfig-internal"
    assert any(line.endswith("artifacts/clusters/" + NAME + "/kubeconfig-internal") for line in out.splitlines()), out
    b64 = base64.b64encode(path.read_bytes()).decode()
    # from beside the nodes: the worker's own kubectl with the internal address (port 6443 on the cluster network)
    _, out = host.Shell(NAME).run(WORKER, ["sh", "-c", f"echo {b64} | base64 -d > /tmp/kc && "
                                           "kubectl --kubeconfig /tmp/kc get nodes -o name; rm -f /tmp/kc"])
    assert sorted(out.split()) == [f"node/{CP}", f"node/{WORKER}"], out
