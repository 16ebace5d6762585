"""Peak memory of a process tree (tritonserver and its Python-backend stubs), sampled in a thread.

Proportional set size (PSS: psutil's memory_full_info, from /proc/<pid>/smaps_rollup) is summed over
the processes, so shared pages (the libraries, the shared-memory tensors between server and stubs)
count once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    try:
        return [root] + [child.pid for child in psutil.Process(root).children(recursive=True)]
    except psutil.Error:  # the process ended
        return [root]


def process_pss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_full_info().pss
    except psutil.Error:  # the process ended
        return 0


def pss_bytes(pids: list[int]) -> int:
    return sum(process_pss(pid) for pid in pids)


def process_label(pid: int) -> str:
    """The Triton model a Python-backend stub runs (its first argument is the model.py path), else the program."""
    try:
        args = psutil.Process(pid).cmdline()
    except psutil.Error:
        return "?"
    first = args[1] if len(args) > 1 else ""
    if first.endswith("/model.py"):
        return Path(first).parents[1].name
    return Path(args[0]).name if args else "?"


class PeakMemory:
    """`with PeakMemory(pid) as m: ...` then m.peak (bytes) over that block, sampled every `interval_s`."""

    def __init__(self, root_pid: int, interval_s: float = 0.2):
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peak = 0
        self.by_process: dict[int, int] = {}  # each process's own peak
        self.pids = process_tree(root_pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self._measure()
            if self._stop.wait(self.interval_s):
                return

    def _measure(self) -> None:
        sizes = {pid: process_pss(pid) for pid in self.pids}
        self.peak = max(self.peak, sum(sizes.values()))
        for pid, size in sizes.items():
            self.by_process[pid] = max(self.by_process.get(pid, 0), size)

    def peak_by_label(self) -> dict[str, int]:
        """Each process's own peak, summed per model (instances of one model add up)."""
        labels: dict[str, int] = {}
        for pid, size in self.by_process.items():
            label = process_label(pid)
            labels[label] = labels.get(label, 0) + size
        return labels

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._measure()
