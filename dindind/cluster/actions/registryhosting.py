"""The ConfigMap kube-public/local-registry-hosting (KEP-1755): tools read where the local registry is."""

from dindind.cluster import api, registry
from dindind.cluster.plan import API_PORT

TITLE = "Publishing the local registry"


def execute(ctx):
    # the kubeconfig names the control plane by its container name: ask its address (a SAN) instead
    server = f"https://{ctx.node_ips[ctx.plan.control_plane.name]}:{API_PORT}"
    collection = f"/api/v1/namespaces/{registry.CONFIGMAP_NAMESPACE}/configmaps"
    api.put_object(ctx.kubeconfig, collection, registry.CONFIGMAP_NAME, registry.configmap_json(ctx.plan),
                   server=server)
