"""pytest fixtures for the harness; import them into a conftest.py to use them elsewhere:

    from tests.kube.fixtures import kube, fake_kubelet  # noqa: F401  (pytest finds them by name)

The operator itself is started inside each test body with `run_operator(...)` (see
kopf_runner.py): Kopf must not be started from a yield fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.kube.emulator import KubeAPI, kube_api
from tests.kube.kubelet import FakeKubelet


@pytest_asyncio.fixture()
async def kube(tmp_path: Path) -> AsyncIterator[KubeAPI]:
    """A running API emulator with namespace `default`; KUBECONFIG points at it."""
    async with kube_api(workdir=tmp_path) as api:
        yield api


@pytest_asyncio.fixture()
async def fake_kubelet(kube: KubeAPI) -> AsyncIterator[FakeKubelet]:
    """A process-free kubelet: pods become Running at once; end them with `finish()`."""
    async with FakeKubelet(kube) as kubelet:
        yield kubelet
        assert not kubelet.errors, kubelet.errors
