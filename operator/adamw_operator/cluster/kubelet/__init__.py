"""A virtual kubelet: a real Node of a real control plane whose pods run as local processes.

    python -m adamw_operator.cluster.kubelet --kubeconfig NODE.kubeconfig --node node-1 \\
        --root .cluster/nodes/node-1 [--capacity cpu=16,memory=64Gi,nvidia.com/gpu=8] [--python-bin DIR]

It talks to kube-apiserver over HTTPS with the node's client certificate (CN
`system:node:<node>`, O `system:nodes`), so the Node authorizer and the NodeRestriction
admission plugin hold it to exactly what a kubelet may do. One process per node.

What it does, as a kubelet does:

- registers its Node (capacity = allocatable, labels, optional taints, `Ready` and the
  pressure conditions, InternalIP 127.0.0.1, nodeInfo with kubelet v1.37.2), renews its
  Lease in `kube-node-lease` every `--heartbeat-seconds` (2) and writes node status every
  `--node-status-seconds` (10);
- watches its pods (`fieldSelector=spec.nodeName=<node>`; the real kube-scheduler binds
  them) and runs each through `adamw_operator.local.pod_process`, the code `adamw-job
  run` uses (volumes as folders, mount-path rewriting, `$(VAR)` expansion, exit codes;
  see that module);
- images (`images`): only this project's own, `*/adamw-trainer:*` and `*/adamw-operator:*`
  whatever the registry and tag, run as the venv's `adamw-train`/`adamw-operator` with
  the Dockerfiles' ENTRYPOINT/CMD; any other image waits in `ErrImagePull` with a
  message naming the images it can run;
- volumes (`volumes`): configMap, secret, emptyDir, persistentVolumeClaim (the bound
  PV's `hostPath`/`local` folder, as the cluster's provisioner makes, so every node
  shares it; for other PVs a folder per claim under `ROOT/claims/<ns>/<claim>/`; either
  outlives the pod; an unbound claim keeps the pod waiting), downwardAPI and projected;
  env `valueFrom` (fieldRef, configMapKeyRef, secretKeyRef) and `envFrom`. The
  ServiceAccount admission plugin's `kube-api-access-*` volume gets a token from the
  TokenRequest API bound to the pod (refreshed at 80% of its life), `ca.crt` from the
  `kube-root-ca.crt` ConfigMap and the namespace, bind-mounted read-only at
  `/var/run/secrets/kubernetes.io/serviceaccount` in the process's own mount namespace
  (`unshare --mount` then `mount --bind`, both exec'ing, so the pid is the container's
  process; needs root; without it such pods wait in CreateContainerError saying so). The
  mount point is created, empty, on the host. `KUBERNETES_SERVICE_HOST=127.0.0.1` and
  `KUBERNETES_SERVICE_PORT=<API server port>` stand in for kube-proxy's ClusterIP of the
  `kubernetes` Service, so in-cluster config (the kubernetes client, Kopf) works and the
  process acts as its ServiceAccount under RBAC;
- pod network: each pod gets its own loopback address as podIP, from `--pod-cidr`,
  by default the first 127.X.0.0/16 that no other virtual kubelet on this machine holds
  (an flock per range under $TMPDIR/adamw-virtual-kubelet/: all clusters on a machine
  share the loopback interface, and two pods with one IP answer each other's probes). A
  literal `0.0.0.0` in argv or env becomes the pod IP, and Python processes get a
  `sitecustomize` (`pod_python/`) that turns a bind to `0.0.0.0`/`""` into a bind to the
  pod IP, so two pods serving the same port (two operator replicas' health endpoints)
  do not collide; rank 0's torch TCPStore (a bind made in C++) is handed a socket bound
  to the pod IP the same way; other binds made in C, and `localhost` inside a pod, still
  mean the host's;
- cluster DNS (`dns`): the API server refuses loopback addresses in EndpointSlices, so
  names are answered as CoreDNS would answer them from the slices, but computed from the
  Service and the pods its selector matches, read from the API:
  `<hostname>.<subdomain>.<ns>.svc[.cluster.local]` and a headless Service's
  `<service>.<ns>.svc`; a ClusterIP's virtual IP (kube-proxy) is not emulated. Names in
  env, args and ConfigMap files are substituted before the start; a pod whose env names
  one that does not resolve yet waits in ContainerCreating. A node may list only its own
  pods, so pods on other nodes resolve only with `--dns-kubeconfig` (an identity that
  may list pods and services, like CoreDNS's);
- PodStatus (`status`) to the `/status` subresource, as a strategic merge patch carrying
  the uid: phase, container state waiting/running/terminated (exitCode, reason
  Completed/Error/ContainerStatusUnknown, message = the `terminationMessagePath` file or
  the log tail for `FallbackToLogsOnError`, signal), lastState, restartCount,
  podIP/podIPs, hostIP/hostIPs, startTime, conditions PodReadyToStartContainers,
  Initialized, ContainersReady, Ready (from the container's httpGet or tcpSocket
  readiness probe against the podIP, else true once running); Events (Started, Killing,
  BackOff, Unhealthy, Failed);
- restarts: `restartPolicy: Always`/`OnFailure` restart the container in place with
  restartCount+1 after a CrashLoopBackOff of `--restart-backoff` (1 s) doubling to
  `--restart-backoff-max` (10 s); an httpGet/tcpSocket liveness probe failing
  `failureThreshold` times kills and restarts it;
- deletion: on `deletionTimestamp`, SIGTERM, `deletionGracePeriodSeconds` (at least 2 s,
  the kubelet's minimum), SIGKILL, the final state written, then the deletion confirmed
  with `DELETE` grace 0 and a uid precondition. Eviction and preemption are the API
  server's and the scheduler's; the kubelet sees a graceful delete;
- a pod whose container was running when a previous kubelet process stopped gets
  ContainerStatusUnknown (exit 137) and is restarted or failed by its restartPolicy.

Control API on 127.0.0.1 (port in `ROOT/control.json`, with the pid): `GET /pods` (each
pod's namespace, name, uid, podIP, phase, pid, restartCount, state, dir, log), `POST
/heartbeat {"paused": true|false}`, `POST /pods/<ns>/<name>/signal {"signal": "SIGKILL"}`,
`GET /status`, `GET /healthz`. Paused is a network partition: no Lease renewals or node
status (the node-lifecycle controller marks the node Unknown and taints it), no pod
status writes or deletion confirmations, pod changes applied only on resume; the pods'
processes keep running. On resume every pod's status is written afresh.

Files: `ROOT/control.json`, `ROOT/pods/<ns>_<name>_<uid8>/` (container.log,
termination-log, volumes/), `ROOT/claims/<ns>/<claim>/`, `ROOT/pki/` (the HTTPS server's
self-signed certificate). When the kubelet stops (SIGTERM) it stops every pod's
process (SIGTERM, 5 s, SIGKILL); PR_SET_PDEATHSIG kills them if it dies. When a
container's process ends, what is left of its process group is killed (the teardown of a
container's cgroup; a process that made its own session escapes it).

What a real kubelet and container runtime do that this one does not:

- containers: no images or pulls (only the two entry points above), no root filesystem
  of the image (the host's, with mount paths rewritten; only /var/run/secrets is a real
  mount), no cgroups, so no resource requests/limits enforcement, no OOMKilled, no
  eviction under node pressure, capacity is what `--capacity` says; no
  securityContext (runAsUser, capabilities, seccomp, read-only root: processes run as
  the kubelet's user); one container per pod: no init containers, sidecars or ephemeral
  containers; no lifecycle hooks (postStart/preStop); no startup probes, and exec/grpc
  probes are not run (readiness counts as passed once running, liveness never fails);
- network: no network namespaces or CNI (a loopback address per pod, shared ports for
  binds the shim cannot reach), no kube-proxy (ClusterIPs and NodePorts do not route;
  only `KUBERNETES_SERVICE_HOST/PORT` for the API), no real DNS server (names are
  substituted), no hostNetwork/hostPort semantics;
- the kubelet API: no HTTPS server on the node, so `kubectl logs`, `exec`, `attach`,
  `port-forward` and metrics/`top` do not work; read `ROOT/pods/.../container.log`;
- volumes: no CSI, no attach/detach, no fsGroup ownership, no subPathExpr, no
  ConfigMap/Secret updates propagated to running pods (written once at start), no
  `items[].mode`; hostPath is the host folder itself;
- no static or mirror pods, no image garbage collection, no graceful node shutdown, no
  device plugins (the `nvidia.com/gpu` capacity is only a number for the scheduler),
  no node status beyond the conditions above, no event aggregation.
"""
