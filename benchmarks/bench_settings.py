"""Benchmark settings (benchmarks/run.py, `make bench`): not part of a served repository."""

BENCH_CLIPS_S = (10, 60, 600)  # generated talking-head clips, seconds
BENCH_CLIP_FORMAT = (1280, 720, 30)  # width, height, fps
BENCH_RUNS = {10: 5, 60: 5, 600: 2}  # timed runs per clip (after one warm-up); medians are reported
BENCH_CONCURRENCY = (1, 2, 3, 4)  # perf_analyzer's concurrency levels
BENCH_PERF_REQUESTS = 16  # requests per perf_analyzer measurement window
# Live streams at once: this many clients stream the 60 s clip at its pace (low latency), each starting
# this long after the one before; a stream keeps up when its latency does not grow (slope about 0).
BENCH_CONCURRENT_STREAMS = 8
BENCH_STREAM_STAGGER_S = 1.0
BENCH_KEEPS_UP_SLOPE = 0.02  # s of latency gained per s of media, at most, for every stream
# make bench runs the 60 s clip through this version's server and this earlier one's, in turns
# (benchmarks/earlier.py): a commit and what it was.
BENCH_EARLIER_VERSION = ("bb03bf9", "the code before the streams' workers, the single VAD pass and the memory cuts (issue 26)")
BENCH_EARLIER_ROUNDS = 7  # rounds of one request to each server, after one warm-up each
BENCH_NO_REGRESSION = 1.05  # this code's median / the earlier version's: at most this (noise between rounds)
# The newest tritonclient wheel whose perf_analyzer runs on glibc 2.36 (2.55+ need 2.38); the same
# release as the server binary.
PERF_ANALYZER_PACKAGE = "tritonclient==2.51.0"
