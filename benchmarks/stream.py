"""Live-stream latency: a clip sent to fv2es_stream at the pace it plays, and how long after each
segment's end (the moment the stream's bytes up to that time were sent) its answer arrives.

    .venv/bin/python benchmarks/stream.py [--seconds 60] [--mode low_latency|exact] [--concurrent 8] [--batching 6]
    (run.py calls `measure`, both modes, and `measure_concurrent`)

The clip is the benchmark's talking head remuxed to MPEG-TS (what a camera or an encoder sends
live); its bytes go out every STEP_S of media time, in real time.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time

import av
import numpy as np
from fv2es_client.sources import byte_clock

STEP_S = 0.5  # media time per chunk


def to_mpegts(data: bytes) -> bytes:
    """The same streams, copied into MPEG-TS."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out, "w", format="mpegts") as target:
        mapping = {s.index: target.add_stream_from_template(s) for s in source.streams if s.type in ("audio", "video")}
        for packet in source.demux(*[source.streams[i] for i in mapping]):
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream.index]
            target.mux(packet)
    return out.getvalue()


def paced_chunks(data: bytes, sent_at: dict[float, float], step_s: float = STEP_S):
    """The bytes up to each multiple of `step_s` of media time, at that time after the first chunk;
    `sent_at[t]` records when the bytes up to media time t went out."""
    with tempfile.NamedTemporaryFile(suffix=".ts") as f:
        f.write(data)
        f.flush()
        clock = byte_clock(f.name)  # the client's own clock of --stream --realtime
    duration = clock[-1][0]
    started = time.monotonic()
    sent = 0
    t = step_s
    while sent < len(data):
        wait = started + t - step_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        upto = len(data) if t > duration else max([e for mt, e in clock if mt < t] or [0])
        if upto > sent:
            yield data[sent:upto]
            sent = upto
        sent_at[t] = time.monotonic()
        t += step_s


# Segments that arrive within this long of each other came in one answer.
SAME_ANSWER_S = 0.05


def paced_stream(client, data: bytes, mode: str) -> tuple[list, list[float], object, list[tuple[float, float]]]:
    """`data` (MPEG-TS) streamed at its own pace in `mode`: its segments, each one's latency from the
    moment the bytes up to its end were sent to its answer, the whole stream's result, and each
    answer's lag: (media time, latency) of the latest segment it carried. An answer's older segments
    waited for the end of their stretch (exact mode), so only its latest one tells how far behind
    the stream is."""
    from fv2es_client.client import Segment

    sent_at: dict[float, float] = {}
    latencies, segments, result, answers, last_arrival = [], [], None, [], -float("inf")
    for event in client.stream(paced_chunks(data, sent_at), mode=mode):
        arrived = time.monotonic()
        if not isinstance(event, Segment):
            result = event
            continue
        segments.append(event)
        # the first chunk boundary at or after the segment's end
        boundary = min((t for t in sent_at if t >= event.end - 1e-6), default=max(sent_at))
        latencies.append(arrived - sent_at[boundary])
        if arrived - last_arrival < SAME_ANSWER_S and answers:
            answers[-1] = (event.end, latencies[-1])
        else:
            answers.append((event.end, latencies[-1]))
        last_arrival = arrived
    return segments, latencies, result, answers


def percentiles(latencies: list[float]) -> dict:
    ranked = sorted(latencies)
    return {"latency_median_s": statistics.median(ranked), "latency_p95_s": ranked[min(len(ranked) - 1, round(0.95 * (len(ranked) - 1)))],
            "latency_max_s": ranked[-1], "latency_min_s": ranked[0]}


def measure(url: str, video: bytes, mode: str = "exact") -> dict:
    """Streams `video` (remuxed to MPEG-TS) at its own pace in `mode`; each segment's latency from the
    moment its end was sent to its answer, and how its segments compare with the whole file's."""
    from fv2es_client import Fv2esClient

    data = to_mpegts(video)
    with Fv2esClient(url, timeout_s=3600) as client:
        whole = client.analyze(data)
        segments, latencies, result, _ = paced_stream(client, data, mode)
    same = len(whole.segments) == len(segments) and all(
        abs(a.start - b.start) < 1e-4 and abs(a.end - b.end) < 1e-4 and a.transcript == b.transcript
        and max(abs(a.scores[k] - b.scores[k]) for k in a.scores) < 1e-4 for a, b in zip(whole.segments, segments))
    return {
        "mode": mode, "clip_s": result.segments[-1].end if result.segments else 0.0, "mb": len(data) / 1e6, "segments": len(segments),
        **percentiles(latencies), "latencies_s": latencies, "same_as_whole_file": same, "step_s": STEP_S,
        **agreement(segments, whole.segments),
    }


