"""Node avoidance on the real control plane, two virtual nodes (node-1, node-2): a node the
job's worker crashed on twice is kept out of the next attempts' placement by the real
scheduler, and said so in the job's status and Events."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.training import kill, reasons, submit, training_job, wait_running, wait_status

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]


def test_a_node_the_worker_crashed_on_twice_is_avoided_by_the_next_attempts(operator: Cluster):
    with operator.namespace("avoid") as ns:
        # kills before any checkpoint: no NoProgress verdict, this test is about placement
        submit(operator, training_job("avoid", ns, replicas=1, trainer={"training": {"maxSteps": 5000}},
                                      restartPolicy={"maxRestarts": 6, "maxRestartsWithoutProgress": 0}))
        kills: Counter[str] = Counter()
        attempt = 0
        while not kills or max(kills.values()) < 2:  # two nodes: at most three kills
            [pod] = wait_running(operator, ns, "avoid", attempt=attempt, replicas=1)
            kills[pod["spec"]["nodeName"]] += 1
            kill(operator, ns, "avoid-worker-0")
            attempt += 1
        [(bad, _)] = [(n, c) for n, c in kills.items() if c == 2]
        st = wait_status(operator, ns, "avoid", "avoidedNodes", lambda s: s.get("avoidedNodes") == [bad])
        assert st["nodeFailures"][bad] == 2, st
        [pod] = wait_running(operator, ns, "avoid", attempt=attempt, replicas=1)
        assert pod["spec"]["nodeName"] != bad  # the scheduler honoured it
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"] == [
            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": [bad]}]}]
        assert reasons(operator, ns, "avoid").count("AvoidingNode") == 1
