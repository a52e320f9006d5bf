"""`python -m adamw_operator.cluster.kubelet --kubeconfig F --node N --root DIR`: one node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from .api import load_kubeconfig
from .kubelet import DEFAULT_CAPACITY, Options, claim_pod_cidr, make_kubelet


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r}: expected key=value")
        out[key] = value
    return out


def _taint(text: str) -> dict[str, str]:
    key_value, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    key, _, value = key_value.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adamw_operator.cluster.kubelet",
                                description="A virtual kubelet: runs one Node's pods as local processes.")
    p.add_argument("--kubeconfig", type=Path, required=True,
                   help="the node's kubeconfig (client cert CN system:node:<node>, O system:nodes)")
    p.add_argument("--node", required=True, help="the Node's name")
    p.add_argument("--root", type=Path, required=True,
                   help="state folder: control.json, pods/<ns>_<name>_<uid8>/, claims/<ns>/<claim>/")
    p.add_argument("--capacity", type=_pairs, default=None, metavar="cpu=16,memory=64Gi,nvidia.com/gpu=8",
                   help=f"the Node's capacity and allocatable (default {_show(DEFAULT_CAPACITY)})")
    p.add_argument("--labels", type=_pairs, default={}, metavar="k=v,...", help="extra Node labels")
    p.add_argument("--register-with-taints", dest="taints", type=_taint, action="append", default=[],
                   metavar="key[=value]:Effect", help="taints set when the Node registers (repeatable)")
    p.add_argument("--python-bin", type=Path, default=None,
                   help="folder with the images' entry points (adamw-train, adamw-operator); "
                        "default: this Python's own bin")
    p.add_argument("--pod-cidr", default=None, metavar="127.X.0.0/16",
                   help="loopback range for pod IPs (default: the first 127.X.0.0/16, X >= 20, that no other "
                        "virtual kubelet on this machine holds; each holds its range with an flock)")
    p.add_argument("--dns-kubeconfig", type=Path, default=None,
                   help="credentials of the cluster-DNS stand-in (list pods and services in every namespace, "
                        "like CoreDNS); without it only pods on this node resolve")
    p.add_argument("--heartbeat-seconds", type=float, default=2.0, help="Lease renewal period")
    p.add_argument("--node-status-seconds", type=float, default=10.0, help="Node status update period")
    p.add_argument("--probe-period-max", type=float, default=None,
                   help="cap probes' periodSeconds (tests; a real kubelet honours the pod's value)")
    p.add_argument("--restart-backoff", type=float, default=1.0, help="first in-place restart back-off (s)")
    p.add_argument("--restart-backoff-max", type=float, default=10.0, help="longest restart back-off (s)")
    p.add_argument("--control-port", type=int, default=0, help="control API port on 127.0.0.1 (0: any free)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _pod_cidr(root: Path, wanted: str | None) -> str:
    """The node's pod range, the same as before a restart where possible (ROOT/pod-cidr)."""
    record = root / "pod-cidr"
    previous = record.read_text().strip() if record.exists() else None
    cidr = claim_pod_cidr(wanted, previous)
    root.mkdir(parents=True, exist_ok=True)
    record.write_text(cidr + "\n")
    return cidr


def _show(pairs: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs.items())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=f"%(asctime)s %(levelname)s kubelet[{args.node}] %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    root = args.root.resolve()
    capacity = dict(DEFAULT_CAPACITY)
    if args.capacity:
        capacity.update(args.capacity)
    options = Options(node=args.node, root=root, capacity=capacity, labels=args.labels, taints=args.taints,
                      pod_cidr=_pod_cidr(root, args.pod_cidr),
                      python_bin=args.python_bin or Path(sys.executable).parent,
                      heartbeat_seconds=args.heartbeat_seconds, node_status_seconds=args.node_status_seconds,
                      probe_period_max=args.probe_period_max, restart_backoff=args.restart_backoff,
                      restart_backoff_max=args.restart_backoff_max, control_port=args.control_port)
    scratch = root / "kubeconfig"
    kubelet = make_kubelet(load_kubeconfig(args.kubeconfig, scratch),
                           options, load_kubeconfig(args.dns_kubeconfig, scratch) if args.dns_kubeconfig else None)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await kubelet.run(stop)
        finally:
            await kubelet.api.close()
            if kubelet.dns_api is not None:
                await kubelet.dns_api.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
