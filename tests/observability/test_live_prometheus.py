"""Every dashboard panel and every alert rule, against a real Prometheus scraping a real trainer."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.chart.helm import CHART

from .live import JOB, NAMESPACE, POD, LiveStack

pytestmark = pytest.mark.slow
# What Grafana substitutes: the variables selected to this job, and $__rate_interval
# (at least four scrape intervals; 1 s scrapes here).
MACROS = {"$namespace": NAMESPACE, "$job": JOB, "$__rate_interval": "20s"}


def dashboard_targets():
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def substitute(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    assert "$" not in expr.replace('"$1"', ""), f"unsubstituted macro in {expr}"
    return expr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    live = LiveStack(tmp_path_factory.mktemp("live")).start()
    try:
        # Enough history for 20 s rates, a validation pass, and checkpoint saves.
        live.wait_for(f'adamw_checkpoint_saves_total{{job_name="{JOB}"}} > 0')
        live.wait_for(f'count_over_time(adamw_step{{job_name="{JOB}"}}[1m]) >= 8')
        live.wait_for('count_over_time(DCGM_FI_DEV_GPU_UTIL[1m]) >= 3', min_results=2)
        yield live
    finally:
        live.stop()


def test_series_carry_the_labels_the_podmonitor_gives_them(stack):
    # Only the metrics port is scraped; the rendezvous port's target is relabelled away.
    (target,) = [t for t in stack.api("/api/v1/targets")["data"]["activeTargets"]
                 if t["labels"].get("job_name") == JOB]
    assert target["health"] == "up"
    (series,) = stack.query(f'adamw_step{{job_name="{JOB}"}}')
    assert {k: series["metric"][k] for k in ("namespace", "pod", "job_name", "rank")} == {
        "namespace": NAMESPACE, "pod": POD, "job_name": JOB, "rank": "0"}


@pytest.mark.parametrize("title,expr", dashboard_targets(), ids=[f"{t}:{i}" for i, (t, _) in enumerate(dashboard_targets())])
def test_every_panel_query_returns_data(stack, title, expr):
    result = stack.wait_for(substitute(expr), timeout=20)
    assert all(r["metric"].get("job_name") in (JOB, None) for r in result)
    assert all(r["metric"].get("namespace") in (NAMESPACE, None) for r in result)


def test_dcgm_panels_join_gpus_to_the_job_in_grafana_units(stack):
    util = {t: e for t, e in dashboard_targets()}["GPU utilisation (DCGM)"]
    values = {r["metric"]["exported_pod"]: float(r["value"][1]) for r in stack.query(substitute(util))}
    assert values == {POD: pytest.approx(89.0)}, "mean of the pod's two GPUs, in percent"
    mem = {t: e for t, e in dashboard_targets()}["GPU memory used (DCGM)"]
    (row,) = stack.query(substitute(mem))
    assert row["metric"]["job_name"] == JOB
    assert float(row["value"][1]) == (30512 + 30640) * 1024 * 1024, "MiB converted to bytes"


def test_alert_rules_evaluate_without_error(stack):
    # Give every group a couple of evaluations (1 s interval) on the live data.
    time.sleep(3)
    groups = stack.api("/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) >= 20
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
    # The recording rules the alerts build on produce this job's series.
    for record in ("namespace_job_name:adamw_steps:rate5m", "namespace_job_name:adamw_tokens:rate5m",
                   "namespace_job_name:adamw_in_warmup", "namespace_job_name:adamw_checkpoint_age_seconds",
                   "namespace_job_name_rank:adamw_step_duration_seconds:mean10m"):
        assert stack.wait_for(f'{record}{{job_name="{JOB}"}}', timeout=15), record
    # A healthy run fires nothing (pending is fine: windows are longer than this test), and
    # the operator is seen as up.
    firing = [a for a in stack.api("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]
    assert firing == []
    assert stack.query('absent(up{job="adamw-operator"} == 1)') == []


def test_promql_uses_only_known_metric_names(stack):
    """Dashboard and alerts name only series the trainer, the operator or DCGM export."""
    names = {r for r in stack.api("/api/v1/label/__name__/values")["data"]}
    rules = (CHART / "files" / "alerts.yaml").read_text()
    exprs = [e for _, e in dashboard_targets()] + re.findall(r"expr: (.*(?:\n {10,}.*)*)", rules)
    for expr in exprs:
        # Recording-rule names (level:metric:operation) are not exported series: skip them.
        for metric in set(re.findall(r"(?<![:\w])(adamw_[a-z_]+|DCGM_FI_[A-Z_]+)(?![:\w])", expr)):
            assert metric in names, f"{metric} is not exported"
