"""Loaded by every Python process in a pod the virtual kubelet runs (it is on PYTHONPATH).

A pod binding `0.0.0.0` (Kopf's liveness endpoint, prometheus_client's default) means its
own network interfaces; without network namespaces every pod shares the host's, so two
pods serving the same port would collide. Here an IPv4 bind to `0.0.0.0` or `""` binds
the pod's own loopback address instead (`ADAMW_VIRTUAL_POD_IP`). Binds made in C (torch's
TCPStore) are not reached.
"""

import os
import socket

_POD_IP = os.environ.get("ADAMW_VIRTUAL_POD_IP")

if _POD_IP:
    _bind = socket.socket.bind

    def _bind_pod_ip(self, address):  # noqa: ANN001, ANN202 - socket.bind's own signature
        if self.family == socket.AF_INET and isinstance(address, tuple) and address[0] in ("", "0.0.0.0"):
            address = (_POD_IP, *address[1:])
        return _bind(self, address)

    socket.socket.bind = _bind_pod_ip
