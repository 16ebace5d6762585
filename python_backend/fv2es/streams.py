"""Who owns which live stream, and when a stream gives its slot back: fv2es_stream's bookkeeping.

Triton hands the model each chunk of a stream as a request of its own; the sequence id on it is the
client's choice and proves nothing (a second client can send chunks, or the end, with a victim's
id). So the server issues each stream a secret key in its first response ("open"), and every later
chunk must carry it (STREAM_KEY): a chunk reaches the stream whose key it carries, or none. The
table keeps only a hash of each key.

A stream holds one of `max_open` slots until it ends, fails, or loses it to a limit:
- idle: the stream's worker was free to take its next chunk for `idle_s` and none came (time it
  spent on the stream's chunks does not count: a client that waits for its answers sends nothing
  then; this is how the slot of a client that went away comes back);
- wall: open for `max_wall_s`, whatever it sends;
- pace, when a new stream finds every slot taken: a stream that sends less than `min_pace` seconds
  of media per second (after `pace_grace_s`), or nothing for `stalled_s`, is ended to make room
  (the slowest first), so a client cannot hold slots with a byte now and then;
- chunk size: a chunk over `max_chunk_bytes` ends its stream (the model checks it before keeping it),
  and so does a chunk that would make the stream's chunks waiting for its worker more than
  `max_pending_bytes` (a client that does not wait for answers).
The stream's later chunks get the reason. Limits come from config.STREAM_* through the model's
config parameters.

`draining`: once the model's shared-memory region has grown past config.SHM_REGION_RESET_BYTES and
no stream is open, the table opens no more streams, and the stub watchdog reloads the model (new
stubs, a fresh region) without losing a stream (fv2es/watchdog.py). In a Triton without our
watchdog nothing reloads it: after STREAM_DRAIN_TIMEOUT_S the table opens streams again (the memory
stays) and drains again only STREAM_DRAIN_RETRY_S later.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from . import config

S = TypeVar("S")  # what the table holds for a stream (fv2es.serving.stream.Stream)
T = TypeVar("T")  # a chunk as the stream model hands it to a worker


class StreamError(Exception):
    """A chunk the table will not take. `code_name` is the python backend's error code name:
    INVALID_ARG (the client's mistake) or UNAVAILABLE (try again later)."""

    def __init__(self, message: str, code_name: str = "INVALID_ARG"):
        super().__init__(message)
        self.code_name = code_name


@dataclass(frozen=True)
class StreamLimits:
    max_open: int = config.STREAM_MAX_OPEN
    idle_s: float = config.STREAM_IDLE_S
    max_wall_s: float = config.STREAM_MAX_WALL_S
    max_chunk_bytes: int = config.STREAM_MAX_CHUNK_BYTES
    max_pending_bytes: int = config.STREAM_MAX_PENDING_BYTES
    min_pace: float = config.STREAM_MIN_PACE
    pace_grace_s: float = config.STREAM_PACE_GRACE_S
    stalled_s: float = config.STREAM_STALLED_S

    @classmethod
    def from_parameters(cls, parameter: Callable[[str, str], str]) -> "StreamLimits":
        """From a model's config parameters (`parameter(name, default)`), named as the fields."""
        values = {}
        for name, f in cls.__dataclass_fields__.items():
            cast = int if f.type == "int" else float
            values[name] = cast(parameter(name, str(f.default)))
        return cls(**values)


def new_key() -> str:
    return secrets.token_urlsafe(config.STREAM_KEY_BYTES)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass
class _Entry(Generic[S]):
    stream: S
    media_s: Callable[[], float]  # seconds of media the stream has delivered so far
    opened: float  # clock at open
    touched: float  # clock at the last chunk
    busy_s: float = 0.0  # time its worker spent on its chunks, ...
    busy_since: float | None = None  # ... plus the chunk it is on now
    opened_busy: float = 0.0  # busy time at open
    touched_busy: float = 0.0  # busy time at the last chunk

    def busy(self, now: float) -> float:
        return self.busy_s + (now - self.busy_since if self.busy_since is not None else 0.0)

    def free_since(self, at: float, busy_at: float, now: float) -> float:
        """Wall time since `at` that the stream's worker spent waiting for chunks."""
        return max(0.0, (now - at) - (self.busy(now) - busy_at))


class StreamTable(Generic[S]):
    """The open streams by key, their limits, and each stream's busy time; thread-safe (the model's
    execute, the streams' workers and its reaper thread all use it)."""

    def __init__(self, limits: StreamLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self.draining = False
        self._drain_started = 0.0
        self._no_drain_until = -float("inf")
        self._lock = threading.Lock()
        self._open: dict[bytes, _Entry[S]] = {}
        self._ended: OrderedDict[bytes, str] = OrderedDict()  # why a recent stream ended, for its next chunk
        # Ended streams whose worker still answers their waiting chunks: a chunk that arrives now goes
        # after those (its answer, the reason, must not overtake the error that ended the stream).
        self._ending: dict[bytes, S] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    @contextlib.contextmanager
    def working(self, key: str):
        """Wraps the stream's worker on one of its chunks: that time is not the stream's idle time."""
        digest = _digest(key)
        with self._lock:
            entry = self._open.get(digest)
            if entry is not None:
                entry.busy_since = self.clock()
        try:
            yield
        finally:
            with self._lock:
                if entry is not None and entry.busy_since is not None:
                    entry.busy_s += self.clock() - entry.busy_since
                    entry.busy_since = None

    # --- Streams --------------------------------------------------------------------------------

    def open(self, stream: S, media_s: Callable[[], float]) -> tuple[str, list[tuple[S, str]]]:
        """A new stream's key, and the streams ended to make room for it (stop them; the reason is
        kept for their next chunk). Raises StreamError(UNAVAILABLE) when draining or every slot is
        held by a stream that keeps up."""
        with self._lock:
            self._end_stale_drain()
            if self.draining:
                raise StreamError("the stream model is being reloaded to return memory; open the stream again "
                                  "in a few seconds", "UNAVAILABLE")
            now = self.clock()
            evicted = []
            if len(self._open) >= self.limits.max_open:
                slowest = self._slowest_lagging(now)
                if slowest is None:
                    raise StreamError(f"all {self.limits.max_open} stream slots are held by streams that keep up; "
                                      "try again later", "UNAVAILABLE")
                digest, reason = slowest
                evicted.append((self._end(digest, reason), reason))
            key = new_key()
            self._open[_digest(key)] = _Entry(stream, media_s, opened=now, touched=now)
            return key, evicted

    def _slowest_lagging(self, now: float) -> tuple[bytes, str] | None:
        """The stream that lags most (see the module's docstring): the longest stalled, else the slowest."""
        lagging = []
        for digest, entry in self._open.items():
            age = entry.free_since(entry.opened, entry.opened_busy, now)
            silent = entry.free_since(entry.touched, entry.touched_busy, now)
            pace = entry.media_s() / age if age > 0 else float("inf")
            if silent >= self.limits.stalled_s:
                lagging.append(((0, -silent), digest, f"sent nothing for {silent:.0f} s while every stream slot was taken"))
            elif age >= self.limits.pace_grace_s and pace < self.limits.min_pace:
                lagging.append(((1, pace), digest, f"sent {pace:.2f} s of media per second (at least {self.limits.min_pace:g} "
                                                   "is needed) while every stream slot was taken"))
        if not lagging:
            return None
        _, digest, reason = min(lagging)
        return digest, reason

    def get(self, key: str | None, touch: bool = True, ending: bool = False) -> S:
        """The stream `key` opened; StreamError (saying why, for a stream that was ended) otherwise.
        `touch`: a chunk of the stream arrived now (not idle). `ending`: an ended stream is returned
        too until `finished` (its chunks still go to its worker, which answers them in order)."""
        if not key:
            raise StreamError("STREAM_KEY is missing: a stream's first chunk carries sequence_start, and every "
                              "later chunk the key that its first response (EVENT \"open\") gave")
        digest = _digest(key)
        with self._lock:
            entry = self._open.get(digest)
            if entry is None:
                if ending and digest in self._ending:
                    return self._ending[digest]
                reason = self._ended.get(digest)
                raise StreamError(f"the stream was ended by the server: {reason}" if reason else
                                  "no open stream has this STREAM_KEY (never opened, ended, or failed)")
            if touch:
                now = self.clock()
                entry.touched, entry.touched_busy = now, entry.busy(now)
            return entry.stream

    def close(self, key: str, reason: str = "") -> S | None:
        """Removes the stream (ended normally, or failed: `reason` for its next chunk); None if gone."""
        with self._lock:
            digest = _digest(key)
            return self._end(digest, reason or "it ended") if digest in self._open else None

    def finished(self, stream: S) -> None:
        """The ended `stream`'s worker has answered its last chunk: forget it."""
        with self._lock:
            for digest in [d for d, s in self._ending.items() if s is stream]:
                del self._ending[digest]

    def _end(self, digest: bytes, reason: str) -> S:
        entry = self._open.pop(digest)
        self._ending[digest] = entry.stream
        self._ended[digest] = reason
        while len(self._ended) > config.STREAM_ENDED_KEPT:
            self._ended.popitem(last=False)
        return entry.stream

    def expired(self) -> list[tuple[S, str]]:
        """Removes and returns the streams over the idle or wall-time limit, with the reason."""
        with self._lock:
            now = self.clock()
            over = []
            for digest, entry in self._open.items():
                idle = entry.free_since(entry.touched, entry.touched_busy, now)
                if idle > self.limits.idle_s:
                    over.append((digest, f"no chunk for {idle:.0f} s (limit {self.limits.idle_s:g} s)"))
                elif now - entry.opened > self.limits.max_wall_s:
                    over.append((digest, f"open for over {self.limits.max_wall_s:g} s (the limit)"))
            return [(self._end(digest, reason), reason) for digest, reason in over]

    def drain_if_empty(self) -> bool:
        """Stops opening streams if none is open (the model is then safe to reload); whether it drains."""
        with self._lock:
            self._end_stale_drain()
            if not self._open and not self.draining and self.clock() >= self._no_drain_until:
                self.draining, self._drain_started = True, self.clock()
            return self.draining

    def _end_stale_drain(self) -> None:
        """Nothing reloaded the model in time (no watchdog): take streams again, drain again later."""
        now = self.clock()
        if self.draining and now - self._drain_started > config.STREAM_DRAIN_TIMEOUT_S:
            self.draining = False
            self._no_drain_until = now + config.STREAM_DRAIN_RETRY_S

    def remove_all(self, reason: str) -> list[S]:
        with self._lock:
            return [self._end(digest, reason) for digest in list(self._open)]


class Worker(Generic[T]):
    """One stream's thread: it runs the stream's chunks one at a time in the order they came, while
    other streams' workers run theirs; only it touches the stream's state. `close()` (the stream
    ended, failed or lost its slot): the chunks still waiting are run (they find the stream ended
    and get the reason), then `on_exit` runs on the thread and the thread ends. `run` answers its
    chunk and handles its errors; whatever it still raises (an answer that could not be sent) goes
    to `on_error`, and the worker goes on with the next chunk."""

    def __init__(self, name: str, run: Callable[[T], None], on_exit: Callable[[], None],
                 on_error: Callable[[BaseException], None] = lambda exc: None):
        self._run, self._on_exit, self._on_error = run, on_exit, on_error
        self._cond = threading.Condition()
        self._waiting: deque[tuple[T, int]] = deque()
        self._waiting_bytes = 0
        self._closing = False
        self._ended = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def waiting_bytes(self) -> int:
        """The bytes of the chunks handed to the worker and not yet run."""
        with self._cond:
            return self._waiting_bytes

    def submit(self, chunk: T, n_bytes: int = 0) -> bool:
        """Queues `chunk` (holding `n_bytes`) after the others; False once the worker has ended."""
        with self._cond:
            if self._ended:
                return False
            self._waiting.append((chunk, n_bytes))
            self._waiting_bytes += n_bytes
            self._cond.notify()
            return True

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the thread to end; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._waiting and not self._closing:
                        self._cond.wait()
                    if not self._waiting:
                        # In the same lock as the check: a chunk submitted after it is refused (and
                        # answered by the caller), never queued where no one runs it.
                        self._ended = True
                        break
                    chunk, n_bytes = self._waiting.popleft()
                    # No longer waiting once taken, not once answered: `run` sends the chunk's answer,
                    # and a client that waited for it may send its next chunk before `run` returns.
                    self._waiting_bytes -= n_bytes
                try:
                    self._run(chunk)
                except Exception as exc:  # noqa: BLE001 - reported; the stream's other chunks still get answers
                    self._on_error(exc)
        finally:
            with self._cond:
                self._ended = True
            self._on_exit()
