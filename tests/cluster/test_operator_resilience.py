"""The operator's own troubles on the real control plane: its process SIGKILLed mid-job.

The job must still finish as it would have, and no worker pod may be created twice (the
scheduler's `Scheduled` Events count every pod the server ever held).
"""

from __future__ import annotations

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.training import (
    kill,
    operator_pods,
    pod_creations,
    reasons,
    submit,
    training_job,
    wait_finished,
    wait_phase,
    wait_running,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(400)]
SYSTEM = "adamw-system"


def _created(cluster: Cluster, ns: str) -> dict[str, int]:
    return {name: len(uids) for name, uids in pod_creations(cluster, ns).items()}


def _restart_count(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses") or [])


def test_operator_killed_mid_job_comes_back_in_place_and_creates_no_duplicates(operator: Cluster):
    with operator.namespace("opkill") as ns:
        submit(operator, training_job("opkill", ns, trainer={"training": {"maxSteps": 400}}))
        wait_running(operator, ns, "opkill", attempt=0, replicas=2)
        wait_phase(operator, ns, "opkill", "Running", timeout=60)
        pod = operator_pods(operator)[0]
        before = _restart_count(pod)
        kill(operator, SYSTEM, pod["metadata"]["name"])  # the operator's process: no shutdown at all
        # while it is down, a worker crashes: the operator that comes back must restart the gang once
        kill(operator, ns, "opkill-worker-1")
        operator.wait_for("the operator restarted in place", lambda: (lambda p: _restart_count(p) > before and all(
            c.get("ready") for c in p["status"]["containerStatuses"]))(operator.get("pod", pod["metadata"]["name"],
                                                                                    SYSTEM)), timeout=90)
        assert [p["metadata"]["uid"] for p in operator_pods(operator)] == [pod["metadata"]["uid"]]
        st = wait_finished(operator, ns, "opkill")
        assert st["phase"] == "Succeeded", st
        assert st["restarts"] == 1 and st["attempt"] == 1, st
        assert _created(operator, ns) == {"opkill-worker-0": 2, "opkill-worker-1": 2}
        assert reasons(operator, ns, "opkill").count("CrashedRestart") == 1
