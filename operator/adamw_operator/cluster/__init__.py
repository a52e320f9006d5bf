"""A local Kubernetes cluster without Docker: upstream control plane + virtual kubelets.

`make cluster` / `python -m adamw_operator.cluster up` starts one under `.cluster/`;
the test suite starts one per session through the same `ControlPlane`.
"""
