"""The virtual kubelet (`adamw_operator.cluster.kubelet`) against the real control plane.

Two nodes of its own (`vk-a`, `vk-b`) join the session's cluster through the same
`ControlPlane.start_kubelet` that `make cluster` uses, tainted so no other test's pods land
there; this module's pods tolerate the taint and pick a node by its hostname label, so
the real kube-scheduler binds them. `vk-b` is the one whose heartbeats stop.

The first tests need no cluster: the image table, DNS answers and the pod_process
extensions the kubelet uses.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from adamw_operator.cluster.control_plane import NodeSpec, stop_pid
from adamw_operator.cluster.kubelet import dns, images
from adamw_operator.local.pod_process import any_address, mount_namespace_argv, prepare_pod

from tests.cluster.harness import Cluster

ROOT = Path(__file__).resolve().parents[2]
TAINT = "adamw.io/virtual-kubelet-test"
NODES = {"vk-a": NodeSpec("vk-a", cpu="4", memory="8Gi", gpus=2), "vk-b": NodeSpec("vk-b")}


# ---- without a cluster ---------------------------------------------------------------


def _dockerfile_entry(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = path.read_text()
    found = {k: tuple(json.loads(v)) for k, v in re.findall(r"^(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", text, re.M)}
    return found["ENTRYPOINT"], found["CMD"]


@pytest.mark.parametrize(("name", "dockerfile"), [("adamw-trainer", "trainer_image/Dockerfile"),
                                                  ("adamw-operator", "Dockerfile")])
def test_known_images_run_the_dockerfiles_entry_points(name: str, dockerfile: str) -> None:
    entrypoint, cmd = _dockerfile_entry(ROOT / dockerfile)
    assert images.IMAGES[name] == images.Image(entrypoint=entrypoint, cmd=cmd)
    for image in (f"ghcr.io/adamw-operator/{name}:0.1.0", f"{name}:dev", name,
                  f"registry.local:5000/a/b/{name}@sha256:{'0' * 64}"):
        assert images.container_command({"image": image}) == [*entrypoint, *cmd]
        assert images.container_command({"image": image, "args": ["-x"]}) == [*entrypoint, "-x"]
        assert images.container_command({"image": image, "command": ["python"], "args": ["-V"]}) == ["python", "-V"]


def test_unknown_image_names_the_images_it_can_run() -> None:
    with pytest.raises(images.UnknownImage, match=r'"busybox:1.36".*adamw-trainer.*adamw-operator'):
        images.container_command({"image": "busybox:1.36", "command": ["sh"]})


async def test_dns_answers_from_the_service_and_its_pods_as_coredns_would() -> None:
    service = {"spec": {"clusterIP": "None", "selector": {"job": "j"}, "publishNotReadyAddresses": False}}

    def pod(name: str, uid: str, ip: str | None, ready: bool, **spec: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "uid": uid, "labels": {"job": "j"}}, "spec": spec,
                "status": {"phase": "Running", **({"podIP": ip} if ip else {}),
                           "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}

    pods = [pod("w-0", "u0", None, True, hostname="w-0", subdomain="svc"),  # ours, IP not yet reported
            pod("w-1", "u1", "127.5.0.3", False, hostname="w-1", subdomain="svc")]

    async def get_service(namespace: str, name: str) -> dict[str, Any] | None:
        return service if (namespace, name) == ("ns", "svc") else None

    async def list_pods(namespace: str, selector: Any) -> list[dict[str, Any]]:
        return pods

    async def ask(name: str) -> str | None:
        return await dns.resolve(name, get_service=get_service, list_pods=list_pods, own_ips={"u0": "127.5.0.2"})

    assert await ask("w-0.svc.ns.svc.cluster.local") == "127.5.0.2"
    assert await ask("w-1.svc.ns.svc") is None  # not ready, and the Service does not publish it
    service["spec"]["publishNotReadyAddresses"] = True
    assert await ask("w-1.svc.ns.svc") == "127.5.0.3"
    assert await ask("svc.ns.svc.cluster.local") == "127.5.0.2"  # headless: a pod's address
    assert await ask("w-0.other.ns.svc") is None
    service["spec"]["clusterIP"] = "10.96.0.9"
    assert await ask("svc.ns.svc") is None  # a ClusterIP is kube-proxy's, not emulated
    assert dns.names_in(["MASTER_ADDR=w-0.svc.ns.svc.cluster.local", "http://svc.ns.svc:80/x"]) == [
        "w-0.svc.ns.svc.cluster.local", "svc.ns.svc"]


def test_pod_process_any_address_volume_files_and_bind_mounts(tmp_path: Path) -> None:
    assert any_address("--bind=0.0.0.0:8080 http://0.0.0.0/ 10.0.0.0 0.0.0.01", "127.9.0.2") == \
        "--bind=127.9.0.2:8080 http://127.9.0.2/ 10.0.0.0 0.0.0.01"
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "0123456789"},
           "spec": {"volumes": [{"name": "tok", "projected": {"sources": []}}, {"name": "s", "secret": {}}],
                    "containers": [{"name": "c", "command": ["python", "-c", "pass", "0.0.0.0"],
                                    "env": [{"name": "HOST", "value": "0.0.0.0"}],
                                    "volumeMounts": [
                                        {"name": "tok", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                                        {"name": "s", "mountPath": "/etc/secret"}]}]}}
    launch = prepare_pod(pod, root=tmp_path, pod_ip="127.9.0.2", config_maps={},
                         volume_files={"tok": {"token": b"abc"}, "s": {"pw": b"x"}},
                         bind_paths=("/var/run/secrets",), any_address_to_pod_ip=True)
    assert launch.argv[-1] == "127.9.0.2" and launch.env["HOST"] == "127.9.0.2"
    local_tok = launch.bind_mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
    assert (local_tok / "token").read_bytes() == b"abc"
    assert (launch.layout.mounts["/etc/secret"] / "pw").read_bytes() == b"x"
    assert "/var/run/secrets/kubernetes.io/serviceaccount" not in launch.layout.mounts
    argv = mount_namespace_argv(launch.bind_mounts, ["python", "-V"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"] and argv[-2:] == ["python", "-V"]


# ---- on the real control plane ----------------------------------------------------------


class Node:
    def __init__(self, cluster: Cluster, spec: NodeSpec) -> None:
        self.cluster, self.name = cluster, spec.name
        self.root = cluster.plane.root / "nodes" / spec.name

    @property
    def url(self) -> str:
        return json.loads((self.root / "control.json").read_text())["url"]

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
            return json.loads(r.read())

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        """The kubelet's record of the pod ({} until its watch has seen it)."""
        return next((p for p in self.control("GET", "/pods") if (p["namespace"], p["name"]) == (namespace, name)), {})


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> Iterator[dict[str, Node]]:
    plane = cluster.plane
    for spec in NODES.values():
        plane.start_kubelet(spec)
    found = {name: Node(cluster, spec) for name, spec in NODES.items()}
    try:
        for node in found.values():
            cluster.wait_for(f"{node.name}'s control.json", lambda n=node: (n.root / "control.json").exists(), 30)
            cluster.kubectl("taint", "node", node.name, f"{TAINT}=true:NoSchedule", "--overwrite")
        yield found
    finally:
        assert plane.state is not None
        for name in NODES:
            pid = plane.state.pids.get(f"kubelet-{name}")
            if pid:
                stop_pid(pid, grace=20)
        cluster.kubectl("delete", "node", *NODES, "--wait=false", check=False)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    with cluster.namespace("vk") as name:
        cluster.wait_for("the default ServiceAccount", lambda: cluster.kubectl(
            "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, 30)
        yield name


def _pod(name: str, node: str, code: str, **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "ghcr.io/adamw-operator/adamw-trainer:0.1.0",
                 "command": ["python", "-c", code], **spec.pop("container", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **spec.pop("metadata", {})},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                     "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
                     "restartPolicy": "Never", "containers": [container], **spec}}


def _state(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    statuses = cluster.get("pod", name, ns).get("status", {}).get("containerStatuses") or [{}]
    return statuses[0].get("state", {})


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in obj.get("status", {}).get("conditions") or [] if c["type"] == kind), None)


