"""A local-directory volume provisioner: every PersistentVolumeClaim gets a folder.

It stands in for a cluster's storage driver (a CSI driver, or rancher's
local-path-provisioner on kind): for each unbound claim it creates a PersistentVolume
of the claim's size and access modes, backed by `hostPath` folder under `--root`, with
`claimRef` set so the real PV controller (kube-controller-manager) binds the two. The
virtual kubelets mount a claim by reading its bound PV's path, so every node sees the same
folder (one machine: ReadWriteMany comes free). When a claim is deleted its volume is
released; a `Delete` reclaim policy removes the PV and the folder, as a driver would.

Not done: capacity limits (a folder has none), storage classes beyond matching the
claim's own, topology, snapshots, resizing.

    python -m adamw_operator.cluster.provisioner --kubeconfig FILE --root DIR
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

logger = logging.getLogger("adamw.provisioner")
PROVISIONER = "adamw.io/local-dir"


def volume_for(claim: dict[str, Any], root: Path) -> dict[str, Any]:
    """The PersistentVolume that serves `claim` (a pure function of the claim)."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    uid = meta["uid"]
    folder = root / meta["namespace"] / f"{meta['name']}-{uid[:8]}"
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{uid}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.get("storageClassName") or "",
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"], "uid": uid},
        },
    }


class Provisioner:
    def __init__(self, api: client.CoreV1Api, root: Path) -> None:
        self.api = api
        self.root = root

    def sync_once(self) -> None:
        claims = self.api.api_client.sanitize_for_serialization(
            self.api.list_persistent_volume_claim_for_all_namespaces())["items"]
        volumes = self.api.api_client.sanitize_for_serialization(
            self.api.list_persistent_volume())["items"]
        claimed = {(v["spec"].get("claimRef") or {}).get("uid") for v in volumes}
        for claim in claims:
            if claim["spec"].get("volumeName") or claim["metadata"]["uid"] in claimed:
                continue
            if claim["metadata"].get("deletionTimestamp"):
                continue
            pv = volume_for(claim, self.root)
            Path(pv["spec"]["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)
            try:
                self.api.create_persistent_volume(pv)
                logger.info("provisioned %s for %s/%s", pv["metadata"]["name"],
                            claim["metadata"]["namespace"], claim["metadata"]["name"])
            except ApiException as e:
                if e.status != 409:
                    raise
        for volume in volumes:
            released = (volume.get("status") or {}).get("phase") in ("Released", "Failed")
            ours = (volume["metadata"].get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
            if released and ours and volume["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                path = Path(volume["spec"]["hostPath"]["path"])
                try:
                    self.api.delete_persistent_volume(volume["metadata"]["name"])
                except ApiException as e:
                    if e.status != 404:
                        raise
                if path.is_relative_to(self.root):
                    shutil.rmtree(path, ignore_errors=True)

    def run(self, interval: float = 0.5) -> None:
        while True:
            try:
                self.sync_once()
            except Exception:  # the API server may be restarting; try again shortly
                logger.exception("provisioner sync failed")
            time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path, help="folder that holds the volumes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config.load_kube_config(args.kubeconfig)
    args.root.mkdir(parents=True, exist_ok=True)
    Provisioner(client.CoreV1Api(), args.root.resolve()).run()


if __name__ == "__main__":
    main()
