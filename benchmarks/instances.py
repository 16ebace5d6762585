"""Is a second instance worth its memory? The model repository served with `--model` at each of
`--counts` instances, one after the other: idle memory, and videos per second with 1 and with
`--concurrency` clients each sending the 10 s clip (the count with no measured benefit is the one
to ship: config.INSTANCE_COUNTS).

    .venv/bin/python benchmarks/instances.py [--model face_crop] [--counts 1 2] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import run  # noqa: F401 - sets up the benchmark's import paths and clips
from fv2es.tritonserver import EmbeddedServer, limited_repository
from fv2es_client import Fv2esClient
from monitor import process_tree, pss_bytes

MIB = 2**20


def throughput(url: str, video: bytes, clients: int, requests: int) -> float:
    """Videos per second, `clients` sending `requests` videos in all."""
    def send(_):
        with Fv2esClient(url, timeout_s=600) as client:
            client.analyze(video)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(requests)))
    return requests / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="face_crop")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=12, help="videos per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per count (the median is printed)")
    args = parser.parse_args()
    video = run.clip(10)
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            repository = limited_repository(Path(tmp) / f"{args.model}-{count}", instances={args.model: count})
            with EmbeddedServer(repository) as server:
                time.sleep(3)
                idle = pss_bytes(process_tree(server.process.pid)) / MIB
                throughput(server.grpc_url, video, 1, 2)  # warm-up
                rates = {c: statistics.median(throughput(server.grpc_url, video, c, args.requests) for _ in range(args.rounds))
                         for c in (1, args.concurrency)}
            print(f"{args.model} x{count}: idle {idle:.0f} MiB; " +
                  ", ".join(f"{c} client(s) {r:.3f} videos/s" for c, r in rates.items()), flush=True)


if __name__ == "__main__":
    main()
