"""`adamw-job run FILE`: run an AdamWTrainingJob on this machine, no cluster needed.

    adamw-job run examples/quickstart.yaml              # runs/<job name>/ holds everything
    adamw-job run job.yaml --dir /data/runs/my-job      # elsewhere
    adamw-job run job.yaml --prometheus                 # plus a local Prometheus with the alerts

The manifest is the one `kubectl apply` takes; it is validated with the operator's model
and checks (same messages), and its workers run as local processes with the command and
environment the operator gives its pods, supervised by the operator's decision function.
Ctrl-C asks the workers to save a checkpoint and stop; running the command again resumes.

The run directory holds checkpoints/, pods/<pod>/container.log (each worker's output),
loss.png and status.json (the final job status, as `kubectl get awj -o yaml` would show).

Exit codes: 0 succeeded, 1 failed, 2 invalid manifest or cannot run here (e.g. the run
directory is in use by another run), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from adamw_trainer.config import ConfigError

from .loss_curve import loss_points, write_loss_curve
from .manifest import load_manifest, validate_manifest
from .run_dir import RunDirBusy, exclusive
from .supervisor import LocalJob, LocalRunError
from .view import ConsoleView, summary

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
RANK0_LOGS = "rank0-logs.txt"  # rank 0's log files of every attempt and run, in order


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="adamw-job", description="Run AdamWTrainingJobs locally.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job manifest's workers as local processes")
    run.add_argument("file", type=Path, help="an AdamWTrainingJob manifest (YAML or JSON)")
    run.add_argument("--dir", type=Path, default=None,
                     help="run directory (default: runs/<job name>); checkpoints live in <dir>/checkpoints")
    run.add_argument("--prometheus", action="store_true",
                     help="start a local Prometheus scraping the workers, with the chart's alert rules")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        manifest = load_manifest(args.file)
        metadata, spec = validate_manifest(manifest, str(args.file))
    except ConfigError as err:
        print(f"adamw-job: {err}", file=sys.stderr)
        return EXIT_INVALID
    name = metadata["name"]
    if spec.suspend:  # on a cluster the job would wait, workers deleted, until resumed
        print(f"adamw-job: {name} has spec.suspend: true, so there is nothing to run; "
              "set it to false to run it")
        return EXIT_OK
    run_dir = args.dir or Path("runs") / name
    return asyncio.run(_run(name, metadata.get("namespace") or "default", spec, args.file, run_dir,
                            prometheus=args.prometheus))


async def _run(name: str, namespace: str, spec, manifest: Path, run_dir: Path, *, prometheus: bool) -> int:  # noqa: ANN001
    try:
        with exclusive(run_dir.resolve()):
            return await _run_locked(name, namespace, spec, manifest, run_dir, prometheus=prometheus)
    except RunDirBusy as err:
        print(f"adamw-job: {err}", file=sys.stderr)
        return EXIT_INVALID


async def _run_locked(name: str, namespace: str, spec, manifest: Path, run_dir: Path, *,  # noqa: ANN001
                      prometheus: bool) -> int:
    view = _RecordingView(run_dir.resolve())
    job = LocalJob(name=name, spec=spec, root=run_dir.resolve(), reporter=view, namespace=namespace)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, job.request_stop)
    loop.add_signal_handler(signal.SIGTERM, job.request_stop)
    view.header(name, manifest, job.root, spec.replicas, spec.trainer.training.max_steps)
    started = time.monotonic()
    server = None
    try:
        if prometheus:
            from .prometheus import start_prometheus

            server = await start_prometheus(job, view)
        status = await job.run()
    except LocalRunError as err:
        view.message(f"adamw-job: cannot run {name} locally: {err}")
        return EXIT_INVALID
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        if server is not None:
            await server.stop()
    final = {"phase": "Interrupted" if job.interrupted and status.get("phase") not in ("Succeeded", "Failed")
             else status.get("phase"), "status": status}
    (job.root / "status.json").write_text(json.dumps(final, indent=2, default=str))
    points, resumes = loss_points(_rank0_logs(job.root))
    validation, _ = loss_points(_rank0_logs(job.root), event="eval", field="validationLoss")
    plot = write_loss_curve(points, resumes, job.root / "loss.png", f"{name}: training and validation loss",
                            validation=validation)
    view.message(summary(
        name, status, interrupted=job.interrupted, wall_seconds=time.monotonic() - started,
        run_dir=job.root, plot=plot, first_loss=points[0][1] if points else None,
        last_loss=points[-1][1] if points else None, target=spec.trainer.training.target_validation_loss,
        loss_steps=(points[0][0], points[-1][0]) if points else None))
    if job.interrupted and status.get("phase") not in ("Succeeded", "Failed"):
        return EXIT_INTERRUPTED
    return EXIT_OK if status.get("phase") == "Succeeded" else EXIT_FAILED


class _RecordingView(ConsoleView):
    """The console view, plus a record of rank 0's logs for the loss curve across runs."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir

    def worker_started(self, worker) -> None:  # noqa: ANN001
        if worker.rank == 0:
            with contextlib.suppress(OSError), open(self.run_dir / RANK0_LOGS, "a") as f:
                f.write(f"{worker.log_file}\n")
        super().worker_started(worker)


def _rank0_logs(run_dir: Path) -> list[Path]:
    try:
        return [Path(line) for line in (run_dir / RANK0_LOGS).read_text().splitlines() if line]
    except OSError:
        return []


if __name__ == "__main__":
    sys.exit(main())