@pytest.mark.cluster
def test_node_registers_renews_its_lease_and_stays_ready(cluster: Cluster, nodes: dict[str, Node]) -> None:
    node = cluster.get("node", "vk-a")
    assert _condition(node, "Ready") == "True"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2" and node["status"]["allocatable"]["cpu"] == "4"
    assert node["status"]["addresses"] == [{"type": "InternalIP", "address": "127.0.0.1"}]
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "vk-a"
    first = cluster.get("lease", "vk-a", "kube-node-lease")["spec"]["renewTime"]
    assert cluster.wait_for("a renewed Lease", lambda: cluster.get(
        "lease", "vk-a", "kube-node-lease")["spec"]["renewTime"] != first, timeout=10)
    assert _condition(cluster.get("node", "vk-a"), "Ready") == "True"


@pytest.mark.cluster
def test_pods_end_with_exit_code_and_termination_message(cluster: Cluster, nodes: dict[str, Node], ns: str) -> None:
    cluster.apply(_pod("ok", "vk-a", "open('/dev/termination-log','w').write('all done'); print('hi')"), ns)
    cluster.apply(_pod("bad", "vk-a", "import sys; open('/dev/termination-log','w').write('{\"reason\":\"Boom\"}');"
                       " sys.exit(3)"), ns)
    cluster.apply(_pod("logs", "vk-a", "import sys; print('the last words'); sys.exit(1)",
                       container={"terminationMessagePolicy": "FallbackToLogsOnError"}), ns)
    finished = {}
    for name in ("ok", "bad", "logs"):
        finished[name] = cluster.wait_for(f"pod {name} to finish", lambda n=name: (
            lambda p: p if p["status"].get("phase") in ("Succeeded", "Failed") else None)(cluster.get("pod", n, ns)))
    ok, bad, logs = (finished[n] for n in ("ok", "bad", "logs"))
    assert ok["status"]["phase"] == "Succeeded"
    assert ok["status"]["containerStatuses"][0]["state"]["terminated"].items() >= {
        "exitCode": 0, "reason": "Completed", "message": "all done"}.items()
    assert bad["status"]["phase"] == "Failed"
    assert bad["status"]["containerStatuses"][0]["state"]["terminated"].items() >= {
        "exitCode": 3, "reason": "Error", "message": '{"reason":"Boom"}'}.items()
    assert "the last words" in logs["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    assert ok["status"]["podIP"].startswith("127.") and ok["status"]["podIP"] != bad["status"]["podIP"]
    assert ok["status"]["hostIP"] == "127.0.0.1" and ok["spec"]["nodeName"] == "vk-a"
    assert _condition(ok, "Ready") == "False" and _condition(ok, "PodScheduled") == "True"
    seen = nodes["vk-a"].pod(ns, "ok")
    assert Path(seen["log"]).read_text().strip() == "hi"
    assert cluster.kubectl("logs", "ok", "-n", ns).stdout.strip() == "hi"  # through the kubelet's HTTPS


@pytest.mark.cluster
def test_nothing_a_container_started_outlives_it(cluster: Cluster, nodes: dict[str, Node], ns: str) -> None:
    code = ("import subprocess; child = subprocess.Popen(['sleep', '600']); "
            "open('/dev/termination-log', 'w').write(str(child.pid))")
    cluster.apply(_pod("parent", "vk-a", code), ns)
    state = cluster.wait_for("parent finished", lambda: _state(cluster, ns, "parent").get("terminated"))
    child = int(state["message"])
    cluster.wait_for("the child gone", lambda: not Path(f"/proc/{child}").exists() or Path(
        f"/proc/{child}/stat").read_text().split()[2] == "Z", timeout=5)


@pytest.mark.cluster
def test_deployment_pods_become_ready_through_their_readiness_probe(cluster: Cluster, nodes: dict[str, Node],
                                                                    ns: str) -> None:
    # Both replicas serve 0.0.0.0:8080, after a delay: each gets its own address, so both bind.
    serve = ("import time, http.server as h; time.sleep(1.5); "
             "h.ThreadingHTTPServer(('0.0.0.0', 8080), h.SimpleHTTPRequestHandler).serve_forever()")
    template = _pod("web", "vk-a", serve, restartPolicy="Always", metadata={"labels": {"app": "web"}},
                    container={"image": "adamw-operator:dev", "ports": [{"name": "http", "containerPort": 8080}],
                               "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}})
    del template["apiVersion"], template["kind"], template["metadata"]["name"]
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template}}, ns)
    cluster.wait_for("2 ready replicas", lambda: cluster.get("deployment", "web", ns).get("status", {}).get(
        "readyReplicas") == 2, timeout=60)
    pods = cluster.get("pods", namespace=ns, selector="app=web")["items"]
    ips = {p["status"]["podIP"] for p in pods}
    assert len(ips) == 2
    for pod in pods:
        started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready_at > started or ready_at == started  # not before the probe passed
        with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/", timeout=5) as r:  # noqa: S310
            assert r.status == 200


