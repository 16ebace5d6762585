"""`make bench`: the server's speed against the alternatives, in one run, written to BENCHMARKS.md.

    .venv/bin/python benchmarks/run.py [--clips 10 60 600] [--no-perf]
    .venv/bin/python benchmarks/run.py --from-results   # the report again from the last run's numbers

1. Generates (once; cached in benchmarks/out/clips/) 1280x720 30 fps talking-head clips of 10, 60
   and 600 s: the astronaut's face and espeak-ng speech (fv2es_build.synth).
2. Without a server, per clip of 10 and 60 s: the floors (decode alone, ASR alone), (a) the same
   models called one after another in this process, (b) the two-phase files-then-infer pipeline
   (benchmarks/baselines.py says exactly what each does). One warm-up, then the median of the runs.
3. Starts the embedded tritonserver and sends each clip one request at a time: end-to-end time,
   real-time factor, the server's peak memory (PSS of tritonserver and its stubs) and, from Triton's
   statistics, each model's compute time.
4. perf_analyzer against the ensemble at concurrency 1..4, with the 10 s clip and the sample video
   as input data; (a)'s throughput on the same two videos is measured in step 2.
5. The 60 s clip through this version's server and an earlier version's (bench_settings.BENCH_EARLIER_VERSION,
   built from its commit in a git worktree), both served at once, in turns (benchmarks/earlier.py); and
   through the repository with and without the sparse face selection, the same way (benchmarks/sparse.py).
6. Writes BENCHMARKS.md (the numbers and the ratios the targets are stated in) and
   benchmarks/out/results.json.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

import baselines  # noqa: E402
import bench_settings  # noqa: E402
import earlier  # noqa: E402
import perf  # noqa: E402
import sparse  # noqa: E402
import stream  # noqa: E402
from fv2es_build.machine import cpu_name  # noqa: E402
from fv2es import config, pipeline, stages  # noqa: E402
from fv2es.checks import Limits  # noqa: E402
from fv2es_build import synth  # noqa: E402
from fv2es_build.repository import served_models  # noqa: E402
from fv2es.asr import SpeechRecognizer  # noqa: E402
from fv2es.inprocess import InProcessPipeline  # noqa: E402
from fv2es.tritonserver import REPOSITORY, EmbeddedServer  # noqa: E402
from fv2es_client import Fv2esClient  # noqa: E402
from monitor import PeakMemory, process_tree, pss_bytes  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
SAMPLE = ROOT / "samples" / "talking_head.mp4"
REPORT = ROOT / "BENCHMARKS.md"
STAGES = tuple(step.name for step in served_models(pipeline.steps()))  # the ensemble's models, its copy model too
MIB = 1024 * 1024


def machine() -> dict:
    cpu = cpu_name()
    memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")))
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10).stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        gpu = "none"
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory_kb / MIB, 1), "gpu": gpu,
            "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def clip(seconds: int) -> bytes:
    width, height, fps = bench_settings.BENCH_CLIP_FORMAT
    path = OUT / "clips" / f"talking_head_{seconds}s_{width}x{height}_{fps}fps.mp4"
    if not path.exists():
        started = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synth.talking_head_video(seconds, width=width, height=height, fps=fps))
        print(f"generated {path.name} in {time.monotonic() - started:.0f} s", flush=True)
    return path.read_bytes()


def timed(run, runs: int) -> list[float]:
    """Seconds of each of `runs` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


def stage_ns(stats_client) -> dict[str, int]:
    """Cumulative compute nanoseconds of each served model of the pipeline."""
    totals = earlier.compute_ns(stats_client)
    return {stage: totals[stage] for stage in STAGES}


