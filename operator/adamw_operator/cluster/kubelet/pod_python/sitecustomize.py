"""Loaded by every Python process in a pod the virtual kubelet runs (it is on PYTHONPATH).

A pod binding `0.0.0.0` (Kopf's liveness endpoint, prometheus_client's default) means its
own network interfaces; without network namespaces every pod shares the host's, so two
pods serving the same port would collide. Here an IPv4 bind to `0.0.0.0` or `""` binds
the pod's own loopback address instead (`ADAMW_VIRTUAL_POD_IP`). Binds made in C are not
reached; for the one that matters here, torch's TCPStore on rank 0 (MASTER_PORT), the
rendezvous is patched on import to hand torch a socket bound to the pod IP, so two jobs'
rank 0 can serve the same port.
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

    # torch's TCPStore (rank 0's rendezvous server) binds the any-address from C++, so
    # two jobs' rank 0 on one machine would fight over MASTER_PORT. torch lets the caller
    # hand it a listening socket instead (`master_listen_fd`): give it one bound to the pod IP.
    import importlib.abc
    import importlib.util
    import sys

    def _pod_ip_store(module):  # noqa: ANN001, ANN202
        create = module._create_c10d_store

        def _create_c10d_store(hostname, port, rank, world_size, timeout, use_libuv=True):  # noqa: ANN001, ANN202
            if rank != 0 or module._torchelastic_use_agent_store():
                return create(hostname, port, rank, world_size, timeout, use_libuv)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((_POD_IP, port))
            listener.listen(1024)
            return module.TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True,
                                   timeout=timeout, multi_tenant=True, master_listen_fd=listener.detach(),
                                   use_libuv=use_libuv)

        module._create_c10d_store = _create_c10d_store

    class _PatchRendezvous(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
            if name != "torch.distributed.rendezvous":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):  # noqa: ANN001, ANN202
                run(module)
                _pod_ip_store(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _PatchRendezvous())