@pytest.mark.cluster
def test_an_unknown_image_waits_in_err_image_pull(cluster: Cluster, nodes: dict[str, Node], ns: str) -> None:
    cluster.apply(_pod("busy", "vk-a", "", container={"image": "busybox:1.36", "command": ["sh"]}), ns)
    waiting = cluster.wait_for("ErrImagePull", lambda: _state(cluster, ns, "busy").get("waiting", {}).get(
        "reason") == "ErrImagePull" and _state(cluster, ns, "busy")["waiting"])
    assert "busybox:1.36" in waiting["message"] and "adamw-trainer" in waiting["message"]
    assert cluster.get("pod", "busy", ns)["status"]["phase"] == "Pending"
    started = time.monotonic()
    cluster.kubectl("delete", "pod", "busy", "-n", ns, "--wait=true", timeout=30)  # nothing ran: gone at once
    assert time.monotonic() - started < 5


@pytest.mark.cluster
def test_in_place_restarts_count_up_under_restart_policy_always(cluster: Cluster, nodes: dict[str, Node],
                                                               ns: str) -> None:
    cluster.apply(_pod("crashy", "vk-a", "import sys; sys.exit(4)", restartPolicy="Always"), ns)
    status = cluster.wait_for("two restarts", lambda: (lambda s: s if s.get("restartCount", 0) >= 2 else None)(
        (cluster.get("pod", "crashy", ns)["status"].get("containerStatuses") or [{}])[0]), timeout=30)
    assert status["lastState"]["terminated"]["exitCode"] == 4
    assert cluster.get("pod", "crashy", ns)["status"]["phase"] == "Running"


