"""PID 1 of the cluster image: start the inner Docker engine, load the node image.

Runs inside the top-level container (nested mode). Side effects: starts
``dockerd`` (its data on the /var/lib/docker volume), loads the embedded node
image unless the engine already has it (a restarted container keeps it), then
waits; SIGTERM stops dockerd cleanly and exits 0.
"""

import os
import signal
import subprocess
import sys
import time

DOCKERD_LOG = "/var/log/dockerd.log"


def log(msg):
    print(f"dindind: {msg}", flush=True)


def start_dockerd(timeout=60):
    """Start dockerd and wait until it answers; return the process."""
    out = open(DOCKERD_LOG, "ab")
    p = subprocess.Popen(["dockerd", "--host=unix:///var/run/docker.sock"], stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["docker", "version"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            return p
        if p.poll() is not None:
            break
        time.sleep(0.3)
    with open(DOCKERD_LOG, "rb") as f:
        tail = f.read()[-2000:].decode(errors="replace")
    raise SystemExit(f"dindind: dockerd did not start:\n{tail}")


def load_node_image(ref, archive):
    """Load the node image from its archive unless the engine has it already."""
    if subprocess.run(["docker", "image", "inspect", ref], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode == 0:
        log(f"node image {ref} already loaded")
        return
    t = time.monotonic()
    if archive.endswith(".zst"):
        z = subprocess.Popen(["zstd", "-dc", archive], stdout=subprocess.PIPE)
        rc = subprocess.run(["docker", "load", "-q"], stdin=z.stdout).returncode
        z.stdout.close()
        rc = rc or z.wait()
    else:
        rc = subprocess.run(["docker", "load", "-q", "-i", archive]).returncode
    if rc:
        raise SystemExit(f"dindind: cannot load the node image from {archive}")
    log(f"node image {ref} loaded in {time.monotonic() - t:.1f}s")


def main(argv=None):
    stop = {"now": False}

    def on_term(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    dockerd = start_dockerd()
    log("dockerd is up")
    load_node_image(os.environ["DINDIND_NODE_IMAGE"], os.environ["DINDIND_NODE_ARCHIVE"])
    log("ready")
    while not stop["now"]:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        if dockerd.poll() is not None:
            log("dockerd exited")
            return 1
        time.sleep(0.5)
    log("stopping")
    dockerd.terminate()
    try:
        dockerd.wait(timeout=30)
    except subprocess.TimeoutExpired:
        dockerd.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
