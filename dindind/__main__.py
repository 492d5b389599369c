"""``python -m dindind``: small commands outside doit.

    python -m dindind engine               make sure a Docker engine answers (root)
    python -m dindind schema [cluster]     print the build config's JSON Schema (cluster: the cluster config's)
    python -m dindind check [PATH]         validate a build config (and $SOURCE_DATE_EPOCH), or a cluster
                                           config (a file with apiVersion: dindind.dev/v1alpha1)
    python -m dindind run-flags [IMAGE]    the `docker run` flags a cluster container needs on this engine
                                           (IMAGE: the built cluster image by default)
    python -m dindind kubeconfig CONTAINER [--server URL]
                                           a running cluster container's kubeconfig, its server the
                                           published API address (or URL)
    python -m dindind manifest [IMAGE] [--name N] [--focus RE] [--skip RE]
                                           a Kubernetes Job running the cluster image as a pod: the
                                           cluster, then e2e; the Job's result is the e2e result
"""

import json
import shlex
import sys

from dindind.base import clusterconfig, config
from dindind.docker import engine
from dindind.base.errors import DindindError


def _cluster_image():
    from dindind.base import fsutil, layout

    stamp = fsutil.read_json(layout.Layout().stamp("cluster"), "cluster image stamp",
                             hint="run `doit build` first, or name the image: run-flags IMAGE")
    return stamp["tags"][0]


def run_flags(argv):
    from dindind.cluster import host
    from dindind.docker import containers, reference

    if len(argv) > 1:
        raise DindindError("run-flags takes at most one argument, the image", hint="python -m dindind run-flags [IMAGE]")
    image = argv[0] if argv else _cluster_image()
    reference.parse(image)
    from dindind.docker import engine

    if engine.image_id(image) is None:        # the probe runs the image: a missing one is not the engine's fault
        raise DindindError(f"no image {image!r} in this engine", hint="build it (`doit build`) or load it first")
    return " ".join(shlex.quote(f) for f in host.run_flags(containers.privilege_opts(image)))


def kubeconfig(argv):
    from dindind.cluster import host

    if not argv or argv[0].startswith("-"):
        raise DindindError("kubeconfig needs the cluster container's name",
                           hint="python -m dindind kubeconfig CONTAINER [--server URL]")
    server = None
    if argv[1:2] == ["--server"] and len(argv) == 3:
        server = argv[2]
    elif len(argv) != 1:
        raise DindindError(f"unexpected arguments {' '.join(argv[1:])!r}",
                           hint="python -m dindind kubeconfig CONTAINER [--server URL]")
    return host.container_kubeconfig(argv[0], server)


def manifest(argv):
    """``manifest [IMAGE] [--name N] [--focus RE] [--skip RE]``: the Job's YAML."""
    from dindind.cluster import manifest as manifest_mod

    usage = "python -m dindind manifest [IMAGE] [--name NAME] [--focus RE] [--skip RE]"
    kw, image, rest = {}, None, list(argv)
    while rest:
        arg = rest.pop(0)
        opt, eq, value = arg.partition("=")
        if opt in ("--name", "--focus", "--skip"):
            if not eq:
                if not rest:
                    raise DindindError(f"{opt} needs a value", hint=usage)
                value = rest.pop(0)
            kw[opt[2:]] = value
        elif image is None and not arg.startswith("-"):
            image = arg
        else:
            raise DindindError(f"unexpected argument {arg!r}", hint=usage)
    return manifest_mod.render(image or _cluster_image(), **kw)


def check(path):
    """``check [PATH]``: a cluster config when the file names an apiVersion, else a build config."""
    if path:
        try:
            with open(path, "rb") as f:
                head = f.read(clusterconfig.MAX_BYTES + 1)
        except OSError:
            head = b""              # config.load says what is wrong with the path
        if clusterconfig.looks_versioned(head.decode("utf-8", "replace")):
            doc = clusterconfig.load(path)
            nodes = doc["nodes"] or [{"role": "control-plane"}] + [{"role": "worker"}] * 2
            print(f"{path}: ok ({clusterconfig.API_VERSION} {clusterconfig.KIND}: "
                  f"{sum(n['role'] == 'control-plane' for n in nodes)} control plane, "
                  f"{sum(n['role'] == 'worker' for n in nodes)} worker(s))")
            return
    cfg = config.load(path)
    cfg.source_date_epoch       # a malformed $SOURCE_DATE_EPOCH fails the build: say so here
    notice = clusterconfig.deprecation(cfg)
    if notice:
        print(notice)
    print(f"{cfg.path}: ok")


def main(argv):
    cmd = argv[0] if argv else "help"
    try:
        if cmd == "engine":
            print(engine.ensure())
        elif cmd == "schema":
            if argv[1:] not in ([], ["cluster"]):
                raise DindindError(f"unexpected arguments {' '.join(argv[1:])!r}",
                                   hint="python -m dindind schema [cluster]")
            print(json.dumps(clusterconfig.json_schema() if argv[1:] else config.json_schema(), indent=2))
        elif cmd == "check":
            check(argv[1] if len(argv) > 1 else None)
        elif cmd == "run-flags":
            print(run_flags(argv[1:]))
        elif cmd == "kubeconfig":
            sys.stdout.write(kubeconfig(argv[1:]))
        elif cmd == "manifest":
            sys.stdout.write(manifest(argv[1:]))
        else:
            print(__doc__.strip())
            return 0 if cmd in ("help", "-h", "--help") else 2
    except DindindError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