@pytest.mark.cluster
def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(cluster: Cluster, nodes: dict[str, Node],
                                                                   ns: str) -> None:
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, lambda *a: print('got TERM', flush=True)); "
                "print('up', flush=True); time.sleep(600)")
    cluster.apply(_pod("stubborn", "vk-a", stubborn, terminationGracePeriodSeconds=3), ns)
    node = nodes["vk-a"]
    cluster.wait_for("the process", lambda: node.pod(ns, "stubborn").get("pid"))
    pid = node.pod(ns, "stubborn")["pid"]
    log = Path(node.pod(ns, "stubborn")["log"])
    cluster.wait_for("its first line", lambda: "up" in log.read_text())
    started = time.monotonic()
    cluster.kubectl("delete", "pod", "stubborn", "-n", ns, "--wait=true", timeout=30)
    took = time.monotonic() - started
    assert 3 <= took < 10, took
    assert "got TERM" in log.read_text()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.cluster
def test_paused_heartbeats_make_the_node_unknown_and_resume_makes_it_ready(
        cluster: Cluster, nodes: dict[str, Node], ns: str) -> None:
    node = nodes["vk-b"]
    cluster.apply(_pod("steady", "vk-b", "import time; time.sleep(600)"), ns)
    cluster.wait_for("steady Ready", lambda: _condition(cluster.get("pod", "steady", ns), "Ready") == "True")
    assert node.control("POST", "/heartbeat", {"paused": True}) == {"paused": True}
    try:
        cluster.wait_for("vk-b Unknown", lambda: _condition(cluster.get("node", "vk-b"), "Ready") == "Unknown",
                         timeout=40)
        taints = {t["key"] for t in cluster.get("node", "vk-b")["spec"].get("taints", [])}
        assert "node.kubernetes.io/unreachable" in taints
        cluster.wait_for("steady marked NotReady", lambda: _condition(
            cluster.get("pod", "steady", ns), "Ready") == "False", timeout=20)
        assert node.pod(ns, "steady")["pid"]  # a lost node's processes keep running
    finally:
        node.control("POST", "/heartbeat", {"paused": False})
    cluster.wait_for("vk-b Ready", lambda: _condition(cluster.get("node", "vk-b"), "Ready") == "True", timeout=30)
    cluster.wait_for("steady Ready again", lambda: _condition(cluster.get("pod", "steady", ns), "Ready") == "True")
    cluster.wait_for("the unreachable taint gone", lambda: "node.kubernetes.io/unreachable" not in {
        t["key"] for t in cluster.get("node", "vk-b")["spec"].get("taints", [])})


