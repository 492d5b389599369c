"""Where the Kubernetes tree comes from: one module per source."""