def measure_concurrent(url: str, video: bytes, streams: int = 8, mode: str = "low_latency", stagger_s: float = 1.0) -> dict:
    """`streams` clients each stream `video` at its own pace at once (each starting `stagger_s` after
    the one before, as cameras do not start together): every segment's latency, and whether any stream
    falls behind: the slope of a stream's answer lag (paced_stream) over its media time (s of delay
    gained per s of media; about 0 when it keeps up), the largest over the streams."""
    from concurrent.futures import ThreadPoolExecutor

    from fv2es_client import Fv2esClient

    data = to_mpegts(video)

    def one(i: int):
        time.sleep(i * stagger_s)
        with Fv2esClient(url, timeout_s=3600) as client:
            return paced_stream(client, data, mode)

    started = time.monotonic()
    with ThreadPoolExecutor(streams) as pool:
        runs = list(pool.map(one, range(streams)))
    wall = time.monotonic() - started
    slopes = [float(np.polyfit(*zip(*answers), 1)[0]) for *_, answers in runs if len(answers) > 1]
    every = [x for _, latencies, _, _ in runs for x in latencies]
    return {"streams": streams, "mode": mode, "stagger_s": stagger_s, "segments": len(every), **percentiles(every),
            "lag_slope_max": max(slopes), "all_ended": all(result is not None for _, _, result, _ in runs), "wall_s": wall,
            "clip_s": max(s.end for segments, *_ in runs for s in segments)}


def batching(url: str, video: bytes, streams: int = 6, mode: str = "low_latency") -> dict:
    """`streams` clients stream `video` at once, as fast as the server takes it: each batched
    encoder's requests and executions over those streams (fewer executions than requests: the
    dynamic batcher merged requests of different streams), and whether every stream got the same
    result."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.grpc as grpcclient
    from fv2es import pipeline
    from fv2es_client import Fv2esClient

    data = to_mpegts(video)
    encoders = [s.model_name for s in pipeline.batched_steps()]

    def counts() -> dict[str, tuple[int, int]]:
        with grpcclient.InferenceServerClient(url) as c:
            stats = c.get_inference_statistics(as_json=True)["model_stats"]
        return {m["name"]: (int(m["inference_stats"]["success"].get("count", 0)), int(m.get("execution_count", 0)))
                for m in stats if m["name"] in encoders}

    def one(_):
        with Fv2esClient(url, timeout_s=3600) as client:
            return list(client.stream([data[i : i + 65536] for i in range(0, len(data), 65536)], mode=mode))[-1]

    before = counts()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(one, range(streams)))
    after = counts()
    same = all(max(abs(r.scores[k] - results[0].scores[k]) for k in r.scores) < 1e-4 for r in results)
    return {"streams": streams, "mode": mode, "same_results": same,
            **{m: {"requests": after[m][0] - before[m][0], "executions": after[m][1] - before[m][1]} for m in encoders}}


def agreement(streamed: list, whole: list) -> dict:
    """How a stream's segments compare with the whole file's on the same media: each streamed segment
    against the whole file's scores over the same time (its overlapping segments' scores, weighted by
    the overlap): the share of segments (and of their time) whose top label is the same, the largest
    score difference; and the word error rate of the stream's transcript (all segments' words in
    order) against the whole file's (jiwer)."""
    import jiwer

    labels = list(whole[0].scores) if whole else []
    same = same_time = total_time = 0.0
    largest = 0.0
    for s in streamed:
        weights = np.array([max(0.0, min(s.end, w.end) - max(s.start, w.start)) for w in whole])
        if weights.sum() <= 0:
            continue
        reference = (weights[:, None] * np.array([[w.scores[k] for k in labels] for w in whole])).sum(0) / weights.sum()
        mine = np.array([s.scores[k] for k in labels])
        largest = max(largest, float(np.abs(mine - reference).max()))
        agrees = int(mine.argmax() == reference.argmax())
        same += agrees
        same_time += agrees * (s.end - s.start)
        total_time += s.end - s.start
    words = [" ".join(x.transcript for x in segments if x.transcript).lower().strip() for segments in (whole, streamed)]
    return {"same_label_share": same / max(len(streamed), 1), "same_label_time_share": same_time / max(total_time, 1e-9),
            "largest_score_difference": largest,
            "word_error_rate": float(jiwer.wer(words[0], words[1])) if words[0] else float(bool(words[1]))}


def main() -> None:
    import run  # noqa: PLC0415 - the benchmark's clips and server
    from fv2es.tritonserver import REPOSITORY, EmbeddedServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="clip length (one of the benchmark clips)")
    parser.add_argument("--mode", choices=("low_latency", "exact"), nargs="+", default=["low_latency", "exact"])
    parser.add_argument("--concurrent", type=int, default=0, help="also this many paced streams at once, in each --mode")
    parser.add_argument("--batching", type=int, default=0, help="only: this many streams at once, unpaced: the encoders' batching")
    args = parser.parse_args()
    with EmbeddedServer(REPOSITORY) as server:
        if args.batching:
            print(batching(server.grpc_url, run.clip(args.seconds), args.batching, args.mode[0]))
            return
        runs = [measure(server.grpc_url, run.clip(args.seconds), mode) for mode in args.mode]
        if args.concurrent:
            runs += [measure_concurrent(server.grpc_url, run.clip(args.seconds), args.concurrent, mode) for mode in args.mode]
        for numbers in runs:
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in numbers.items() if k != "latencies_s"}, flush=True)


if __name__ == "__main__":
    main()