def without_server(videos: dict[int, bytes], throughput_set: list[bytes]) -> dict:
    pipeline = InProcessPipeline(REPOSITORY)
    two_phase = baselines.TwoPhasePipeline(pipeline)
    asr_alone = SpeechRecognizer(cpu_threads=os.cpu_count())
    results = {}
    for seconds, video in videos.items():
        if seconds > 60:
            continue  # the baselines are compared on the 10 and 60 s clips
        runs = bench_settings.BENCH_RUNS[seconds]
        audio = stages.demux(video, limits=Limits())["AUDIO"]
        results[seconds] = {
            "decode_floor": summary(timed(lambda v=video: baselines.decode_floor(v), runs)),
            "asr_floor": summary(timed(lambda a=audio: baselines.asr_floor(asr_alone, a), runs)),
            "in_process": summary(timed(lambda v=video: pipeline.analyze(v), runs)),
            "two_phase": summary(timed(lambda v=video: two_phase.analyze(v), runs)),
            # What live streams cost the whole file: speech recognised stretch by stretch.
            "asr_one_piece": summary(timed(lambda a=audio: baselines.asr_in_one_piece(pipeline.recognizer, a), runs)),
            "asr_by_stretch": summary(timed(lambda a=audio: baselines.asr_by_stretch(pipeline.recognizer, a), runs)),
        }
        print(f"{seconds} s clip without server: " + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in results[seconds].items()), flush=True)
        results[seconds]["whisper_windows"] = baselines.whisper_windows(audio)
    # (a)'s throughput on perf_analyzer's input data: the videos in turn, one at a time.
    rounds = bench_settings.BENCH_RUNS[10]
    total = timed(lambda: [pipeline.analyze(v) for v in throughput_set], rounds)
    results["in_process_throughput"] = len(throughput_set) * rounds / sum(total)
    reference = pipeline.analyze(videos[60]) if 60 in videos else None
    return results, reference


def with_server(videos: dict[int, bytes], throughput_set: list[bytes], use_perf: bool) -> dict:
    results = {"clips": {}}
    with EmbeddedServer(REPOSITORY) as server, Fv2esClient(server.grpc_url, timeout_s=3600) as client:
        stats = grpcclient.InferenceServerClient(server.grpc_url)
        results["triton_version"] = stats.get_server_metadata(as_json=True)["version"]
        results["idle_pss_mib"] = pss_bytes(process_tree(server.process.pid)) / MIB
        for seconds, video in videos.items():
            before = stage_ns(stats)
            times = timed(lambda v=video: client.analyze(v), bench_settings.BENCH_RUNS[seconds])
            after = stage_ns(stats)
            # Memory in a run of its own: reading every process's PSS costs about 60 ms of CPU per
            # sample, which would slow the timed runs on a 2-core machine.
            with PeakMemory(server.process.pid) as memory:
                client.analyze(video)
            calls = bench_settings.BENCH_RUNS[seconds] + 1
            results["clips"][seconds] = {
                **summary(times), "mb": len(video) / 1e6, "peak_pss_mib": memory.peak / MIB,
                "peak_pss_by_model_mib": {k: v / MIB for k, v in sorted(memory.peak_by_label().items())},
                "stage_s": {s: (after[s] - before[s]) / 1e9 / calls for s in STAGES},
            }
            print(f"{seconds} s clip through the server: median {statistics.median(times):.2f} s, "
                  f"peak {memory.peak / MIB:.0f} MiB", flush=True)
        results["scores_60"] = client.infer_raw(videos[60])["VIDEO_SCORES"].tolist() if 60 in videos else None
        if 60 in videos:
            results["stream_60"] = {mode: stream.measure(server.grpc_url, videos[60], mode) for mode in config.STREAM_MODES}
            for mode, r in results["stream_60"].items():
                print(f"live stream of the 60 s clip, {mode}: latency median {r['latency_median_s']:.2f} s, p95 {r['latency_p95_s']:.2f} s, "
                      f"max {r['latency_max_s']:.2f} s; same labels as the whole file {r['same_label_share']:.0%}, "
                      f"WER {r['word_error_rate']:.3f}, same segments and scores: {r['same_as_whole_file']}", flush=True)
            n = bench_settings.BENCH_CONCURRENT_STREAMS
            results["streams_at_once"] = {mode: stream.measure_concurrent(server.grpc_url, videos[60], n, mode,
                                                                          stagger_s=bench_settings.BENCH_STREAM_STAGGER_S)
                                          for mode in config.STREAM_MODES}
            for mode, r in results["streams_at_once"].items():
                print(f"{n} live streams of the 60 s clip at once, {mode}: latency median {r['latency_median_s']:.2f} s, "
                      f"p95 {r['latency_p95_s']:.2f} s, max {r['latency_max_s']:.2f} s; largest lag slope {r['lag_slope_max']:.3f} s/s", flush=True)
        if use_perf:
            data = perf.input_data(throughput_set, OUT / "perf_input.json")
            results["perf"], results["perf_command"] = perf.run(server.grpc_url, data, bench_settings.BENCH_CONCURRENCY, OUT)
            print("perf_analyzer: " + ", ".join(f"c={r['concurrency']} {r['throughput']:.3f}/s" for r in results["perf"]), flush=True)
    return results


