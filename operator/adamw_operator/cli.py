"""`adamw-operator`: run the AdamWTrainingJob operator (a wrapper around `kopf run`).

    adamw-operator --all-namespaces                      # cluster-wide
    adamw-operator -n team-a -n team-b                   # only these namespaces
    adamw-operator --peering adamw-operator --all-namespaces   # HA: one of N replicas acts

Liveness: GET http://<pod>:8080/healthz (Kopf's probe). Metrics: GET :9100/metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from . import __version__


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log collectors index without parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("k8s_ref",):  # Kopf attaches the object's reference
            if hasattr(record, key):
                out["object"] = getattr(record, key)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adamw-operator", description="Run the AdamWTrainingJob operator.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="watch jobs in every namespace (needs cluster-wide RBAC)")
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs like 'team-*' work)")
    peering = p.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME", default=None,
                         help="HA: replicas sharing this KopfPeering name elect one active")
    peering.add_argument("--standalone", action="store_true", help="no peering (single replica; default)")
    p.add_argument("--priority", type=int, default=None,
                   help="peering priority of this replica (default: the replica started first acts)")
    p.add_argument("--default-trainer-image", metavar="IMAGE",
                   default=os.environ.get("ADAMW_DEFAULT_TRAINER_IMAGE") or None,
                   help="trainer image for jobs without spec.image (env ADAMW_DEFAULT_TRAINER_IMAGE)")
    p.add_argument("--liveness-port", type=int, default=8080, help="port of GET /healthz (0: off)")
    p.add_argument("--metrics-port", type=int, default=9100, help="port of GET /metrics (0: off)")
    p.add_argument("--poll-interval", type=float, default=10.0,
                   help="seconds between reads of rank 0's /status (progress, hang detection)")
    p.add_argument("--resync-interval", type=float, default=60.0,
                   help="seconds between full re-checks of every unfinished job")
    p.add_argument("--log-format", choices=("json", "plain"), default="json", help="log line format")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def configure_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # Kopf logs "Handler ... succeeded" for every watch event: thousands a minute on a
        # busy cluster, and nothing our own logs and Events do not already say.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def start_priority() -> int:
    """A peering priority that falls with this process's start time (ms since the epoch).

    Replicas of one Deployment share their flags, and Kopf pauses *every* peer when two
    share the highest priority, so equal defaults would leave an HA install with no active
    operator at all. With this default the longest-running replica acts, a newcomer (a
    rolling update, a restarted pod) stands by until it is the oldest.
    """
    return -int(time.time() * 1000)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        print("adamw-operator: give --all-namespaces or at least one --namespace", file=sys.stderr)
        return 2
    configure_logging(args.log_format, args.verbose)

    import kopf
    from prometheus_client import start_http_server

    from .controller import Controller
    from .handlers import register
    from .kube import KubeClient
    from .metrics import OperatorMetrics

    metrics = OperatorMetrics()
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In-cluster service account, else the kubeconfig (via the kubernetes client)."""
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = logging.WARNING  # our own Events tell the job's story
        settings.peering.mandatory = args.peering is not None
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        if args.metrics_port:
            start_http_server(args.metrics_port, registry=metrics.registry)

    controller = Controller(KubeClient(), metrics, poll_interval=args.poll_interval,
                            resync_interval=args.resync_interval,
                            default_image=args.default_trainer_image)
    register(registry, controller)
    kopf.run(
        registry=registry,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.priority if args.priority is not None else start_priority(),
        clusterwide=args.all_namespaces,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
