"""Load test: live streams and whole files at once, with a hostile client among them.

    .venv/bin/python benchmarks/load.py [--minutes 3] [--streams 7] [--files 8] [--url HOST:PORT]

Without --url it starts an embedded server. For the time given:
- `--streams` clients stream an MPEG-TS clip again and again, each in 64 KiB chunks as fast as the
  server takes them, ALL with sequence id 1 (a hand-written client's id) and each its own clip
  (two clips, alternating): every stream's result must equal its clip's whole-file result;
- `--files` clients send the sample video again and again: every result must equal the first;
- one hostile client, in a loop: sends the end of a stream with sequence id 1 and no key or a guessed
  key, opens a stream with id 1 and sends a chunk over the server's chunk limit, and opens one with a
  200 MiB chunk (the shared memory it takes must not cost anyone a stream).
It prints what each kind of client got (streams finished, lost, mixed; files; hostile requests
refused) and the latencies, and exits 1 if any stream was lost or any result mixed up. Honest
clients
that find every slot taken (UNAVAILABLE) wait and retry; that is counted, not a loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "python_backend"))

from fv2es import config  # noqa: E402
from fv2es.tritonserver import EmbeddedServer  # noqa: E402
from fv2es_build import synth  # noqa: E402
from fv2es_client import Fv2esClient, Fv2esError  # noqa: E402
from fv2es_client.stream import RequestStream  # noqa: E402

SAMPLE = ROOT / "samples" / "talking_head.mp4"
CHUNK = 64 * 1024
SCORE_TOLERANCE = 1e-4
RETRY_S = 1.0


def same(result, reference) -> bool:
    """Same segments, transcripts and scores (within SCORE_TOLERANCE)."""
    if len(result.segments) != len(reference.segments):
        return False
    for mine, theirs in zip(result.segments, reference.segments):
        if mine.transcript != theirs.transcript or max(abs(mine.scores[k] - theirs.scores[k]) for k in theirs.scores) > SCORE_TOLERANCE:
            return False
    return max(abs(result.scores[k] - reference.scores[k]) for k in reference.scores) <= SCORE_TOLERANCE


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.seconds: dict[str, list[float]] = {}
        self.errors: list[str] = []

    def add(self, what: str, seconds: float | None = None, error: str | None = None) -> None:
        with self.lock:
            self.counts[what] += 1
            if seconds is not None:
                self.seconds.setdefault(what, []).append(seconds)
            if error and len(self.errors) < 20:
                self.errors.append(f"{what}: {error}")


def stream_client(url: str, clip: bytes, reference, stop_at: float, tally: Tally) -> None:
    while time.monotonic() < stop_at:
        stream = RequestStream(url, 1, config.STREAM_MODEL_NAME, timeout_s=600, mode="exact")
        started = time.monotonic()
        try:
            stream.open(clip[:CHUNK])
            for i in range(CHUNK, len(clip), CHUNK):
                stream.request(clip[i : i + CHUNK])
            result = stream.finish()
            tally.add("stream ok" if same(result, reference) else "stream MIXED", time.monotonic() - started)
        except Fv2esError as exc:
            if exc.code == "UNAVAILABLE" and stream.key is None:  # every slot taken: wait, try again
                tally.add("stream waited for a slot")
                time.sleep(RETRY_S)
            else:
                tally.add("stream LOST", error=f"{exc.code} {exc.message()[:200]}")
        finally:
            stream.close()


def file_client(client: Fv2esClient, video: bytes, reference, stop_at: float, tally: Tally) -> None:
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            result = client.analyze(video)
            tally.add("file ok" if same(result, reference) else "file MIXED", time.monotonic() - started)
        except Fv2esError as exc:
            tally.add("file FAILED", error=f"{exc.code} {exc.message()[:200]}")


def hostile_client(url: str, clip: bytes, stop_at: float, tally: Tally) -> None:
    def attempt(what: str, action, expected: str) -> None:
        stream = RequestStream(url, 1, config.STREAM_MODEL_NAME, max_send_bytes=512 * 2**20, timeout_s=600, mode="exact")
        try:
            action(stream)
            tally.add(f"hostile {what}: ACCEPTED")
        except Fv2esError as exc:
            if expected in exc.message():
                tally.add(f"hostile {what}: refused")
            elif exc.code == "UNAVAILABLE" and stream.key is None:  # every slot held by an honest stream
                tally.add(f"hostile {what}: no slot")
            else:
                tally.add(f"hostile {what}: refused otherwise", error=exc.message()[:200])
        finally:
            stream.close()

    big = int(config.STREAM_MAX_CHUNK_BYTES) + 1
    while time.monotonic() < stop_at:
        attempt("end of id 1 without key", lambda s: s.request(b"", end=True), "STREAM_KEY is missing")
        attempt("end of id 1 with a guessed key", lambda s: s.request(b"", end=True, key="A" * 32), "no open stream")
        attempt("chunk over the limit", lambda s: (s.open(clip[:CHUNK]), s.request(bytes(big))), "per chunk")
        attempt("200 MiB chunk", lambda s: (s.open(clip[:CHUNK]), s.request(bytes(200 * 2**20))), "per chunk")
        time.sleep(2.0)


def run(url: str, minutes: float, n_streams: int, n_files: int) -> dict:
    clips = [synth.two_person_video(synth.TWO_PERSON_TURNS, container_format="mpegts")[0],
             synth.two_person_video(synth.TWO_PERSON_TURNS[:2], container_format="mpegts")[0]]
    sample = SAMPLE.read_bytes()
    with Fv2esClient(url) as client:
        references = [client.analyze(clip) for clip in clips]
        sample_reference = client.analyze(sample)
    tally = Tally()
    stop_at = time.monotonic() + minutes * 60
    file_clients = [Fv2esClient(url) for _ in range(n_files)]
    threads = [threading.Thread(target=stream_client, args=(url, clips[i % 2], references[i % 2], stop_at, tally))
               for i in range(n_streams)]
    threads += [threading.Thread(target=file_client, args=(c, sample, sample_reference, stop_at, tally)) for c in file_clients]
    threads.append(threading.Thread(target=hostile_client, args=(url, clips[0], stop_at, tally)))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for c in file_clients:
        c.close()
    return {"wall_s": time.monotonic() - started, "counts": dict(tally.counts), "errors": tally.errors,
            "medians_s": {k: statistics.median(v) for k, v in tally.seconds.items()}}


def report(result: dict, args) -> str:
    counts = result["counts"]
    lines = [f"load test: {args.streams} stream clients (all sequence id 1), {args.files} file clients, 1 hostile client, "
             f"{result['wall_s']:.0f} s"]
    for what in sorted(counts):
        median = result["medians_s"].get(what)
        lines.append(f"  {what:45s} {counts[what]:5d}" + (f"   median {median:.2f} s" if median is not None else ""))
    for error in result["errors"]:
        lines.append(f"  ! {error}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=config.STREAM_MAX_OPEN - 1,
                        help="stream clients (default: one slot fewer than the server has, for the hostile client)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--url", help="a running server's gRPC address (default: start an embedded one)")
    args = parser.parse_args()
    if args.url:
        result = run(args.url, args.minutes, args.streams, args.files)
    else:
        with EmbeddedServer() as server:
            result = run(server.grpc_url, args.minutes, args.streams, args.files)
            alive = server.process.poll() is None
            resets = [r["model"] for r in server.watchdog.resets]
        result["counts"]["server alive at the end"] = int(alive)
        result["resets"] = resets
    print(report(result, args))
    if result.get("resets"):
        print(f"  watchdog reloads for memory: {', '.join(result['resets'])}")
    bad = [k for k in result["counts"] if any(w in k for w in ("LOST", "MIXED", "FAILED", "ACCEPTED", "otherwise"))]
    sys.exit(1 if bad or result["counts"].get("server alive at the end") == 0 else 0)


if __name__ == "__main__":
    main()
