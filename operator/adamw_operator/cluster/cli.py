"""`make cluster` / `make cluster-down`: a local control plane under `.cluster/`.

    python -m adamw_operator.cluster up [--root .cluster] [--nodes 1] [--gpus-per-node 0]
    python -m adamw_operator.cluster status
    python -m adamw_operator.cluster down
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .control_plane import ClusterError, ControlPlane, NodeSpec

USAGE = """\
A local Kubernetes {version} control plane is running (API server {server}).

  export KUBECONFIG={kubeconfig} PATH={bin_dir}:$PATH
  kubectl get nodes
  helm install adamw-operator charts/adamw-operator -n adamw-system --create-namespace --wait
  kubectl apply -f examples/quickstart.yaml
  kubectl get awj -w

(helm is in .tools/helm after `make tools`. The virtual kubelets run the chart's images as
this checkout's own entry points; see docs/local-cluster.md.)

Logs: {logs}    Stop it and remove its state: make cluster-down
"""


def _plane(args: argparse.Namespace) -> ControlPlane:
    nodes = [NodeSpec(f"node-{i + 1}", gpus=args.gpus_per_node) for i in range(args.nodes)]
    return ControlPlane(Path(args.root), nodes=nodes)


def up(args: argparse.Namespace) -> int:
    plane = _plane(args)
    state = plane.running()
    if state is not None:
        print(f"A cluster is already running under {plane.root} (API server {state.server}); "
              "reusing it. `make cluster-down` stops it.")
    else:
        if plane.load_state() is not None:
            print(f"Cleaning up a cluster under {plane.root} that is no longer running.")
            plane.stop(remove=True)
        print(f"Starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and "
              f"{len(plane.nodes)} virtual kubelet(s) under {plane.root} ...", flush=True)
        try:
            state = plane.start(detach=True)
        except ClusterError as e:
            print(f"make cluster: {e}", file=sys.stderr)
            print("Retry with: make cluster   (the partial state was stopped)", file=sys.stderr)
            return 1
    from .binaries import KUBE_VERSION, default_bin_dir

    print(USAGE.format(version=KUBE_VERSION, server=state.server, kubeconfig=plane.kubeconfig,
                       logs=plane.logs, bin_dir=default_bin_dir()))
    return 0


def status(args: argparse.Namespace) -> int:
    plane = _plane(args)
    state = plane.running()
    if state is None:
        print(f"No cluster is running under {plane.root}.")
        return 1
    print(f"API server {state.server}; kubeconfig {plane.kubeconfig}; processes: "
          + ", ".join(f"{n}={p}" for n, p in state.pids.items()))
    return 0


def down(args: argparse.Namespace) -> int:
    plane = _plane(args)
    if plane.load_state() is None and not plane.root.exists():
        print(f"No cluster under {plane.root}; nothing to stop.")
        return 0
    plane.stop(remove=True)
    print(f"Stopped the cluster and removed {plane.root}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adamw_operator.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--root", default=".cluster", help="state, logs and kubeconfig (default .cluster)")
    parser.add_argument("--nodes", type=int, default=1, help="virtual nodes to start (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=0,
                        help="nvidia.com/gpu capacity each node reports (default 0)")
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "status": status}[args.command](args)