@pytest.mark.cluster
def test_the_projected_token_calls_the_api_as_the_pods_service_account(cluster: Cluster, nodes: dict[str, Node],
                                                                       ns: str) -> None:
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "read-pods"},
                   "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}, ns)
    cluster.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "read-pods"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
                   "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}]}, ns)
    code = "\n".join([
        "import json, pathlib",
        "from kubernetes import client, config",
        "config.load_incluster_config()",
        "api = client.CoreV1Api()",
        "sa = pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount')",
        "ns = (sa / 'namespace').read_text()",
        "out = {'namespace': ns, 'pods': [p.metadata.name for p in api.list_namespaced_pod(ns).items]}",
        "try:",
        "    api.list_namespaced_secret(ns); out['secrets'] = 200",
        "except client.ApiException as e:",
        "    out['secrets'] = e.status",
        "open('/dev/termination-log', 'w').write(json.dumps(out))",
    ])
    cluster.apply(_pod("whoami", "vk-a", code), ns)
    pod = cluster.wait_for("whoami to finish", lambda: (lambda p: p if p["status"].get("phase") in (
        "Succeeded", "Failed") else None)(cluster.get("pod", "whoami", ns)), timeout=60)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 0, Path(nodes["vk-a"].pod(ns, "whoami")["log"]).read_text()
    seen = json.loads(terminated["message"])
    assert seen == {"namespace": ns, "pods": ["whoami"], "secrets": 403}
    assert any(v["name"].startswith("kube-api-access-") for v in pod["spec"]["volumes"])
    # The token is mounted only inside the pod's own mount namespace.
    assert not any(Path("/var/run/secrets/kubernetes.io/serviceaccount").glob("*"))


