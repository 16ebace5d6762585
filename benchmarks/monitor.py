"""Peak memory of a process tree (tritonserver and its Python-backend stubs), sampled in a thread.

Proportional set size (PSS, /proc/<pid>/smaps_rollup) is summed over the processes, so shared
pages (the libraries, the shared-memory tensors between server and stubs) count once.
"""

from __future__ import annotations

import threading
from pathlib import Path


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            pass  # the process ended
    return total


class PeakMemory:
    """`with PeakMemory(pid) as m: ...` then m.peak (bytes) over that block, sampled every `interval_s`."""

    def __init__(self, root_pid: int, interval_s: float = 0.2):
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        pids = process_tree(self.root_pid)
        while True:
            self.peak = max(self.peak, pss_bytes(pids))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, pss_bytes(process_tree(self.root_pid)))
