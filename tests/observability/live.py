"""A real trainer, a DCGM-shaped exporter and a real Prometheus that scrapes both.

Prometheus is configured the way the Prometheus Operator configures it from the chart's
PodMonitor: the PodMonitor's relabelings are copied in, and the Kubernetes service-discovery
labels they read (`__meta_kubernetes_*`) are given as static target labels, standing in for
what pod discovery would attach to a trainer pod named gpt-worker-0 in namespace ml.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prometheus_client
import yaml
from adamw_operator.metrics import OperatorMetrics

from tests.chart.helm import CHART, MONITORING_APIS, by_kind, render
from tests.trainer.trainer_process import free_port

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, JOB, POD = "ml", "gpt", "gpt-worker-0"


def dcgm_exposition(pod: str, namespace: str) -> bytes:
    """What dcgm-exporter serves for a pod with two GPUs (its own pod/namespace labels name
    the GPU's user; Prometheus renames them exported_* because the target has its own)."""
    lines = ["# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).", "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
             "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).", "# TYPE DCGM_FI_DEV_FB_USED gauge"]
    for gpu, (util, mib) in enumerate([(87, 30512), (91, 30640)]):
        labels = (f'gpu="{gpu}",UUID="GPU-{gpu:08d}",device="nvidia{gpu}",modelName="NVIDIA H100 80GB HBM3",'
                  f'Hostname="node-1",container="trainer",namespace="{namespace}",pod="{pod}"')
        lines += [f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {util}", f"DCGM_FI_DEV_FB_USED{{{labels}}} {mib}"]
    return ("\n".join(lines) + "\n").encode()


def start_dcgm_server() -> ThreadingHTTPServer:
    body = dcgm_exposition(POD, NAMESPACE)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def pod_monitor_relabel_configs() -> list[dict[str, Any]]:
    """The chart's PodMonitor relabelings in Prometheus' own spelling, after the ones the
    Prometheus Operator always adds (namespace, pod, container from discovery)."""
    (pm,) = by_kind(render(apis=MONITORING_APIS), "PodMonitor")
    configs: list[dict[str, Any]] = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]
    names = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    for r in pm["spec"]["podMetricsEndpoints"][0]["relabelings"]:
        configs.append({names.get(k, k): (v.lower() if k == "action" else v) for k, v in r.items()})
    return configs


def pod_target(address: str, port_name: str) -> dict[str, Any]:
    """A static target carrying the labels Kubernetes pod discovery gives a trainer pod's port."""
    return {"targets": [address], "labels": {
        "__meta_kubernetes_namespace": NAMESPACE, "__meta_kubernetes_pod_name": POD,
        "__meta_kubernetes_pod_container_name": "trainer",
        "__meta_kubernetes_pod_container_port_name": port_name,
        "__meta_kubernetes_pod_label_training_adamw_io_job_name": JOB}}


def trainer_config(port: int, tmp: Path) -> dict[str, Any]:
    return {
        "data": {"source": "synthetic", "evalIntervalSteps": 20, "evalBatches": 1},
        "model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 32},
        "training": {"maxSteps": 1_000_000, "batchSize": 4, "logIntervalSteps": 5, "threads": 1},
        "schedule": {"warmupSteps": 10},
        "metrics": {"port": port, "host": "127.0.0.1"},
        "checkpoint": {"dir": str(tmp / "checkpoints"), "intervalSteps": 50, "keepLatest": 2},
        "terminationMessagePath": str(tmp / "termination-log"),
    }


def start_operator_metrics() -> tuple[Any, int]:
    """The operator's real metrics registry, served as `adamw-operator --metrics-port` does,
    holding what an operator that has run one job through a crash would report."""
    metrics = OperatorMetrics()
    metrics.set_phase(NAMESPACE, JOB, "Running")
    metrics.restarts.labels(namespace=NAMESPACE, job_name=JOB, reason="Crashed").inc()
    metrics.failures.labels(namespace=NAMESPACE, job_name=JOB, reason="NoProgress")  # exported at 0
    metrics.reconcile_errors.labels(kind="ApiError")
    metrics.reconcile_seconds.observe(0.01)
    metrics.replacement_seconds.observe(0.3)
    port = free_port()
    server, _ = prometheus_client.start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    return server, port


class LiveStack:
    """Trainer + DCGM stand-in + Prometheus, stopped by their own PIDs."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dcgm: ThreadingHTTPServer | None = None
        self.operator_server: Any = None
        self.prom_url = ""

    def start(self) -> LiveStack:
        trainer_port, prom_port = free_port(), free_port()
        cfg = self.tmp / "trainer.json"
        cfg.write_text(json.dumps(trainer_config(trainer_port, self.tmp)))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAMW_RESTART_COUNT": "1"}
        train_bin = shutil.which("adamw-train") or str(ROOT / ".venv" / "bin" / "adamw-train")
        self.procs.append(subprocess.Popen([train_bin, "--config", str(cfg)], env=env,
                                           stdout=open(self.tmp / "trainer.log", "wb"), stderr=subprocess.STDOUT))
        self.dcgm = start_dcgm_server()
        self.operator_server, operator_port = start_operator_metrics()
        prom_cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(CHART / "files" / "alerts.yaml")],
            "scrape_configs": [
                {"job_name": "ml/adamw-trainers", "static_configs": [
                    pod_target(f"127.0.0.1:{trainer_port}", "metrics"),
                    # The pod's rendezvous port, which pod discovery also lists: must be dropped.
                    pod_target(f"127.0.0.1:{trainer_port}", "rendezvous"),
                 ], "relabel_configs": pod_monitor_relabel_configs()},
                # As the chart's ServiceMonitor has it: job from the Service's metrics-job
                # label, and the operator's `namespace` label (the job's) honoured.
                {"job_name": "adamw-operator", "honor_labels": True, "static_configs": [{
                    "targets": [f"127.0.0.1:{operator_port}"],
                    "labels": {"namespace": "adamw-system", "pod": "adamw-operator-5d9c7-x2x4q"}}]},
                {"job_name": "gpu-operator/dcgm-exporter", "static_configs": [{
                    "targets": [f"127.0.0.1:{self.dcgm.server_address[1]}"],
                    "labels": {"namespace": "gpu-operator", "pod": "nvidia-dcgm-exporter-x7k2p"}}]},
            ],
        }
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        self.procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={self.tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=open(self.tmp / "prometheus.log", "wb"), stderr=subprocess.STDOUT))
        self.prom_url = f"http://127.0.0.1:{prom_port}"
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            if proc.poll() is None:
                proc.kill()
        if self.dcgm:
            self.dcgm.shutdown()
        if self.operator_server:
            self.operator_server.shutdown()

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.prom_url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("/api/v1/query", query=expr)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 40.0, min_results: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                last = self.query(expr)
                if len(last) >= min_results:
                    return last
            time.sleep(0.5)
        logs = (self.tmp / "trainer.log").read_text()[-2000:] + (self.tmp / "prometheus.log").read_text()[-2000:]
        raise AssertionError(f"no data for {expr} after {timeout}s:\n{logs}")