def stream_runs(results: dict) -> dict[str, dict]:
    """The live-stream runs of the 60 s clip by mode (a run before the two modes had one, exact)."""
    live = results["server"].get("stream_60") or {}
    return {"exact": live} if "latency_median_s" in live else live


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the issue that this run measures."""
    rows = []
    served = results["server"]["clips"]
    local = results["without_server"]
    if 60 in served:
        rtf = served[60]["median_s"] / 60
        rows.append(("real-time factor, 60 s clip, CPU", f"{rtf:.3f} (target <= 0.15)", rtf <= 0.15))
    if 60 in served and 60 in local:
        floors = local[60]["decode_floor"]["median_s"] + local[60]["asr_floor"]["median_s"]
        ratio = served[60]["median_s"] / floors
        rows.append(("end to end / sum of floors, 60 s clip", f"{ratio:.2f}x (target <= 1.25x)", ratio <= 1.25))
        speedup = local[60]["two_phase"]["median_s"] / served[60]["median_s"]
        rows.append(("two-phase (b) time / server time, 60 s clip", f"{speedup:.2f}x (target >= 2x)", speedup >= 2))
    perf_rows = {r["concurrency"]: r for r in results["server"].get("perf", [])}
    if 4 in perf_rows:
        ratio = perf_rows[4]["throughput"] / local["in_process_throughput"]
        rows.append(("throughput at concurrency 4 / sequential (a)", f"{ratio:.2f}x (target >= 1.3x)", ratio >= 1.3))
    versus = results.get("earlier", {})
    if "ratio_of_medians" in versus:
        ratio = versus["ratio_of_medians"]
        rows.append((f"60 s clip, this code / {versus['ref']} ({versus['description']}), in turns",
                     f"{ratio:.2f}x (target <= {bench_settings.BENCH_NO_REGRESSION:.2f}x)", ratio <= bench_settings.BENCH_NO_REGRESSION))
    low = stream_runs(results).get("low_latency")
    if low:
        rows.append(("live stream, low latency, 60 s clip at its pace: segment end -> answer",
                     f"median {low['latency_median_s']:.2f} s, p95 {low['latency_p95_s']:.2f} s (target <= 3 s, <= 6 s)",
                     low["latency_median_s"] <= 3 and low["latency_p95_s"] <= 6))
        rows.append(("live stream, low latency: segments with the whole file's label", f"{low['same_label_share']:.0%} (target >= 95 %)",
                     low["same_label_share"] >= 0.95))
    for mode, together in results["server"].get("streams_at_once", {}).items():
        keeps_up = together["all_ended"] and together["lag_slope_max"] <= bench_settings.BENCH_KEEPS_UP_SLOPE
        rows.append((f"{together['streams']} live streams at once ({mode}), 60 s clip at its pace: all keep up",
                     f"largest lag slope {together['lag_slope_max']:.3f} s/s (target <= {bench_settings.BENCH_KEEPS_UP_SLOPE}); latency median "
                     f"{together['latency_median_s']:.2f} s, p95 {together['latency_p95_s']:.2f} s, max {together['latency_max_s']:.2f} s",
                     keeps_up))
    gpu = results["machine"]["gpu"]
    rows.append(("real-time factor on a GPU (<= 0.01)", "not measured: no GPU on this machine" if gpu == "none" else "see GPU run", None))
    return rows


def markdown(results: dict) -> str:
    m, served, local = results["machine"], results["server"]["clips"], results["without_server"]
    width, height, fps = bench_settings.BENCH_CLIP_FORMAT
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` (`benchmarks/run.py`) on {results['date']}; every number on this page comes",
        "from that one run. Re-run it to refresh the page; `benchmarks/out/results.json` holds the raw numbers.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gib']} GiB; GPU: {m['gpu']}",
        f"- {m['os']}; Python {m['python']}; torch {m['torch']} ({m['torch_threads']} threads); "
        f"tritonserver {results['server']['triton_version']} (the nvidia-pytriton wheel's binary)",
        f"- clips: generated talking heads, {width}x{height} {fps} fps H.264 + AAC, speech with pauses (fv2es_build.synth)",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for name, value, met in targets(results):
        lines.append(f"| {name} | {value} | {'yes' if met else 'no' if met is not None else 'n/a'} |")
    lines += [
        "",
        "## Whole videos through the server, one request at a time",
        "",
        "Median of the runs after one warm-up. Memory: the server's proportional set size (tritonserver and",
        "every Python-backend stub, shared pages counted once), sampled every 0.2 s during one more request",
        f"(not during the timed ones: the sampling costs CPU); idle after start-up: {results['server']['idle_pss_mib']:.0f} MiB.",
        "",
        "| clip | file MB | runs | median s | min s | max s | real-time factor | s per minute of video | peak memory MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seconds, r in served.items():
        lines.append(f"| {seconds} s | {r['mb']:.1f} | {r['runs']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['max_s']:.2f} | "
                     f"{r['median_s'] / seconds:.3f} | {r['median_s'] / seconds * 60:.2f} | {r['peak_pss_mib']:.0f} |")
    lines += ["", "Where the memory is: each process's own peak during that run (MiB; a model's instances added up).", "",
              "| process | " + " | ".join(f"{s} s" for s in served) + " |", "|---|" + "---|" * len(served)]
    for label in next(iter(served.values()))["peak_pss_by_model_mib"]:
        lines.append(f"| {label} | " + " | ".join(f"{r['peak_pss_by_model_mib'].get(label, 0):.0f}" for r in served.values()) + " |")
    lines += ["", "## The alternatives, same clips, same run", "",
              "(a) the same steps and models called one after another in one process; (b) the paper's two-phase",
              "pipeline, each modality preprocessed to files (WAV, JPEG frames, JSON, .npy) and read back for",
              "inference; (c) the floors: decoding every frame of the file alone, and the ASR model alone on its",
              "audio with every core. `benchmarks/baselines.py` has the exact code. Medians in seconds.", "",
              "| clip | server | (a) in-process | (b) two-phase | (c) decode | (c) ASR | decode + ASR | server / floors | (b) / server | (a) / server |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for seconds in (s for s in served if s in local):
        r, s = local[seconds], served[seconds]["median_s"]
        floors = r["decode_floor"]["median_s"] + r["asr_floor"]["median_s"]
        lines.append(f"| {seconds} s | {s:.2f} | {r['in_process']['median_s']:.2f} | {r['two_phase']['median_s']:.2f} | "
                     f"{r['decode_floor']['median_s']:.2f} | {r['asr_floor']['median_s']:.2f} | {floors:.2f} | {s / floors:.2f}x | "
                     f"{r['two_phase']['median_s'] / s:.2f}x | {r['in_process']['median_s'] / s:.2f}x |")
    if results.get("max_score_difference") is not None:
        lines += ["", f"The server and (a) agree on the 60 s clip: largest difference of the whole-video scores "
                  f"{results['max_score_difference']:.1e}."]
    if results["server"].get("perf"):
        a = local["in_process_throughput"]
        lines += ["", "## perf_analyzer: throughput and latency under concurrency", "",
                  "Input data: the 10 s clip and `samples/talking_head.mp4` (8.5 s, 320x240), alternately. "
                  f"(a) on the same two videos, one after another: {a:.3f} videos/s.", "",
                  "| concurrency | videos/s | vs (a) | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|"]
        for r in results["server"]["perf"]:
            lines.append(f"| {r['concurrency']} | {r['throughput']:.3f} | {r['throughput'] / a:.2f}x | {r['p50_ms']:.0f} | "
                         f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} |")
        lines += ["", "```", results["server"]["perf_command"].replace(str(ROOT) + "/", ""), "```"]
    lines += ["", "## What stretches cost the whole file (speech recognition, in-process)", "",
              "The whole file is transcribed stretch by stretch, as a live stream is (`fv2es.stretches`: a stretch",
              f"holds at most {config.STRETCH_SPEECH_S:g} s of speech, cut in the pause where speech recognition in one "
              f"piece ends a Whisper window; at most {config.STRETCH_MAX_S:.0f} s),",
              "so that both give the same segments and scores. The rule's Silero VAD probabilities of each stretch are the",
              "ones its recognition reads (one pass); the table shows what stretches cost and whether they need more",
              "Whisper windows (30 s encoder passes) than the audio in one piece. Same recognizer, same audio, same run;",
              "medians in seconds.", "",
              "| clip | stretches | windows in one piece | windows by stretch | ASR in one piece | ASR by stretch | by stretch / one piece |",
              "|---|---|---|---|---|---|---|"]
    for seconds in local:
        r = local[seconds]
        if not isinstance(r, dict) or "asr_by_stretch" not in r:
            continue
        w, one, by = r["whisper_windows"], r["asr_one_piece"]["median_s"], r["asr_by_stretch"]["median_s"]
        lines.append(f"| {seconds} s | {w['stretches']} | {w['one_piece']} | {w['by_stretch']} | {one:.2f} | {by:.2f} | {by / one:.2f}x |")
    live = stream_runs(results)
    if live:
        any_run = next(iter(live.values()))
        lines += ["", "## Live stream: latency from a segment's end to its answer (60 s clip)", "",
                  f"The 60 s clip remuxed to MPEG-TS ({any_run['mb']:.1f} MB) and sent to `fv2es_stream` at the pace it plays, "
                  f"{any_run['step_s']} s of media per chunk, once per mode",
                  "(`benchmarks/stream.py`). Latency: from the moment the bytes up to a segment's end were sent to the moment",
                  "that segment's answer arrived. Exact mode answers a segment when its stretch is cut (once the next speech",
                  f"overflows the stretch's {config.STRETCH_SPEECH_S:g} s of speech, at most {config.STRETCH_MAX_S:.0f} s: "
                  "the rule the whole file is cut by), so a stretch's early segments wait for its end. Low-latency mode",
                  f"(the default) cuts at every pause of {config.LOW_LATENCY_SILENCE_MS} ms, at {config.MAX_SEGMENT_S:g} s of speech "
                  f"and after {config.WINDOW_S:g} s without speech, and recognises each stretch's speech alone.",
                  "Against the whole file on the same media: each streamed segment's top label against the whole file's scores",
                  "over the same time (share of segments), the largest score difference there, and the word error rate of",
                  "the stream's transcript against the whole file's.", "",
                  "| mode | segments | median s | p95 s | min s | max s | same label | largest score difference | WER | same segments and scores |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for mode, r in live.items():
            extra = (f"{r['same_label_share']:.0%} | {r['largest_score_difference']:.2f} | {r['word_error_rate']:.3f}"
                     if "same_label_share" in r else "- | - | -")
            p95 = f"{r['latency_p95_s']:.2f}" if "latency_p95_s" in r else "-"
            lines.append(f"| {mode} | {r['segments']} | {r['latency_median_s']:.2f} | {p95} | "
                         f"{r['latency_min_s']:.2f} | {r['latency_max_s']:.2f} | {extra} | {'yes' if r['same_as_whole_file'] else 'no'} |")
        at_once = results["server"].get("streams_at_once", {})
        if at_once:
            n, stagger = next(iter(at_once.values()))["streams"], next(iter(at_once.values()))["stagger_s"]
            lines += ["", f"{n} streams at once: {n} clients each send the same clip at its pace, each starting {stagger:g} s after",
                      "the one before (`measure_concurrent`), once per mode. Each stream has its own worker thread in the one",
                      "`fv2es_stream` model, and their steps share the encoders' dynamic batching. Lag slope: the latency of each",
                      "answer's latest segment fitted against its media time (s gained per s; about 0 when it keeps up), the",
                      "largest of the streams.", "",
                      "| mode | streams | segments | median s | p95 s | min s | max s | largest lag slope s/s | all ended |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for mode, r in at_once.items():
                lines.append(f"| {mode} | {r['streams']} | {r['segments']} | {r['latency_median_s']:.2f} | {r['latency_p95_s']:.2f} | "
                             f"{r['latency_min_s']:.2f} | {r['latency_max_s']:.2f} | {r['lag_slope_max']:.3f} | {'yes' if r['all_ended'] else 'no'} |")
    versus = results.get("earlier", {})
    if versus:
        lines += ["", f"## Against an earlier version: {versus['ref']}, {versus['description']}", ""]
        if "skipped" in versus:
            lines.append(f"Not measured: {versus['skipped']}.")
        else:
            lines += ["Both versions' model repositories served at once by this checkout's tritonserver launcher (the earlier one",
                      "built from its commit in a git worktree: its own code, configs and weights); the 60 s clip sent to one then",
                      f"the other, the order alternating, {versus['rounds']} rounds after one warm-up each (`benchmarks/earlier.py`).",
                      "Seconds per request.", "",
                      "| version | median s | min s | max s |", "|---|---|---|---|"]
            for name, label in (("earlier", versus["ref"]), ("current", "this code")):
                t = versus["times"][name]
                lines.append(f"| {label} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |")
            lines += ["", f"This code / {versus['ref']}: {versus['ratio_of_medians']:.2f}x (ratio of the medians), "
                      f"{versus['median_round_ratio']:.2f}x (median of each round's ratio). Each model's compute time per",
                      "request in these rounds (Triton's statistics; `-`: not in that version; the ensemble's own line is",
                      "the sum of its steps' times as Triton counts them, not the request's wall time: steps run in parallel):", "", f"| model | {versus['ref']} s | this code s |", "|---|---|---|"]
            models = versus.get("model_s", {})
            for model in sorted(set(models.get("earlier", {})) | set(models.get("current", {}))):
                e, c = models["earlier"].get(model), models["current"].get(model)
                lines.append(f"| {model} | {'-' if e is None else f'{e:.3f}'} | {'-' if c is None else f'{c:.3f}'} |")
    if results.get("sparse"):
        lines += sparse.markdown(results["sparse"])
    if 60 in served:
        total = served[60]["median_s"]
        lines += ["", "## Where the time goes (60 s clip)", "",
                  "Compute time of each model per video (Triton's statistics, mean over the runs). Models run in",
                  "parallel where the ensemble allows it (face_crop beside asr and the encoders after it), so the shares add up",
                  "to more than 100 %.", "", "| model | s per video | share of end to end |", "|---|---|---|"]
        for stage, seconds in served[60]["stage_s"].items():
            lines.append(f"| {stage} | {seconds:.3f} | {seconds / total:.0%} |")
    return "\n".join(lines) + "\n"


def int_keys(d: dict) -> dict:
    """JSON's string keys of the per-clip results back to the clips' seconds."""
    return {int(k) if k.isdigit() else k: v for k, v in d.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, nargs="+", default=list(bench_settings.BENCH_CLIPS_S), help="clip lengths, seconds")
    parser.add_argument("--no-perf", action="store_true", help="skip perf_analyzer")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--from-results", action="store_true",
                        help=f"measure nothing: write the report again from {(OUT / 'results.json').relative_to(ROOT)}")
    args = parser.parse_args()
    if args.from_results:
        results = json.loads((OUT / "results.json").read_text(), object_hook=int_keys)
        args.report.write_text(markdown(results))
        print(f"wrote {args.report} from the run of {results['date']}")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    perf.install() if not args.no_perf else None
    videos = {seconds: clip(seconds) for seconds in sorted(args.clips)}
    throughput_set = [clip(10), SAMPLE.read_bytes()]
    results = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    results["without_server"], reference = without_server(videos, throughput_set)
    gc.collect()  # the in-process models are not needed any more
    results["server"] = with_server(videos, throughput_set, not args.no_perf)
    if 60 in videos:
        results["earlier"] = earlier.measure(*bench_settings.BENCH_EARLIER_VERSION, REPOSITORY, videos[60], bench_settings.BENCH_EARLIER_ROUNDS, OUT)
        print(f"against {bench_settings.BENCH_EARLIER_VERSION[0]}: " + (results["earlier"].get("skipped") or
              f"{results['earlier']['ratio_of_medians']:.2f}x its median on the 60 s clip"), flush=True)
        results["sparse"] = sparse.measure(REPOSITORY, videos[60], bench_settings.BENCH_EARLIER_ROUNDS, OUT)
        r = results["sparse"]
        print(f"sparse face selection: {r['faces_kept']} of {r['faces']} faces encoded, "
              f"{r['medians_s']['sparse'] / r['medians_s']['every face']:.2f}x the median on the 60 s clip", flush=True)
    if reference is not None and results["server"]["scores_60"] is not None:
        results["max_score_difference"] = float(np.abs(reference["VIDEO_SCORES"] - results["server"]["scores_60"]).max())
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=str))
    args.report.write_text(markdown(results))
    for name, value, met in targets(results):
        print(f"{name}: {value}" + ("" if met is None else " met" if met else " MISSED"))
    print(f"wrote {args.report.relative_to(ROOT) if args.report.is_relative_to(ROOT) else args.report}")


if __name__ == "__main__":
    main()
