"""GPU-hour accounting and budgets: what a job held, and what happens when it is spent."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from adamw_operator.accounting import account, cpu_cores
from adamw_operator.decisions import decide
from adamw_operator.status import get_condition, rfc3339

from tests.operator.test_decisions import NOW, running_status, spec_of, worker


def on_node(w, node="node-1"):
    return replace(w, node=node)


def test_usage_charges_what_the_pods_held_between_reconciles() -> None:
    spec = spec_of(gpusPerReplica=2)
    both = [on_node(worker(0)), on_node(worker(1))]
    u = account(None, spec, both, NOW)
    assert (u["gpuSeconds"], u["heldGPUs"], u["heldCPUCores"]) == (0.0, 4.0, 2.0)
    assert account(u, spec, both, NOW + timedelta(seconds=30)) == u  # deferred, not lost
    u = account(u, spec, both, NOW + timedelta(seconds=90))
    assert u["gpuSeconds"] == 360.0 and u["cpuCoreSeconds"] == 180.0
    # rank 1 finished: from now on only rank 0 holds its GPUs; a pod not yet scheduled holds none
    u = account(u, spec, [both[0], worker(1, exit_code=0)], NOW + timedelta(seconds=120))
    assert u["gpuSeconds"] == 480.0 and u["heldGPUs"] == 2.0
    u = account(u, spec, [worker(0, phase="Pending")], NOW + timedelta(seconds=150))
    assert u["gpuSeconds"] == 540.0 and u["heldGPUs"] == 0.0
    assert (cpu_cores("500m"), cpu_cores(2), cpu_cores("x")) == (0.5, 2.0, None)


def test_a_spent_gpu_budget_stops_the_job_after_saving_and_raising_it_resumes() -> None:
    spec = spec_of(gpusPerReplica=2, cleanPodPolicy="None", budget={"maxGPUHours": 1})
    pods = [on_node(worker(0)), on_node(worker(1))]
    usage = {"gpuSeconds": 3500.0, "heldGPUs": 4.0, "heldCPUCores": 2.0,
             "accountedTime": rfc3339(NOW - timedelta(seconds=10))}
    near = decide(spec=spec, status=running_status(usage=usage, lastGoodCheckpoint={"step": 30}),
                  workers=pods, now=NOW)
    assert [e.reason for e in near.events] == ["BudgetWarning"] and "98%" in near.events[0].message
    assert near.status["phase"] == "Running" and near.requeue_after is not None and near.requeue_after <= 15.01
    assert decide(spec=spec, status=near.status, workers=pods, now=NOW).events == []  # warned once
    spent = decide(spec=spec, status=near.status, workers=pods, now=NOW + timedelta(seconds=20))
    failed = get_condition(spent.status, "Failed")
    assert spent.status["phase"] == "Failed" and failed["reason"] == "BudgetExceeded"
    assert "maxGPUHours" in failed["message"] and "resume from checkpoint step 30" in failed["message"]
    assert sorted(spent.delete_pods) == ["demo-worker-0", "demo-worker-1"]  # even with cleanPodPolicy None
    stopped = [on_node(worker(r, exit_code=143)) for r in (0, 1)]
    still = decide(spec=spec, status=spent.status, workers=stopped, now=NOW + timedelta(seconds=30))
    assert still.status["phase"] == "Failed" and still.create_ranks == []
    raised = spec_of(gpusPerReplica=2, cleanPodPolicy="None", budget={"maxGPUHours": 2})
    again = decide(spec=raised, status=still.status, workers=stopped, now=NOW + timedelta(seconds=40))
    assert again.status["phase"] == "Pending" and again.status["attempt"] == spent.status["attempt"] + 1
    assert again.status["preemptions"] == 0 and "BudgetRaised" in [e.reason for e in again.events]
    assert get_condition(again.status, "Failed")["status"] == "False"


def test_a_finished_job_shows_everything_it_held() -> None:
    spec = spec_of(gpusPerReplica=1)
    usage = account(None, spec, [on_node(worker(0)), on_node(worker(1))], NOW - timedelta(seconds=30))
    done = [on_node(worker(r, exit_code=0)) for r in (0, 1)]
    st = decide(spec=spec, status=running_status(usage=usage), workers=done, now=NOW).status
    assert st["phase"] == "Succeeded" and st["usage"]["gpuSeconds"] == 60.0 and st["usage"]["heldGPUs"] == 0
