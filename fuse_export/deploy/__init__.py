"""Deployment: the Triton model repository, `serve` (a tritonserver over it), its environment and models."""
