"""Run a pod's container as a local process: what a kubelet and container runtime would do.

Used by `adamw-job run` (the local runner) and by the tests' node agent, so both run
exactly the command and environment the operator puts in its pods. Without containers
there are no mount namespaces and no cluster network, so this module stands in for them:

- volumes become local directories: a configMap is written out as files, a
  persistentVolumeClaim is one directory per claim that outlives the pod (as a PVC
  does), an emptyDir is a fresh directory per pod;
- absolute mount paths (and `/dev/termination-log`) are rewritten to those directories
  in argv, env values and the mounted config files (mount namespaces would do this);
- each pod gets its own loopback address 127.0.0.N as podIP, the trainer's metrics
  server binds to it (`ADAMW_METRICS_HOST`), and cluster DNS names
  `<hostname>.<subdomain>.<ns>.svc[.cluster.local]` in env values become pod IPs;
  gloo talks over `lo`;
- optionally (the virtual kubelet): volumes whose files the caller resolved
  (`volume_files`: secret, downwardAPI, projected), mount paths served by a real bind
  mount in the process's own mount namespace instead of rewriting (`bind_paths`: the
  service-account token at its fixed path), and a literal `0.0.0.0` in argv/env
  becoming the pod IP (`any_address_to_pod_ip`).

kopf-free and torch-free.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINATION_MESSAGE_LIMIT = 4096  # bytes the kubelet keeps of a termination message
DEFAULT_TERMINATION_PATH = "/dev/termination-log"

Pod = Mapping[str, Any]


class PodSpecError(ValueError):
    """The pod cannot be run locally (an unsupported volume, a missing ConfigMap...)."""


@dataclass
class LocalPodLayout:
    """Where one pod's files live on this machine."""

    pod_dir: Path
    mounts: dict[str, Path]  # container mountPath -> local directory (or file, for subPath)
    termination_log: Path
    log_file: Path


