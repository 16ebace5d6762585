"""fv2es-client VIDEO [VIDEO ...]: classify videos with a running FV2ES server and print the result.

Exit status: 0 when every video was analysed, 1 when any failed (each failure is reported with its
file), 2 for a usage error or when no server / no ready model answers.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from .client import (
    DEFAULT_MAX_INPUT_BYTES, DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, DEFAULT_URL, MODEL_NAME, Fv2esClient, Fv2esError,
    MiB, status_name,
)
from .output import Outcome, format_outcome, format_result, json_document, plot_timelines, write_csv

__all__ = ["main", "format_result"]  # format_result: used by fv2es.demo

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fv2es-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (any format FFmpeg reads)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON document for the run instead of tables")
    out.add_argument("--csv", action="store_true", help="print CSV, one row per segment, instead of tables")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the emotion timelines (one panel per video) to a PNG")
    server = parser.add_argument_group("server")
    server.add_argument("--url", default=DEFAULT_URL, help=f"gRPC address of the server (default {DEFAULT_URL})")
    server.add_argument("--model", default=MODEL_NAME, help=f"model name (default {MODEL_NAME})")
    server.add_argument("--model-version", default="", help="model version (default: the server's choice)")
    server.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help=f"time limit per video (default {DEFAULT_TIMEOUT_S:.0f})")
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
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    table = not (args.json or args.csv)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = client_options(args)
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
