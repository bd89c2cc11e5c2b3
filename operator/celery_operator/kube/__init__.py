"""Side effects on the Kubernetes API server."""
