"""What one start of a server on the real repository costs: wall time, CPU seconds of tritonserver and
of each Python-backend stub, and the memory of them all (proportional set size, monitor.py).

    .venv/bin/python benchmarks/server_start.py
"""

from __future__ import annotations

import time

import psutil

from fv2es.tritonserver import REPOSITORY, EmbeddedServer
from monitor import process_label, process_tree, pss_bytes


def cpu_seconds(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    started = time.monotonic()
    server = EmbeddedServer(REPOSITORY).start(timeout_s=300)
    try:
        wall = time.monotonic() - started
        per_process = {pid: cpu_seconds(pid) for pid in process_tree(server.process.pid)}
        memory = pss_bytes(list(per_process)) / 2**20
        print(f"ready in {wall:.1f} s, {sum(per_process.values()):.1f} CPU seconds, {memory:.0f} MiB")
        for pid, seconds in sorted(per_process.items(), key=lambda kv: -kv[1]):
            print(f"  {seconds:5.2f} s  {process_label(pid)}")
    finally:
        server.stop(timeout_s=0)


if __name__ == "__main__":
    main()