@dataclass
class LocalLaunch:
    """Everything needed to start the container's process."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    layout: LocalPodLayout
    grace_seconds: float
    termination_policy: str = "File"  # or FallbackToLogsOnError: the log tail on failure
    # container mountPath -> local directory, bind-mounted (read-only) in a private mount
    # namespace (`unshare --mount`) rather than rewritten; see mount_namespace_argv.
    bind_mounts: dict[str, Path] = field(default_factory=dict)


def pod_dir_name(pod: Pod) -> str:
    meta = pod["metadata"]
    return f"{meta.get('namespace', 'default')}_{meta['name']}_{meta.get('uid', 'local')[:8]}"


def dns_names(pod: Pod) -> list[str]:
    """The DNS names a pod with hostname+subdomain gets from cluster DNS (longest first)."""
    spec, meta = pod.get("spec", {}), pod["metadata"]
    hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
    if not hostname or not subdomain:
        return []
    base = f"{hostname}.{subdomain}.{meta.get('namespace', 'default')}"
    return [f"{base}.svc.cluster.local", f"{base}.svc", base]


def rewrite(text: str, mounts: Mapping[str, Path | str], hosts: Mapping[str, str] | None = None) -> str:
    """Replace mount paths (at path boundaries) and cluster DNS names (whole names) in `text`.

    One pass per kind, so a local directory that itself lies under a mount path (say the
    pods' directories under /tmp and an emptyDir mounted at /tmp) is never rewritten twice.
    """
    if mounts:
        by_path = {m.rstrip("/") or "/": str(local) for m, local in mounts.items()}
        alternatives = "|".join(re.escape(m) for m in sorted(by_path, key=len, reverse=True))
        pattern = re.compile(
            r"(?<![\w.-])(" + alternatives + r")((?:/[^\s\"',:;}\]]*)?)(?=$|[\s\"',:;}\]])"
        )

        def one(m: re.Match[str]) -> str:
            mount, rest = m.group(1), m.group(2)
            local = by_path[mount] + rest
            # The host stands in for the image. A host path that exists (a checkout or venv
            # under /tmp, say) while the mounted volume has no such file stays as it is:
            # on a real node that file would be in the image, not under the mount.
            if rest and os.path.exists(mount + rest) and not os.path.exists(local):
                return m.group(0)
            return local

        text = pattern.sub(one, text)
    if hosts:
        alternatives = "|".join(re.escape(h) for h in sorted(hosts, key=len, reverse=True))
        pattern = re.compile(r"(?<![\w.-])(" + alternatives + r")(?![\w-]|\.[\w-])")
        text = pattern.sub(lambda m: hosts[m.group(1)], text)
    return text


def _trainer_container(pod: Pod) -> Mapping[str, Any]:
    containers = pod.get("spec", {}).get("containers") or []
    if not containers:
        raise PodSpecError(f"pod {pod['metadata']['name']} has no containers")
    return containers[0]


def prepare_pod(
    pod: Pod,
    *,
    root: Path,
    pod_ip: str,
    config_maps: Mapping[str, Mapping[str, str]],
    hosts: Mapping[str, str] | None = None,
    claim_dir: Callable[[str], Path] | None = None,
    base_env: Mapping[str, str] | None = None,
    volume_files: Mapping[str, Mapping[str, bytes]] | None = None,
    bind_paths: tuple[str, ...] = (),
    any_address_to_pod_ip: bool = False,
) -> LocalLaunch:
    """Lay out the pod's volumes under `root` and compute its argv, env and working dir.

    `config_maps` maps ConfigMap names to their `data`; `hosts` maps DNS names to pod
    IPs; `claim_dir(claimName)` gives a PVC's persistent directory (default
    `root/claims/<namespace>/<claimName>`). `volume_files` gives, by volume name, the
    files (relative path -> bytes) of secret/downwardAPI/projected volumes the caller
    resolved; mounts at or under a path in `bind_paths` become `bind_mounts` (not
    rewritten); `any_address_to_pod_ip` turns a literal `0.0.0.0` in argv and env values
    into the pod IP (binding all interfaces in a pod means the pod's own).
    """
    meta, spec = pod["metadata"], pod.get("spec", {})
    namespace = meta.get("namespace", "default")
    container = _trainer_container(pod)
    pod_dir = root / "pods" / pod_dir_name(pod)
    if pod_dir.exists():
        shutil.rmtree(pod_dir)  # a pod with this uid never ran before; clear leftovers
    pod_dir.mkdir(parents=True)
    claims = claim_dir or (lambda claim: root / "claims" / namespace / claim)

    volume_dirs: dict[str, Path] = {}
    pending_config: list[tuple[Path, Mapping[str, Any]]] = []
    for volume in spec.get("volumes") or []:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            path = claims(volume["persistentVolumeClaim"]["claimName"])
        elif "emptyDir" in volume:
            path = pod_dir / "volumes" / name
        elif "configMap" in volume:
            path = pod_dir / "volumes" / name
            pending_config.append((path, volume["configMap"]))
        elif "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
        elif volume_files is not None and name in volume_files:
            path = pod_dir / "volumes" / name
            _write_files(path, volume_files[name])
        else:
            kind = next((k for k in volume if k != "name"), "?")
            raise PodSpecError(f"volume {name!r}: {kind} volumes cannot run locally; "
                               "use a persistentVolumeClaim, emptyDir or configMap")
        path.mkdir(parents=True, exist_ok=True)
        volume_dirs[name] = path

    mounts: dict[str, Path] = {}
    bind_mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volume_dirs:
            raise PodSpecError(f"volumeMount {mount['mountPath']!r} names volume {mount['name']!r}, "
                               "which the pod does not declare")
        local = volume_dirs[mount["name"]]
        if mount.get("subPath"):
            local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)  # the kubelet creates a missing subPath
        if any(_under(mount["mountPath"], p) for p in bind_paths):
            bind_mounts[mount["mountPath"]] = local
        else:
            mounts[mount["mountPath"]] = local
    working_dir = container.get("workingDir")
    if working_dir and not any(working_dir == m or working_dir.startswith(m.rstrip("/") + "/")
                               for m in mounts):
        # The runtime creates workingDir in the container's own filesystem: a per-pod dir.
        mounts[working_dir] = pod_dir / "rootfs" / working_dir.strip("/")
        mounts[working_dir].mkdir(parents=True, exist_ok=True)
    termination_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
    termination_log = pod_dir / "termination-log"
    termination_log.touch()
    mounts[termination_path] = termination_log

    all_hosts = dict(hosts or {})
    for name in dns_names(pod):
        all_hosts.setdefault(name, pod_ip)  # a pod resolves its own name too

    for path, source in pending_config:  # after `mounts` is known: file contents are rewritten
        cm_name = source["name"]
        if cm_name not in config_maps:
            if source.get("optional"):
                continue
            raise PodSpecError(f"ConfigMap {cm_name!r} (volume of pod {meta['name']}) does not exist")
        data = config_maps[cm_name]
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite(data[item["key"]], mounts, all_hosts))

    env = _container_env(pod, container, pod_ip, mounts, all_hosts, base_env, pod_dir)
    command = list(container.get("command") or []) + list(container.get("args") or [])
    if not command:
        raise PodSpecError(f"pod {meta['name']}: the container has no command; local runs need one")
    argv = [expand_env_references(rewrite(arg, mounts, all_hosts), env) for arg in command]
    if any_address_to_pod_ip:
        argv = [any_address(arg, pod_ip) for arg in argv]
        env = {k: any_address(v, pod_ip) for k, v in env.items()}
    argv[0] = _resolve_executable(argv[0], env["PATH"])
    cwd = Path(rewrite(working_dir, mounts)) if working_dir else pod_dir
    grace = float(spec.get("terminationGracePeriodSeconds", 30))
    layout = LocalPodLayout(pod_dir=pod_dir, mounts=mounts, termination_log=termination_log,
                            log_file=pod_dir / "container.log")
    return LocalLaunch(argv=argv, env=env, cwd=cwd, layout=layout, grace_seconds=grace,
                       termination_policy=container.get("terminationMessagePolicy") or "File",
                       bind_mounts=bind_mounts)


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path.rstrip("/") == prefix or path.startswith(prefix + "/")


def _write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for relative, content in files.items():
        target = directory / relative
        if directory.resolve() not in target.resolve().parents:
            raise PodSpecError(f"volume file path {relative!r} leaves its volume")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


_ANY_ADDRESS = re.compile(r"(?<![\w.])0\.0\.0\.0(?!\w|\.\d)")


def any_address(text: str, pod_ip: str) -> str:
    """A literal `0.0.0.0` (all interfaces) becomes the pod's own address."""
    return _ANY_ADDRESS.sub(pod_ip, text)


def mount_namespace_argv(bind_mounts: Mapping[str, Path], argv: list[str]) -> list[str]:
    """argv run in a private mount namespace with each local dir bind-mounted read-only.

    `unshare` (no --fork) and the shell both exec, so the pid stays the container's
    process and signals reach it. The mount points are created on the host (empty
    directories); the mounts themselves are visible only to this process tree.
    """
    steps = [f"mkdir -p {shlex.quote(target)} && mount --bind {shlex.quote(str(local))} "
             f"{shlex.quote(target)} && mount -o remount,bind,ro {shlex.quote(target)}"
             for target, local in sorted(bind_mounts.items())]
    script = " && ".join([*steps, 'exec "$@"'])
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh", *argv]


def _container_env(pod: Pod, container: Mapping[str, Any], pod_ip: str, mounts: Mapping[str, Path],
                   hosts: Mapping[str, str], base_env: Mapping[str, str] | None,
                   pod_dir: Path) -> dict[str, str]:
    """The process env: a minimal base, the pod's env (downward API resolved), local stand-ins."""
    venv_bin = str(Path(sys.executable).parent)
    source = os.environ if base_env is None else base_env
    env = {k: source[k] for k in ("PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS", "PYTHONPATH")
           if k in source}
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["HOME"] = str(mounts.get("/tmp", pod_dir))
    env["TMPDIR"] = str(mounts.get("/tmp", pod_dir))
    env["HOSTNAME"] = pod.get("spec", {}).get("hostname") or pod["metadata"]["name"]
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = rewrite(str(item["value"]), mounts, hosts)
        elif "valueFrom" in item:
            env[item["name"]] = _downward(pod, item["valueFrom"], pod_ip)
    env["ADAMW_METRICS_HOST"] = pod_ip  # one metrics port per pod IP, as in a cluster
    env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _downward(pod: Pod, value_from: Mapping[str, Any], pod_ip: str) -> str:
    """The downward API's fieldRef values a local run can know."""
    field_path = (value_from.get("fieldRef") or {}).get("fieldPath")
    meta = pod["metadata"]
    values = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "status.podIP": pod_ip,
        "spec.nodeName": pod.get("spec", {}).get("nodeName", "local"),
        "spec.serviceAccountName": pod.get("spec", {}).get("serviceAccountName", "default"),
    }
    if field_path in values:
        return values[field_path]
    if field_path and (m := re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise PodSpecError(f"env valueFrom {dict(value_from)!r} is not supported locally")


def expand_env_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes expands `$(VAR)` in command and args from the container env; `$$` escapes."""
    def one(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$?\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def _resolve_executable(name: str, path: str) -> str:
    if os.sep in name:
        return name
    found = shutil.which(name, path=path)
    if found is None:
        raise PodSpecError(f"command {name!r} is not on PATH ({path})")
    return found


@dataclass
class Termination:
    """How the container ended, as the kubelet reports it in `state.terminated`."""

    exit_code: int
    reason: str  # Completed / Error
    message: str
    signal: int | None = None


@dataclass
class LocalProcess:
    """One running container process with kubelet-like stop semantics."""

    launch: LocalLaunch
    process: asyncio.subprocess.Process | None = None
    _log: Any = field(default=None, repr=False)

    async def start(self) -> None:
        self._log = open(self.launch.layout.log_file, "ab")  # noqa: SIM115 - closed in wait()
        argv = self.launch.argv
        if self.launch.bind_mounts:
            argv = mount_namespace_argv(self.launch.bind_mounts, argv)
        self.process = await asyncio.create_subprocess_exec(
            *argv, env=self.launch.env, cwd=self.launch.cwd,
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C must not reach it; the runner decides
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, grace_seconds: float | None = None) -> None:
        """SIGTERM, then SIGKILL after the grace period, like the kubelet on pod deletion."""
        if not self.running:
            return
        grace = self.launch.grace_seconds if grace_seconds is None else grace_seconds
        self.signal(signal.SIGTERM)
        assert self.process is not None
        try:
            await asyncio.wait_for(self.process.wait(), timeout=max(grace, 0.0))
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.process.wait()

    async def wait(self) -> Termination:
        assert self.process is not None, "start() first"
        code = await self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        sig = -code if code < 0 else None
        exit_code = 128 + sig if sig else code  # the runtime reports signals as 128+N
        message = read_termination_message(self.launch.layout.termination_log)
        if not message and exit_code != 0 and self.launch.termination_policy == "FallbackToLogsOnError":
            message = tail(self.launch.layout.log_file)
        return Termination(exit_code=exit_code, reason="Completed" if exit_code == 0 else "Error",
                           message=message, signal=sig)


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform.startswith("linux") else None
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # loaded up front: the child must not import between fork and exec
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL the worker if its supervisor dies, so no trainer is left orphaned.

    (Containers outlive a kubelet restart; a local worker without its runner is just lost.)
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def read_termination_message(path: Path) -> str:
    try:
        return path.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    except OSError:
        return ""


def tail(path: Path, max_bytes: int = 2048) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-max_bytes:].decode(errors="replace")
