"""What the create actions share: the plan, the engine, what was created."""

from dataclasses import dataclass, field

from dindind.docker import containers
from dindind.cluster.status import Status


@dataclass
class Context:
    plan: object
    node_image: str
    status: Status
    publish: tuple = None          # (host address, host port) for the API server, or None
    privilege: dict = None
    node_ips: dict = field(default_factory=dict)
    created: list = field(default_factory=list)   # (kind, name), for rollback
    kubeconfig: bytes = None
    cgroup_v1: bool = False       # the nodes see cgroup v1 (actions/config.py)
    timings: dict = field(default_factory=dict)      # "init NODE" / "join NODE" -> seconds kubeadm took
    restarted: float = None       # epoch seconds the existing nodes were started again (restart), else None
    engine: object = containers       # what talks to the engine (a fake in unit tests)

    def node_exec(self, node, cmd, check=True):
        return self.engine.exec_in(node.name, cmd, check=check)
