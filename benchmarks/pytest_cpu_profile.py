"""A pytest plugin: each test's wall time and the machine's CPU time meanwhile (psutil.cpu_times, all
cores, so the tritonservers and training subprocesses a test drives count too), summed per file and
per group of session servers at the end, and written to benchmarks/out/test_cpu.json.

    PYTHONPATH=benchmarks .venv/bin/pytest -q -p pytest_cpu_profile tests

docs/tests.md quotes its runs. Sample the machine quiet: anything else running counts as well.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import psutil

OUT = Path(__file__).resolve().parent / "out" / "test_cpu.json"
SESSION_SERVERS = ("server", "client", "spare_server", "small_server")  # tests/conftest.py's
_started: dict[str, tuple[float, float]] = {}
_groups: dict[str, str] = {}
_rows: list[dict] = []


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def server_group(item) -> str:
    """The session server a test drives (its file's name when none): the work that runs on one server."""
    used = [name for name in SESSION_SERVERS if name in item.fixturenames]
    return {"client": "server"}.get(used[0], used[0]) if used else item.path.name


def pytest_collection_modifyitems(items):
    _groups.update({item.nodeid: server_group(item) for item in items})


def pytest_runtest_logstart(nodeid, location):
    _started[nodeid] = (time.monotonic(), busy_seconds())


def pytest_runtest_logfinish(nodeid, location):
    started, busy = _started.pop(nodeid)
    _rows.append({"test": nodeid, "group": _groups.get(nodeid, "?"), "wall_s": time.monotonic() - started,
                  "cpu_s": busy_seconds() - busy})


def pytest_terminal_summary(terminalreporter):
    if not _rows:
        return
    write = terminalreporter.write_line
    wall, cpu = sum(r["wall_s"] for r in _rows), sum(r["cpu_s"] for r in _rows)
    write(f"tests: {wall:.1f} s, {cpu:.0f} core-seconds, {cpu / wall:.2f} cores busy on average")
    for key in ("group", "file"):
        totals = collections.defaultdict(lambda: [0.0, 0.0, 0])
        for r in _rows:
            t = totals[r["group"] if key == "group" else r["test"].split("::")[0]]
            t[0], t[1], t[2] = t[0] + r["wall_s"], t[1] + r["cpu_s"], t[2] + 1
        write(f"by {key}: wall s, core-seconds, tests")
        for name, (w, c, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:15]:
            write(f"  {w:7.1f} {c:7.1f} {n:4d}  {name}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(_rows, indent=1))
    write(f"wrote {OUT}")
