"""A Kubernetes Job that runs the cluster image as a pod: a cluster, its e2e run, the result (pure).

For CI systems that run on Kubernetes (as Kubernetes' own CI ran docker-in-docker):
the pod is privileged (the inner engine and systemd in the nodes need it; a
pod cannot express the capability fallback's device rule), the inner
engine's /var/lib/docker is an emptyDir on the node's disk (overlayfs cannot
stack on the container's own overlay root), /run and /tmp are memory
emptyDirs (the tmpfs of `docker run`), and the image's ``--e2e`` argument
brings the cluster up, runs e2e.test and exits with its result, so the
Job's status is the e2e result. Host-side only: not shipped in the image.
"""

import yaml

from dindind.base import config
from dindind.base.errors import DindindError
from dindind.cluster.host import STOP_TIMEOUT
from dindind.docker import reference

RESOURCES = {"requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi"},
             "limits": {"memory": "8Gi", "ephemeral-storage": "40Gi"}}
DEADLINE = 3 * 3600           # seconds the whole Job may take


def job(image, name="dindind-e2e", focus=None, skip=None):
    """The Job as a dict; ``focus``/``skip`` are ginkgo regexes for the e2e run."""
    reference.parse(image)
    config.check_name(name, "job name")
    args = ["--e2e"]
    for opt, value in (("--e2e-focus", focus), ("--e2e-skip", skip)):
        if value:
            problem = config.check_regex(value)
            if problem:
                raise DindindError(f"{opt} {value!r} {problem}", hint="give a Go/RE2-style regular expression")
            args.append(f"{opt}={value}")
    labels = {"app.kubernetes.io/name": "dindind", "app.kubernetes.io/instance": name}
    memory = lambda: {"medium": "Memory"}  # noqa: E731 - one fresh mapping per volume
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": DEADLINE,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": dict(labels)},      # a copy: no YAML anchors in the output
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": STOP_TIMEOUT,
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "containers": [{
                        "name": "cluster",
                        "image": image,
                        "args": args,
                        "securityContext": {"privileged": True},
                        "resources": RESOURCES,
                        "volumeMounts": [
                            {"name": "docker", "mountPath": "/var/lib/docker"},
                            {"name": "run", "mountPath": "/run"},
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "modules", "mountPath": "/lib/modules", "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "docker", "emptyDir": {"sizeLimit": RESOURCES["limits"]["ephemeral-storage"]}},
                        {"name": "run", "emptyDir": memory()},
                        {"name": "tmp", "emptyDir": memory()},
                        {"name": "modules", "hostPath": {"path": "/lib/modules", "type": "Directory"}},
                    ],
                },
            },
        },
    }


def render(image, **kw):
    return yaml.safe_dump(job(image, **kw), sort_keys=False)
