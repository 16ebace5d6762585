"""Who owns which live stream, and when a stream gives its slot back: fv2es_stream's bookkeeping.

Triton hands the model each chunk of a stream as a request of its own; the sequence id on it is the
client's choice and proves nothing (a second client can send chunks, or the end, with a victim's
id). So the server issues each stream a secret key in its first response ("open"), and every later
chunk must carry it (STREAM_KEY): a chunk reaches the stream whose key it carries, or none. The
table keeps only a hash of each key.

A stream holds one of `max_open` slots until it ends, fails, or loses it to a limit:
- idle: the model was free to take the stream's next chunk for `idle_s` and none came (time the
  model spent executing requests does not count: a chunk may have waited in Triton's queue then;
  this is how the slot of a client that went away comes back);
- wall: open for `max_wall_s`, whatever it sends;
- pace, when a new stream finds every slot taken: a stream that sends less than `min_pace` seconds
  of media per second (after `pace_grace_s`), or nothing for `stalled_s`, is ended to make room
  (the slowest first), so a client cannot hold slots with a byte now and then;
- chunk size: a chunk over `max_chunk_bytes` ends its stream (the model checks it before keeping it).
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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from . import config

S = TypeVar("S")  # what the table holds for a stream (fv2es.serving.stream.Stream)


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
    opened_busy: float  # the table's busy time at open
    touched: float = 0.0  # clock at the last chunk
    touched_busy: float = 0.0


class StreamTable(Generic[S]):
    """The open streams by key, their limits, and the model's busy time; thread-safe (the model's
    execute and its reaper thread both use it)."""

    def __init__(self, limits: StreamLimits, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self.draining = False
        self._drain_started = 0.0
        self._no_drain_until = -float("inf")
        self._lock = threading.Lock()
        self._open: dict[bytes, _Entry[S]] = {}
        self._ended: OrderedDict[bytes, str] = OrderedDict()  # why a recent stream ended, for its next chunk
        self._busy_s = 0.0  # time spent in execute, ...
        self._busy_since: float | None = None  # ... plus the execute going on now

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    # --- Busy time ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def executing(self):
        """Wraps the model's execute: time inside it is not idle time of any stream."""
        with self._lock:
            self._busy_since = self.clock()
        try:
            yield
        finally:
            with self._lock:
                self._busy_s += self.clock() - self._busy_since
                self._busy_since = None

    def _busy(self, now: float) -> float:
        return self._busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)

    def _free_since(self, at: float, busy_at: float, now: float) -> float:
        """Wall time since `at` that the model spent outside execute."""
        return max(0.0, (now - at) - (self._busy(now) - busy_at))

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
            busy = self._busy(now)
            self._open[_digest(key)] = _Entry(stream, media_s, now, busy, now, busy)
            return key, evicted

    def _slowest_lagging(self, now: float) -> tuple[bytes, str] | None:
        """The stream that lags most (see the module's docstring): the longest stalled, else the slowest."""
        lagging = []
        for digest, entry in self._open.items():
            age = self._free_since(entry.opened, entry.opened_busy, now)
            silent = self._free_since(entry.touched, entry.touched_busy, now)
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

    def get(self, key: str | None) -> S:
        """The stream `key` opened; StreamError (saying why, for a stream that was ended) otherwise."""
        if not key:
            raise StreamError("STREAM_KEY is missing: a stream's first chunk carries sequence_start, and every "
                              "later chunk the key that its first response (EVENT \"open\") gave")
        digest = _digest(key)
        with self._lock:
            entry = self._open.get(digest)
            if entry is None:
                reason = self._ended.get(digest)
                raise StreamError(f"the stream was ended by the server: {reason}" if reason else
                                  "no open stream has this STREAM_KEY (never opened, ended, or failed)")
            now = self.clock()
            entry.touched, entry.touched_busy = now, self._busy(now)
            return entry.stream

    def close(self, key: str, reason: str = "") -> S | None:
        """Removes the stream (ended normally, or failed: `reason` for its next chunk); None if gone."""
        with self._lock:
            digest = _digest(key)
            return self._end(digest, reason or "it ended") if digest in self._open else None

    def _end(self, digest: bytes, reason: str) -> S:
        entry = self._open.pop(digest)
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
                idle = self._free_since(entry.touched, entry.touched_busy, now)
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

    def remove_all(self) -> list[S]:
        with self._lock:
            streams = [e.stream for e in self._open.values()]
            self._open.clear()
            return streams
