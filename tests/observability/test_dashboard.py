"""The Grafana dashboard's structure (no Grafana server exists here: its queries run in
test_live_prometheus.py against a real Prometheus)."""

from __future__ import annotations

import json
import re

from tests.chart.helm import CHART

DASHBOARD = json.loads((CHART / "files" / "dashboard.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def test_identity_and_variables():
    assert DASHBOARD["uid"] == "adamw-training", "a fixed uid keeps links stable across installs"
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "job_name" in variables["job"]["query"]["query"] and "$namespace" in variables["job"]["query"]["query"]
    assert "namespace" in variables["namespace"]["query"]["query"]


def test_every_query_is_scoped_and_uses_the_datasource_variable():
    for panel in PANELS:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${datasource}"
            if "adamw_operator_" in expr:  # the operator's own series carry no job label
                assert "adamw_operator_failure" in expr or "reconcile" in expr or 'namespace=~"$namespace"' in expr
            else:
                assert 'namespace=~"$namespace"' in expr and 'job_name=~"$job"' in expr, panel["title"]
            # Range windows follow Grafana's $__rate_interval, never a fixed duration.
            assert not re.search(r"\[\d+[smh]\]", expr), f"{panel['title']}: fixed window in {expr}"


def test_the_issue_panels_are_there():
    titles = " | ".join(p["title"].lower() for p in PANELS)
    for want in ("loss", "non-finite", "steps/s", "tokens/s", "p50 / p99", "learning rate", "gradient norm",
                 "checkpoint age", "checkpoint step", "saves and failures", "restarts and rollbacks",
                 "step time per rank", "peak memory", "gpu utilisation", "gpu memory"):
        assert want in titles, want
    exprs = " ".join(t["expr"] for p in PANELS for t in p["targets"])
    assert "adamw_validation_loss" in exprs and "adamw_rollbacks_total" in exprs


def test_dcgm_panels_use_its_units_and_exported_pod():
    by_title = {p["title"]: p for p in PANELS}
    util, mem = by_title["GPU utilisation (DCGM)"], by_title["GPU memory used (DCGM)"]
    assert util["fieldConfig"]["defaults"]["unit"] == "percent"  # DCGM_FI_DEV_GPU_UTIL is 0-100
    assert mem["fieldConfig"]["defaults"]["unit"] == "bytes"
    assert "* 1048576" in mem["targets"][0]["expr"]  # DCGM_FI_DEV_FB_USED is MiB
    for panel in (util, mem):
        assert "exported_pod" in panel["targets"][0]["expr"]


def test_panels_do_not_overlap():
    cells = set()
    for panel in DASHBOARD["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))
        assert g["x"] + g["w"] <= 24
