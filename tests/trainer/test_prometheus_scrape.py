"""A real Prometheus scrapes a real training run; promtool lints the exposition."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse

import pytest
from trainer_process import (
    free_port,
    http_get,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    write_config,
)

# The metric names are a contract with the dashboard and alerts (issue 2).
CONTRACT = [
    "adamw_train_loss",
    "adamw_step",
    "adamw_steps_total",
    "adamw_nonfinite_steps_total",
    "adamw_tokens_total",
    "adamw_samples_total",
    "adamw_step_duration_seconds_bucket",
    "adamw_learning_rate",
    "adamw_grad_norm",
    "adamw_last_step_timestamp_seconds",
    "adamw_validation_loss",
    "adamw_best_validation_loss",
    "adamw_time_to_target_seconds",
    "adamw_memory_peak_bytes",
    "adamw_trainer_info",
    "adamw_param_group_learning_rate",
    "adamw_param_group_parameters",
]

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs prometheus (make tools)")


def prom_query(port: int, expr: str) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr})
    body = json.loads(http_get(f"http://127.0.0.1:{port}/api/v1/query?{q}"))
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.mark.slow
def test_real_prometheus_scrapes_every_contract_metric(tmp_path):
    trainer_port, prom_port = free_port(), free_port()
    cfg = small_config(
        tmp_path,
        data={"source": "synthetic", "evalIntervalSteps": 10, "evalBatches": 1},
        training={"maxSteps": 1_000_000, "batchSize": 4, "logIntervalSteps": 5, "threads": 1},
        metrics={"port": trainer_port, "host": "127.0.0.1"},
    )
    trainer = subprocess.Popen(
        trainer_cmd(write_config(tmp_path, cfg)), env=trainer_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )
    prom = None
    try:
        status = wait_for_status(trainer_port, trainer)
        for key in ("step", "maxSteps", "loss", "tokensPerSecond", "nonfiniteRate",
                    "lastStepTimestamp", "rank", "worldSize", "configHash"):
            assert key in status, f"/status lacks {key}"
        assert status["maxSteps"] == 1_000_000 and status["worldSize"] == 1

        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: trainer\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{trainer_port}']}}]\n"
        )
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        missing = CONTRACT
        deadline = time.monotonic() + 45
        while missing and time.monotonic() < deadline:
            time.sleep(1)
            try:
                missing = [m for m in CONTRACT if not prom_query(prom_port, m)]
            except OSError:
                continue
        assert not missing, f"Prometheus has no data for {missing}"

        # Only the rank label comes from the trainer (the scrape adds job/instance).
        for series in prom_query(prom_port, "adamw_step"):
            assert set(series["metric"]) == {"__name__", "rank", "job", "instance"}
            assert series["metric"]["rank"] == "0"
        # Wait until the loss and validation loss have been measured at least once.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            val = prom_query(prom_port, "adamw_validation_loss")[0]["value"][1]
            loss = prom_query(prom_port, "adamw_train_loss")[0]["value"][1]
            if val != "NaN" and loss != "NaN":
                break
            time.sleep(1)
        assert 0 < float(val) < 10 and 0 < float(loss) < 10
        # The NaN rate the alerts will use: the ratio of the two counters' rates.
        time.sleep(2)
        rate = prom_query(prom_port, "rate(adamw_nonfinite_steps_total[30s]) / rate(adamw_steps_total[30s])")
        assert rate and float(rate[0]["value"][1]) == 0.0
        # One series per AdamW group (the default rule's two here), labelled by group.
        groups = {s["metric"]["group"]: float(s["value"][1]) for s in prom_query(prom_port, "adamw_param_group_parameters")}
        assert set(groups) == {"decay", "no_decay"} and all(n > 0 for n in groups.values()), groups
        info = prom_query(prom_port, "adamw_trainer_info")[0]["metric"]
        assert info["world_size"] == "1" and info["precision"] == "fp32" and info["config_hash"]

        # The exposition passes promtool's linter with nothing to say.
        exposition = http_get(f"http://127.0.0.1:{trainer_port}/metrics")
        lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint

        status = json.loads(http_get(f"http://127.0.0.1:{trainer_port}/status"))
        assert status["step"] > 0 and math.isfinite(status["loss"])
        assert status["tokensPerSecond"] > 0 and status["lastStepTimestamp"] > time.time() - 30
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=10)
        trainer.terminate()
        try:
            trainer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait()
