"""A tiny stand-in for `adamw-train`, to test the node agent without torch.

It reads its config like the trainer (`--config FILE`, JSON), records what it saw
(argv, env, config, working dir) under the config's `checkpointDir`, and behaves as
`STANDIN_MODE` says:
  exit:N       write a termination message and exit N
  serve        rank 0 listens on ADAMW_METRICS_HOST:STANDIN_PORT; other ranks connect to
               MASTER_ADDR:STANDIN_PORT (proves per-pod IPs and DNS rewriting), then exit 0
  wait         run until SIGTERM, then write {"reason": "Preempted"} and exit 143
  ignore-term  ignore SIGTERM and run until killed
"""

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path


def main() -> int:
    args = argparse.ArgumentParser()
    args.add_argument("--config", required=True)
    config_path = args.parse_args().config
    config = json.loads(Path(config_path).read_text())
    rank = int(os.environ.get("RANK", "0"))
    out = Path(config["checkpointDir"])
    out.mkdir(parents=True, exist_ok=True)
    seen = {"argv": sys.argv, "config_path": config_path, "config": config, "cwd": os.getcwd(),
            "env": {k: v for k, v in os.environ.items()
                    if k in ("MASTER_ADDR", "ADAMW_METRICS_HOST", "GLOO_SOCKET_IFNAME", "RANK", "POD_NAME",
                             "OUT_DIR", "HOME", "TMPDIR", "ADAMW_RESTART_COUNT")}}
    (out / f"seen-{rank}.json").write_text(json.dumps(seen))
    termination_log = config["terminationMessagePath"]
    mode = os.environ.get("STANDIN_MODE", "exit:0")

    def finish(code: int, reason: str) -> int:
        Path(termination_log).write_text(json.dumps({"reason": reason, "exitCode": code, "rank": rank}))
        return code

    if mode.startswith("exit:"):
        return finish(int(mode.split(":")[1]), "Completed")
    if mode == "serve":
        port = int(os.environ["STANDIN_PORT"])
        if rank == 0:
            server = socket.create_server((os.environ["ADAMW_METRICS_HOST"], port))
            server.settimeout(20)
            conn, _ = server.accept()
            (out / "greeting.txt").write_bytes(conn.recv(100))
            return finish(0, "Completed")
        deadline = time.time() + 20
        while True:
            try:
                with socket.create_connection((os.environ["MASTER_ADDR"], port), timeout=1) as conn:
                    conn.sendall(f"hello from rank {rank}".encode())
                return finish(0, "Completed")
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
    if mode == "wait":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(finish(143, "Preempted")))
    elif mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (out / f"ready-{rank}").touch()
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
