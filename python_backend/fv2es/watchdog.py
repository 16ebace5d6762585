"""Replaces the Python-backend stub processes of a tritonserver that die, and tidies up after them.

Triton 2.51's Python backend runs each model instance in a stub process. When one dies (an OOM
kill, a crash in native code), Triton never starts it again: every request to that model fails
with "Stub process ... is not healthy" while /v2/health/ready still answers 200, and the dead
stub's shared-memory file stays in /dev/shm. Triton does not reap the dead stub either, so it
lingers as a zombie child of tritonserver: that is how the watchdog tells a crash from a stub that
Triton stopped itself (an unload, which reaps it).

On a crash the watchdog unloads the model (which also takes down the ensemble that uses it, so
readiness reports not-ready from then on) and loads it again (new stubs; Triton reloads the
ensemble with it), through the model-repository API with the admin key.

It also bounds the stubs' shared memory: the Python backend copies every input into its stub's
/dev/shm region, which grows to the largest request seen and never shrinks (a 600 MB request that
demux refuses leaves a 600 MB file). A region over config.SHM_REGION_RESET_BYTES gets its model
reloaded in place: new stubs with fresh regions take the next requests while the old ones finish
theirs, and the ensemble stays ready throughout. A model that holds state between requests (the
live streams of fv2es_stream) would lose it: such a model publishes a draining gauge
(config.STREAM_DRAINING_METRIC, per stub pid), set once it has no stream open and takes no new one,
and the watchdog reloads it only then.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from . import config

STUB_NAME = "triton_python_backend_stub"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str  # the model's name: its folder in the repository
    instance: str  # e.g. asr_0_0
    shm_region: str  # the stub's shared-memory file in /dev/shm


# psutil names the state that /proc/<pid>/stat gives as a letter; callers compare ("Z") and log the letter.
_STATE_LETTERS = {
    psutil.STATUS_RUNNING: "R", psutil.STATUS_SLEEPING: "S", psutil.STATUS_DISK_SLEEP: "D", psutil.STATUS_STOPPED: "T",
    psutil.STATUS_TRACING_STOP: "t", psutil.STATUS_ZOMBIE: "Z", psutil.STATUS_DEAD: "X", psutil.STATUS_WAKING: "W",
    psutil.STATUS_IDLE: "I", psutil.STATUS_PARKED: "P",
}


def process_state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), None when it is gone."""
    try:
        status = psutil.Process(pid).status()
    except psutil.Error:
        return None
    return _STATE_LETTERS.get(status, status)


def process_group_members(pgid: int) -> list[int]:
    """The processes of process group `pgid`, by getpgid(2): unlike the command line, the group stays
    readable while a killed process tears its memory down."""
    pids = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                pids.append(pid)
        except OSError:  # it ended meanwhile
            continue
    return pids


def live_stubs(server_pid: int) -> dict[int, Stub]:
    """The running (not dead) stub processes whose parent is `server_pid`, by pid (psutil reads the
    parent from /proc/<pid>/stat; only the model and the region come from the command line)."""
    try:
        children = psutil.Process(server_pid).children()
    except psutil.Error:  # the server is gone
        return {}
    stubs = {}
    for child in children:
        try:
            argv = child.cmdline()
        except psutil.Error:  # ended, or dead (a zombie has no command line)
            continue
        # argv: stub, <repository>/<model>/<version>/model.py, shm region, 5 more, instance name, ...
        if len(argv) < 9 or not argv[0].endswith(STUB_NAME):
            continue
        stubs[child.pid] = Stub(child.pid, Path(argv[1]).parents[1].name, argv[8], argv[2])
    return stubs


def shm_bytes(name: str) -> int:
    """Memory a /dev/shm file holds (its pages, not its nominal size), 0 when it is gone."""
    try:
        return (SHM_DIR / name).stat().st_blocks * 512
    except OSError:
        return 0


def own_shm_region() -> str | None:
    """In a stub process: the /dev/shm region Triton gave it (its third argument); None elsewhere."""
    argv = psutil.Process().cmdline()  # the stub embeds Python: sys.argv is not its command line
    return argv[2] if len(argv) > 2 and argv[0].endswith(STUB_NAME) else None


def thread_waits(pid: int) -> str:
    """Each thread's state and kernel wait channel, e.g. "S futex_wait_queue x3, R -"."""
    try:
        threads = psutil.Process(pid).threads()
    except psutil.Error:
        return "?"
    waits: dict[str, int] = {}
    for thread in threads:
        state = process_state(thread.id)  # psutil reads a thread by its id as it reads a process
        try:  # psutil has no wait channel: read the kernel's
            channel = Path(f"/proc/{pid}/task/{thread.id}/wchan").read_text() or "-"
        except OSError:
            continue
        if state is not None:  # else the thread ended
            where = f"{state} {channel}"
            waits[where] = waits.get(where, 0) + 1
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(waits.items())) or "?"