@pytest.mark.cluster
def test_volumes_and_env_sources_and_a_claim_shared_across_nodes(cluster: Cluster, nodes: dict[str, Node],
                                                                  ns: str) -> None:
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf"},
                   "data": {"a.txt": "from a configmap", "key": "cm-value"}}, ns)
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                   "stringData": {"password": "s3cret"}}, ns)
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "shared"},
                   "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}, ns)
    write = "\n".join([
        "import json, os, pathlib",
        "pathlib.Path('/data/from-a').write_text('written on vk-a')",
        "pathlib.Path('/scratch/x').write_text('tmp')",
        "out = {'cm': pathlib.Path('/etc/conf/a.txt').read_text(),",
        "       'secret': pathlib.Path('/etc/creds/password').read_text(),",
        "       'labels': pathlib.Path('/etc/info/labels').read_text(),",
        "       'env': [os.environ['CM'], os.environ['PW'], os.environ['NODE']]}",
        "open('/dev/termination-log', 'w').write(json.dumps(out))",
    ])
    mounts = [{"name": "conf", "mountPath": "/etc/conf"}, {"name": "creds", "mountPath": "/etc/creds"},
              {"name": "info", "mountPath": "/etc/info"}, {"name": "scratch", "mountPath": "/scratch"},
              {"name": "data", "mountPath": "/data"}]
    volumes = [{"name": "conf", "configMap": {"name": "conf"}}, {"name": "creds", "secret": {"secretName": "creds"}},
               {"name": "info", "downwardAPI": {"items": [{"path": "labels",
                                                           "fieldRef": {"fieldPath": "metadata.labels"}}]}},
               {"name": "scratch", "emptyDir": {}},
               {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}]
    env = [{"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "conf", "key": "key"}}},
           {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
           {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    cluster.apply(_pod("writer", "vk-a", write, volumes=volumes, metadata={"labels": {"role": "writer"}},
                       container={"volumeMounts": mounts, "env": env}), ns)
    reader = "import pathlib; open('/dev/termination-log', 'w').write(pathlib.Path('/data/from-a').read_text())"

    def finished(name: str) -> dict[str, Any]:
        return cluster.wait_for(f"{name} to finish", lambda: (lambda p: p if p["status"].get("phase") in (
            "Succeeded", "Failed") else None)(cluster.get("pod", name, ns)), timeout=60)

    wrote = finished("writer")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert wrote["exitCode"] == 0, Path(nodes["vk-a"].pod(ns, "writer")["log"]).read_text()
    assert json.loads(wrote["message"]) == {"cm": "from a configmap", "secret": "s3cret", "labels": 'role="writer"',
                                            "env": ["cm-value", "s3cret", "vk-a"]}
    cluster.apply(_pod("reader", "vk-b", reader, volumes=[volumes[-1]], container={"volumeMounts": [mounts[-1]]}),
                  ns)
    read = finished("reader")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert read.get("message") == "written on vk-a", Path(nodes["vk-b"].pod(ns, "reader")["log"]).read_text()


@pytest.mark.cluster
def test_the_kubelet_rides_out_an_api_server_restart(cluster: Cluster, nodes: dict[str, Node], ns: str) -> None:
    # The container exits while the API server is down: its status is written once it is back.
    cluster.apply(_pod("through", "vk-a", "import sys, time; time.sleep(2); sys.exit(7)"), ns)
    cluster.wait_for("through running", lambda: "running" in _state(cluster, ns, "through"))
    cluster.plane.restart("kube-apiserver", down_seconds=1)
    try:
        state = cluster.wait_for("through terminated", lambda: _state(cluster, ns, "through").get("terminated"),
                                 timeout=30)
    except TimeoutError as e:
        log = (cluster.plane.logs / "kubelet-vk-a.log").read_text().splitlines()[-30:]
        raise AssertionError("\n".join(log)) from e
    assert state["exitCode"] == 7
    # The watch resumed: a pod created after the restart runs.
    cluster.apply(_pod("after", "vk-a", "print('after')"), ns)
    cluster.wait_for("after succeeded", lambda: cluster.get("pod", "after", ns)["status"].get("phase") == "Succeeded")
    renewed = cluster.get("lease", "vk-a", "kube-node-lease")["spec"]["renewTime"]
    cluster.wait_for("a renewed Lease", lambda: cluster.get(
        "lease", "vk-a", "kube-node-lease")["spec"]["renewTime"] != renewed, timeout=10)
    # A slow restart (over node-monitor-grace-period, 10 s) lets the node-lifecycle controller mark
    # the node Unknown; as a real kubelet, the next node-status write (every 10 s) makes it Ready again.
    cluster.wait_for("vk-a Ready again", lambda: _condition(cluster.get("node", "vk-a"), "Ready") == "True",
                     timeout=30)


@pytest.mark.cluster
def test_a_restarted_kubelet_reports_lost_containers(cluster: Cluster, nodes: dict[str, Node], ns: str) -> None:
    cluster.apply(_pod("once", "vk-b", "import time; time.sleep(600)"), ns)
    cluster.apply(_pod("again", "vk-b", "import time; time.sleep(600)", restartPolicy="Always"), ns)
    for name in ("once", "again"):
        cluster.wait_for(f"{name} running", lambda n=name: "running" in _state(cluster, ns, n))
    ip = cluster.get("pod", "again", ns)["status"]["podIP"]
    cluster.plane.restart("kubelet-vk-b")  # SIGTERM: it stops its pods' processes, then starts afresh
    try:
        lost = cluster.wait_for("once lost", lambda: _state(cluster, ns, "once").get("terminated"), timeout=30)
    except TimeoutError as e:
        log = (cluster.plane.logs / "kubelet-vk-b.log").read_text().splitlines()[-40:]
        raise AssertionError("\n".join(log) + "\n" + json.dumps(cluster.get("pod", "once", ns)["status"])) from e
    assert lost["exitCode"] == 137 and lost["reason"] == "ContainerStatusUnknown"
    assert cluster.get("pod", "once", ns)["status"]["phase"] == "Failed"
    status = cluster.wait_for("again restarted", lambda: (lambda s: s if s.get("restartCount") == 1 and "running" in s[
        "state"] else None)((cluster.get("pod", "again", ns)["status"].get("containerStatuses") or [{}])[0]))
    assert status["lastState"]["terminated"]["reason"] == "ContainerStatusUnknown"
    assert cluster.get("pod", "again", ns)["status"]["podIP"] == ip
