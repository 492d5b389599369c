"""The build stage: the Kubernetes tree, CNI plugins, .debs, the base, node and cluster images."""
