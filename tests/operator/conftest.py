from tests.kube.fixtures import fake_kubelet, kube  # noqa: F401  (fixtures, found by name)
