"""fv2es-client VIDEO [VIDEO ...]: classify videos with a running FV2ES server and print the result.
fv2es-client --stream SOURCE: send a live source to the server's stream model and print each
segment as it arrives, then the summary. SOURCE: a file being written (--follow), a finished file,
an RTSP/HTTP URL or a capture device such as /dev/video0 (read here; the server gets only bytes).
fv2es-client --evaluate LABELS.csv: send the labelled videos of LABELS.csv and print accuracy, macro
F1, per-class F1, the confusion matrix and the most predicted emotion's share, per video and per
labelled span (the labels file's format is below).

Exit status: 0 when every video (the stream) was analysed, 1 when any failed (each failure is
reported with its file), 2 for a usage error or when no server / no ready model answers.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from .client import (
    DEFAULT_MAX_INPUT_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, DEFAULT_URL, MODEL_NAME, STREAM_MODEL_NAME,
    Fv2esClient, Fv2esError, MiB, Segment, VideoResult, status_name,
)
from .output import (
    TABLE_HEADER, CsvWriter, Outcome, format_outcome, format_result, format_row, format_summary, json_document,
    plot_timelines, rounded, write_csv,
)
from .sources import DEFAULT_CHUNK_BYTES, DEFAULT_IDLE_TIMEOUT_S, source_chunks
from . import evaluate as evaluation

__all__ = ["main", "format_result"]  # format_result: used by fv2es.demo

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fv2es-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--evaluate LABELS.csv:\n\n" + evaluation.__doc__.split("\n\n", 1)[1])
    parser.add_argument("videos", nargs="*", metavar="VIDEO", help="video files (any format FFmpeg reads)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help="print one JSON document for the run instead of tables (--stream: one JSON line per segment, then the result)")
    out.add_argument("--csv", action="store_true",
                     help="print CSV, one row per segment, instead of tables (--stream: the summary goes to stderr)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw the emotion timelines (one panel per video) to a PNG; with --evaluate, the confusion matrices")
    parser.add_argument("--evaluate", metavar="LABELS.csv",
                        help="measure the server on the labelled videos of LABELS.csv (instead of VIDEO files): "
                             "accuracy, F1, confusion matrix; the format is below")
    server = parser.add_argument_group("server")
    server.add_argument("--url", default=DEFAULT_URL, help=f"gRPC address of the server (default {DEFAULT_URL})")
    server.add_argument("--model", default=MODEL_NAME, help=f"model name (default {MODEL_NAME})")
    server.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    server.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"time limit per video; with --stream, the longest wait on the server's answers "
                             f"(default {DEFAULT_TIMEOUT_S:.0f})")
    server.add_argument("--stream-model", default=STREAM_MODEL_NAME,
                        help=f"model name for --stream (default {STREAM_MODEL_NAME})")
    server.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                        help=f"retries after UNAVAILABLE, with exponential backoff (default {DEFAULT_RETRIES})")
    server.add_argument("--default-max-input-mib", type=float, default=DEFAULT_MAX_INPUT_BYTES / MiB, metavar="MIB",
                        help="size limit when the model config has no max_input_bytes parameter "
                             f"(default {DEFAULT_MAX_INPUT_BYTES / MiB:.0f})")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--ssl", action="store_true", help="use TLS for gRPC (implied by the certificate options)")
    tls.add_argument("--root-certs", metavar="PEM", help="root certificates to verify the server with")
    tls.add_argument("--private-key", metavar="PEM", help="client private key (mutual TLS)")
    tls.add_argument("--certificate-chain", metavar="PEM", help="client certificate chain (mutual TLS)")
    run = parser.add_argument_group("run")
    run.add_argument("--concurrency", type=int, default=1, metavar="N", help="videos in flight at once (default 1)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when stderr is no terminal)")
    live = parser.add_argument_group("live stream (Ctrl-C ends the stream and still prints the summary; twice aborts)")
    live.add_argument("--stream", metavar="SOURCE",
                      help="analyse SOURCE as a live stream instead of VIDEO files: a growing file (--follow), a finished "
                           "file, an RTSP/HTTP URL or a capture device (/dev/video0); segments are printed as they arrive")
    live.add_argument("--follow", action="store_true",
                      help="SOURCE is a file still being written: tail it until SOURCE.done exists or it stops growing")
    live.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S, metavar="SECONDS",
                      help=f"--follow: end when the file has not grown for this long, 0: only SOURCE.done ends it "
                           f"(default {DEFAULT_IDLE_TIMEOUT_S:.0f})")
    live.add_argument("--seconds", type=float, metavar="SECONDS", help="capture at most this much of SOURCE (media time)")
    live.add_argument("--input-format", metavar="FMT", help="FFmpeg input format of SOURCE (default: v4l2 for /dev/video*, else probed)")
    live.add_argument("--input-option", action="append", default=[], metavar="KEY=VALUE",
                      help="FFmpeg input option, e.g. rtsp_transport=tcp or video_size=640x480 (repeatable)")
    live.add_argument("--transcode", action="store_true",
                      help="re-encode to H.264/AAC even when the codecs could be copied into MPEG-TS as they are")
    live.add_argument("--realtime", action="store_true", help="send a finished file at the speed it plays")
    live.add_argument("--stream-mode", choices=("low_latency", "exact"),
                      help="low_latency: each segment within seconds of its end (the server's default); exact: the "
                           "whole file's segments and scores, each up to a stretch (~30 s of speech) late")
    live.add_argument("--chunk-kib", type=int, default=DEFAULT_CHUNK_BYTES // 1024, metavar="KIB",
                      help=f"most bytes per request, in KiB (default {DEFAULT_CHUNK_BYTES // 1024})")
    return parser


STREAM_ONLY = ("follow", "seconds", "input_format", "input_option", "transcode", "realtime", "stream_mode")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if sum(map(bool, (args.videos, args.stream is not None, args.evaluate is not None))) > 1:
        parser.error("give VIDEO files, --stream SOURCE or --evaluate LABELS.csv, only one of them")
    if args.evaluate is not None:
        if args.csv:
            parser.error("--evaluate prints tables or --json, not --csv")
        try:
            args.labelled = evaluation.read_labels(args.evaluate)
        except evaluation.LabelsError as exc:
            parser.error(f"--evaluate: {exc}")
        args.videos = [video.path for video in args.labelled]
    if args.stream is None and not args.videos:
        parser.error("give at least one VIDEO (or --stream SOURCE, or --evaluate LABELS.csv)")
    if args.stream is None:
        used = [f"--{name.replace('_', '-')}" for name in STREAM_ONLY if getattr(args, name)]
        if used:
            parser.error(f"{', '.join(used)}: only with --stream")
    if args.seconds is not None and args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.chunk_kib < 1:
        parser.error("--chunk-kib must be at least 1")
    if args.idle_timeout < 0:
        parser.error("--idle-timeout must be 0 or more")
    if args.follow and (args.seconds or args.input_format or args.input_option or args.transcode or args.realtime):
        parser.error("--follow sends the file's bytes as they are: no capture options")
    if any("=" not in option for option in args.input_option):
        parser.error("--input-option takes KEY=VALUE")
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.retries < 0:
        parser.error("--retries must be 0 or more")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    for option in ("root_certs", "private_key", "certificate_chain"):
        value = getattr(args, option)
        if value is not None and not Path(value).is_file():
            parser.error(f"--{option.replace('_', '-')}: no such file: {value}")
    return args


def client_options(args: argparse.Namespace) -> dict:
    return {
        "model": args.model, "model_version": args.model_version, "timeout_s": args.timeout, "retries": args.retries,
        "ssl": args.ssl, "root_certificates": args.root_certs, "private_key": args.private_key,
        "certificate_chain": args.certificate_chain,
        "default_max_input_bytes": int(args.default_max_input_mib * MiB),
    }


def describe_error(exc: BaseException, video: str) -> tuple[str, str]:
    """(code, message) for a failed video."""
    if isinstance(exc, Fv2esError):
        return exc.code, exc.message()
    if isinstance(exc, InferenceServerException):
        return status_name(exc), exc.message()
    if isinstance(exc, FileNotFoundError):
        return "FILE_NOT_FOUND", f"no such file: {video}"
    if isinstance(exc, OSError):
        return "READ_ERROR", f"cannot read {video}: {exc.strerror or exc}"
    return "CLIENT_ERROR", f"{type(exc).__name__}: {exc}"


class Analyzer:
    """Analyses videos from worker threads, each thread with its own Fv2esClient."""

    def __init__(self, url: str, options: dict):
        self.url, self.options = url, options
        self.local = threading.local()
        self.clients: list[Fv2esClient] = []
        self.lock = threading.Lock()

    def client(self) -> Fv2esClient:
        if not hasattr(self.local, "client"):
            self.local.client = Fv2esClient(self.url, **self.options)
            with self.lock:
                self.clients.append(self.local.client)
        return self.local.client

    def __call__(self, video: str) -> Outcome:
        started = time.monotonic()
        try:
            result = self.client().analyze(video)
        except Exception as exc:  # the video's own failure: reported with it, the others carry on
            code, message = describe_error(exc, video)
            return Outcome(video, time.monotonic() - started, error_code=code, error_message=message)
        return Outcome(video, time.monotonic() - started, result=result)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def analyze_all(args: argparse.Namespace, analyzer: Analyzer) -> list[Outcome]:
    """Runs every video; in table mode prints each result (stdout) or error (stderr) in the order given."""
    videos = args.videos
    outcomes: list[Outcome | None] = [None] * len(videos)
    printed = 0
    table = not (args.json or args.csv or args.evaluate)
    show_bar = not args.no_progress and sys.stderr.isatty()
    with ThreadPoolExecutor(args.concurrency) as pool, \
            tqdm(total=len(videos), unit="video", file=sys.stderr, disable=not show_bar) as bar:
        futures = {pool.submit(analyzer, video): i for i, video in enumerate(videos)}
        for future in as_completed(futures):
            outcomes[futures[future]] = outcome = future.result()
            bar.update(1)
            if not outcome.ok:
                bar.set_postfix(failed=sum(o is not None and not o.ok for o in outcomes))
            while table and printed < len(videos) and outcomes[printed] is not None:
                done = outcomes[printed]
                tqdm.write(format_outcome(done), file=sys.stdout if done.ok else sys.stderr)
                printed += 1
    return outcomes


class StreamPrinter:
    """What --stream prints: each segment as it arrives (table row, JSON line or CSV row), then the
    summary, or the error."""

    def __init__(self, args: argparse.Namespace):
        self.source, self.json, self.csv = args.stream, args.json, args.csv
        self.writer = CsvWriter(sys.stdout) if self.csv else None
        if not (self.json or self.csv):
            print(f"{self.source} (live: each segment as it is final)", TABLE_HEADER, sep="\n", flush=True)

    def segment(self, segment: Segment) -> None:
        if self.json:
            print(json.dumps({"event": "segment", "source": self.source, **rounded(segment.to_dict())}, ensure_ascii=False))
        elif self.csv:
            self.writer.segment(self.source, segment)
        else:
            print(format_row(segment))
        sys.stdout.flush()

    def end(self, result: VideoResult, seconds: float) -> None:
        media = result.duration if result.duration is not None else (result.segments[-1].end if result.segments else 0.0)
        if self.json:
            print(json.dumps({"event": "end", "source": self.source, "seconds": round(seconds, 3), "duration": rounded(media),
                              **rounded(result.to_dict())}, ensure_ascii=False), flush=True)
            return
        n = len(result.segments)
        summary = (f"{format_summary(result)}\n  ({n} segment{'s' if n != 1 else ''}, {media:.2f} s of media, "
                   f"{seconds:.2f} s end to end)")
        if self.csv:  # stdout stays CSV
            self.writer.header(result.labels)
            sys.stdout.flush()
            print(f"{self.source}\n{summary}", file=sys.stderr, flush=True)
        else:
            print(summary, flush=True)

    def error(self, code: str, message: str) -> None:
        if self.json:
            print(json.dumps({"event": "error", "source": self.source, "error": {"code": code, "message": message}},
                             ensure_ascii=False), flush=True)
        elif self.csv:
            self.writer.error(self.source, code, message)
            sys.stdout.flush()
        print(f"{self.source}: error [{code}]: {message}", file=sys.stderr, flush=True)


def stop_on_interrupt(stop: threading.Event):
    """First Ctrl-C: set `stop` (the stream ends normally, with its summary); the second aborts.
    Returns the handler it replaced (None where signals cannot be set: not the main thread)."""

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("fv2es-client: stopping: the stream ends after what was sent (Ctrl-C again aborts)", file=sys.stderr, flush=True)

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None


def stream_main(args: argparse.Namespace, options: dict) -> int:
    """fv2es-client --stream SOURCE."""
    with Fv2esClient(args.url, stream_model=args.stream_model, **options) as client:
        try:
            client.connect_stream()
        except Fv2esError as exc:  # no server, stream model not served or not ready
            print(f"fv2es-client: {exc.message()}", file=sys.stderr)
            return EXIT_USAGE
        stop = threading.Event()
        printer = StreamPrinter(args)
        previous = stop_on_interrupt(stop)
        started = time.monotonic()
        result = None
        try:
            chunks = source_chunks(
                args.stream, follow=args.follow, seconds=args.seconds, realtime=args.realtime, transcode=args.transcode or None,
                input_format=args.input_format, options=dict(o.split("=", 1) for o in args.input_option),
                chunk_bytes=args.chunk_kib * 1024, idle_timeout_s=args.idle_timeout or None, stop=stop)
            for event in client.stream(chunks, timeout_s=args.timeout, stop=stop, mode=args.stream_mode):
                if isinstance(event, VideoResult):
                    result = event
                else:
                    printer.segment(event)
        except KeyboardInterrupt:
            print("fv2es-client: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # the stream's failure: the server's error, the source's, a timeout
            printer.error(*describe_error(exc, args.stream))
            return EXIT_FAILED
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if result is None:
            printer.error("STREAM_FAILED", "the stream ended without the server's result")
            return EXIT_FAILED
        printer.end(result, time.monotonic() - started)
    if args.plot:
        try:
            plot_timelines([Outcome(args.stream, 0.0, result=result)], args.plot)
        except (OSError, ValueError) as exc:
            print(f"fv2es-client: cannot write the plot {args.plot}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"fv2es-client: timeline written to {args.plot}", file=sys.stderr)
    return EXIT_OK


def evaluate_main(args: argparse.Namespace, outcomes: list[Outcome]) -> int:
    """fv2es-client --evaluate LABELS.csv, once every video was analysed (or failed)."""
    try:
        report = evaluation.evaluate(args.labelled, outcomes, args.evaluate)
    except evaluation.LabelsError as exc:  # a label this server does not have
        print(f"fv2es-client: --evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else evaluation.format_report(report))
    if args.plot:
        try:
            panels = evaluation.plot_report(report, args.plot)
        except (OSError, ValueError) as exc:
            print(f"fv2es-client: cannot write the plot {args.plot}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"fv2es-client: {panels} confusion matri{'ces' if panels != 1 else 'x'} written to {args.plot}"
              if panels else "fv2es-client: nothing was compared: no plot written", file=sys.stderr)
    failed = report["videos"]["failed"]
    if failed:
        print(f"fv2es-client: {failed} of {len(outcomes)} videos failed (listed above), left out of the numbers",
              file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = client_options(args)
    if args.stream is not None:
        return stream_main(args, options)
    with Fv2esClient(args.url, **options) as probe:
        try:
            limits = probe.connect()
        except Fv2esError as exc:  # no server, model not served or not ready: nothing can be analysed
            print(f"fv2es-client: {exc.message()}", file=sys.stderr)
            return EXIT_USAGE
    analyzer = Analyzer(args.url, options)
    try:
        outcomes = analyze_all(args, analyzer)
    except KeyboardInterrupt:
        print("fv2es-client: interrupted", file=sys.stderr)
        return 130
    finally:
        analyzer.close()

    if args.evaluate is not None:
        return evaluate_main(args, outcomes)
    failed = sum(not o.ok for o in outcomes)
    if args.json:
        server = {
            "url": args.url, "model": args.model, "model_version": args.model_version,
            "max_input_bytes": limits.max_input_bytes, "max_input_bytes_from_server": limits.from_server,
            "max_duration_s": limits.max_duration_s,
        }
        print(json.dumps(json_document(outcomes, server), indent=2, ensure_ascii=False))
    elif args.csv:
        write_csv(outcomes, sys.stdout)
    if args.plot:
        try:
            panels = plot_timelines(outcomes, args.plot)
        except (OSError, ValueError) as exc:
            print(f"fv2es-client: cannot write the plot {args.plot}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if panels:
            print(f"fv2es-client: timeline of {panels} video(s) written to {args.plot}", file=sys.stderr)
        else:
            print("fv2es-client: no video was analysed: no plot written", file=sys.stderr)
    if failed or len(outcomes) > 1:
        print(f"fv2es-client: {len(outcomes) - failed} of {len(outcomes)} videos analysed, {failed} failed",
              file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