def metric_values(text: str, name: str) -> dict[str, float]:
    """A metric's value by its `pid` label, from Prometheus text (Triton's /metrics). `name` is the
    sample's name as prometheus_client gives it: a counter's ends in _total."""
    return {sample.labels["pid"]: float(sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name and "pid" in sample.labels}


def remove_shm_regions(names) -> list[str]:
    """Deletes the named /dev/shm files that still exist; returns the names it deleted."""
    removed = []
    for name in names:
        if not name or "/" in name:
            continue
        try:
            (SHM_DIR / name).unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed


class StubWatchdog:
    """A daemon thread that watches the stubs of one tritonserver and reloads the model of a dead one."""

    def __init__(self, server_pid: int, http_url: str, admin_key: str, *, metrics_url: str | None = None,
                 interval_s: float = config.STUB_WATCH_INTERVAL_S):
        self.server_pid = server_pid
        self.http_url = http_url
        self.metrics_url = metrics_url  # where the stream model says it may be reloaded; None: never for memory
        self.admin_key = admin_key
        self.interval_s = interval_s
        self.known: dict[int, Stub] = {}
        self.regions: set[str] = set()  # every stub region seen: removed at shutdown if left behind
        self.recoveries: list[dict] = []  # what happened, for the log and the tests
        self.resets: list[dict] = []  # models reloaded for the size of their shared memory
        self.killed_replaced: list[int] = []  # replaced stubs that outlived REPLACED_STUB_GRACE_S
        self._reset_regions: set[str] = set()
        self._replaced: dict[int, float] = {}  # stubs a reset replaced -> when they must be gone
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fv2es-stub-watchdog", daemon=True)

    def start(self) -> "StubWatchdog":
        self._look()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)

    @property
    def recovering(self) -> bool:
        return any(r.get("ready_at") is None for r in self.recoveries)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._look()
            except Exception as exc:  # noqa: BLE001 - the watchdog must outlive one bad look
                self._log(f"stub watchdog: {exc!r}")

    def _look(self) -> None:
        current = live_stubs(self.server_pid)
        # A dead stub whose instance has a live stub again was replaced (an admin's unload and load).
        running = {stub.instance for stub in current.values()}
        dead = [stub for pid, stub in self.known.items()
                if pid not in current and process_state(pid) == "Z" and stub.instance not in running]
        self.known = {**{p: s for p, s in self.known.items() if process_state(p) not in (None, "Z")}, **current}
        self.regions.update(s.shm_region for s in current.values())
        for model in sorted({s.model for s in dead}):
            if self._stop.is_set():
                return
            if self._unloaded_on_purpose(model):  # an admin's unload stops the stubs too: not a death
                continue
            self._recover(model, [s for s in dead if s.model == model])
        self._kill_overdue_replaced()
        oversized = [(stub, shm_bytes(stub.shm_region)) for stub in current.values() if stub.shm_region not in self._reset_regions]
        oversized = [(stub, held) for stub, held in oversized if held > config.SHM_REGION_RESET_BYTES]
        if oversized:
            draining = self._draining()
            for stub, held in oversized:
                # the stream model's stub only once it has drained (its gauge says so)
                stateless = stub.model != config.STREAM_MODEL_NAME
                if not self._stop.is_set() and draining.get(str(stub.pid), float(stateless)) >= 1.0:
                    self._reset(stub, held)

    def _reset(self, stub: Stub, held: int) -> None:
        old = [s for s in live_stubs(self.server_pid).values() if s.model == stub.model]
        self._reset_regions.update(s.shm_region for s in old)
        started = time.monotonic()
        try:
            self.reload_in_place(stub.model)
        except (OSError, RuntimeError) as exc:
            self._log(f"stub watchdog: reloading '{stub.model}' to free its shared memory failed ({exc})")
            return
        self.resets.append({"model": stub.model, "region_bytes": held, "at": time.time(), "replaced": [s.pid for s in old]})
        # Triton waits without a limit for a replaced stub to finish and exit (a request that never
        # ends, a finalize that hangs): one still there after the grace period is killed. A drained
        # stream model has no request left: its grace is short.
        grace = config.DRAINED_STUB_GRACE_S if stub.model == config.STREAM_MODEL_NAME else config.REPLACED_STUB_GRACE_S
        self._replaced.update({s.pid: time.monotonic() + grace for s in old})
        self._log(f"stub watchdog: '{stub.model}' held {held / 2**20:.0f} MiB of shared memory "
                  f"(over {config.SHM_REGION_RESET_BYTES / 2**20:.0f} MiB); reloaded in place in {time.monotonic() - started:.1f} s")

    def reload_in_place(self, model: str) -> None:
        """Loads `model` again with new stubs, the old ones serving until then (readiness stays).

        Triton skips a load whose config is unchanged: a parameter that no model reads makes it new."""
        with urllib.request.urlopen(f"http://{self.http_url}/v2/models/{model}/config", timeout=30) as reply:
            model_config = json.loads(reply.read())
        model_config.setdefault("parameters", {})["fv2es_reload"] = {"string_value": str(time.time_ns())}
        self._repository_call(f"models/{model}/load", {"parameters": {"config": json.dumps(model_config)}}, timeout_s=600)

    def _recover(self, model: str, dead: list[Stub]) -> None:
        record = {"model": model, "instances": [s.instance for s in dead], "died_at": time.time(), "ready_at": None}
        self.recoveries.append(record)
        self._log(f"stub watchdog: stub {', '.join(record['instances'])} of model '{model}' died; reloading '{model}'")
        started = time.monotonic()
        # Unload first: it fails the ensemble's readiness until the model is back, and stops the
        # dead instance (reloading in place would keep it, and its /dev/shm file, until later).
        self._repository_call(f"models/{model}/unload", timeout_s=30)
        for attempt in range(3):
            try:
                self._repository_call(f"models/{model}/load", timeout_s=600)
                break
            except (OSError, RuntimeError) as exc:
                self._log(f"stub watchdog: loading '{model}' failed ({exc}); attempt {attempt + 1} of 3")
                time.sleep(1.0)
        else:
            self._log(f"stub watchdog: model '{model}' could not be reloaded; the server stays not ready")
            return
        for stub in dead:  # their files, if the unload left them
            remove_shm_regions([stub.shm_region])
        record["ready_at"] = time.time()
        self._log(f"stub watchdog: model '{model}' reloaded in {time.monotonic() - started:.1f} s")
        self.known.update(live_stubs(self.server_pid))

    def _kill_overdue_replaced(self) -> None:
        now = time.monotonic()
        for pid, deadline in list(self._replaced.items()):
            state = process_state(pid)
            if state in (None, "Z"):
                del self._replaced[pid]
            elif now > deadline:
                del self._replaced[pid]
                waits = thread_waits(pid)  # where each thread sleeps: what it waited for, for the log
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
                self.killed_replaced.append(pid)
                self._log(f"stub watchdog: replaced stub {pid} still alive past its grace period after its model was "
                          f"reloaded (state {state}; threads waiting in {waits}): killed")

    def _draining(self) -> dict[str, float]:
        """The stream model's draining gauge, by stub pid; without the metrics none (a stub without
        a value counts as not drained: its streams are worth more than its memory)."""
        if self.metrics_url is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://{self.metrics_url}/metrics", timeout=10) as reply:
                return metric_values(reply.read().decode(errors="replace"), config.STREAM_DRAINING_METRIC)
        except (OSError, ValueError) as exc:
            self._log(f"stub watchdog: no metrics ({exc!r}): the stream model is not reloaded for its memory")
            return {}

    def _unloaded_on_purpose(self, model: str) -> bool:
        """Whether the repository index shows `model` unloading or unloaded (a dead stub leaves it READY)."""
        states = {m.get("state") for m in self._repository_call("index", timeout_s=30) if m.get("name") == model}
        return bool(states) and states <= {"UNLOADING", "UNAVAILABLE"}

    def _repository_call(self, path: str, body: dict | None = None, *, timeout_s: float):
        request = urllib.request.Request(
            f"http://{self.http_url}/v2/repository/{path}", data=json.dumps(body).encode() if body else b"", method="POST",
            headers={config.ADMIN_KEY_HEADER: self.admin_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:
                answer = reply.read()
                return json.loads(answer) if answer else None
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            try:
                body = json.loads(body).get("error", body)
            except ValueError:
                pass
            raise RuntimeError(f"HTTP {exc.code}: {body}") from None

    @staticmethod
    def _log(message: str) -> None:
        print(f"fv2es: {message}", file=sys.stderr, flush=True)


def orphaned_stubs(regions: set[str], prefix: str | None = None) -> list[int]:
    """Stub processes (any parent) that still use one of `regions`, or a region named with `prefix`:
    left behind by a killed server."""
    pids = []
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []  # None: ended, dead or not ours to read
        region = argv[2] if len(argv) > 2 else ""
        if (process.pid != os.getpid() and argv and argv[0].endswith(STUB_NAME)
                and (region in regions or (prefix and region.startswith(prefix)))):
            pids.append(process.pid)
    return pids
