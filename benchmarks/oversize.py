"""What an oversize request costs the server, and what it keeps afterwards.

    .venv/bin/python benchmarks/oversize.py [--oversize-mb 600] [--limit-bytes N] [--env K=V ...]
        [--baseline] [--arg=--backend-config=python,...] [--protocol grpc|http] [--repeat N]
        [--reload load|load-config|unload-load] [--timing-clip-s 60] [--maps] [--settle-s 5] [--json FILE]

Starts the embedded tritonserver (with the given environment and extra arguments), then measures
its memory idle, after one normal request (samples/talking_head.mp4), at the peak of and after one
oversize request sent raw with tritonclient (the FV2ES client would refuse to send it), a while
later, after another normal request, and (--reload) after reloading demux through the model-repository API.

Memory of each process of the server (tritonserver and each Python-backend stub, found with psutil)
is read from /proc/<pid>/smaps_rollup: `anon` = its anonymous resident pages (heap, malloc arenas,
stacks; not the libraries, whose PSS moves whenever another process of the machine maps the same
files), and the Python backend's shared-memory regions (/dev/shm files named on the stubs' command
lines) are counted once each, by the pages they hold (st_blocks), whoever maps them. The total is the
sum of both: what a request can make the server take from the machine and keep.

--limit-bytes runs on a copy of the model repository whose demux/face_crop/fv2es `max_input_bytes`
is that size (the oversize request, and the time it takes, can then be small). --env overlays the
server's environment (fv2es.config.SERVER_ENV, then this process's environment, then these);
config.SERVER_ARGS are passed to tritonserver; --baseline measures without either.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import bench_settings  # noqa: E402 - benchmarks/, beside this script
from monitor import process_tree  # noqa: E402 - benchmarks/monitor.py, beside this script

from fv2es import config  # noqa: E402
from fv2es.tritonserver import REPOSITORY, EmbeddedServer, limited_repository  # noqa: E402
from fv2es_build import synth  # noqa: E402

SAMPLE = ROOT / "samples" / "talking_head.mp4"
MB = 1e6


# -- measuring ------------------------------------------------------------------------------------


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup of one process, in bytes ({} when it has ended). Read here, not with psutil: its
    memory_full_info has no anonymous total, and memory_maps() would parse all of smaps at each sample."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return values


def cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def label(pid: int, args: list[str]) -> str:
    """A stub's model instance name (e.g. face_crop_0_1), else the program's name."""
    for arg in args[1:]:
        if re.fullmatch(r"\w+_\d+_\d+", arg) and not arg.startswith("triton_python_backend_shm_region"):
            return arg
    return Path(args[0]).name if args else f"pid {pid}"


def shm_regions(pids: list[int]) -> list[Path]:
    """The /dev/shm files of the server: the stubs' regions (named on their command line) and any
    other /dev/shm file tritonserver maps."""
    names = set()
    for pid in pids:
        names.update(a for a in cmdline(pid) if a.startswith("triton_python_backend_shm_region"))
    try:
        maps = psutil.Process(pids[0]).memory_maps()
    except psutil.Error:
        maps = []
    names.update(m.path.removeprefix("/dev/shm/") for m in maps if m.path.startswith("/dev/shm/"))
    return [Path("/dev/shm") / n for n in sorted(names)]


def snapshot(root: int) -> dict:
    """{"processes": {label: {anon, pss, rss}}, "shm": {file: {size, held}}, totals} in bytes."""
    pids = process_tree(root)
    processes = {}
    for pid in pids:
        r = rollup(pid)
        if not r:
            continue
        name = label(pid, cmdline(pid))
        processes[name] = {
            "anon": r.get("Anonymous", 0),
            "pss": r.get("Pss", 0),
            "rss": r.get("Rss", 0),
            "pid": pid,
        }
    shm = {}
    for path in shm_regions(pids):
        try:
            st = path.stat()
        except OSError:
            continue
        shm[path.name] = {"size": st.st_size, "held": st.st_blocks * 512}
    anon = sum(p["anon"] for p in processes.values())
    held = sum(s["held"] for s in shm.values())
    return {
        "processes": processes,
        "shm": shm,
        "anon": anon,
        "shm_held": held,
        "shm_size": sum(s["size"] for s in shm.values()),
        "total": anon + held,
    }


def cpu_seconds(root: int) -> float:
    """User + system CPU time of the process tree so far (its live processes)."""
    total = 0.0
    for pid in process_tree(root):
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def anon_mappings(pid: int, top: int = 8) -> list[str]:
    """The largest resident anonymous mappings of a process: where its heap memory sits."""
    try:
        maps = psutil.Process(pid).memory_maps(grouped=False)
    except psutil.Error:
        return []
    maps.sort(key=lambda m: -m.anonymous)
    return [f"{m.path:<10} mapping {m.size / MB:7.1f} MB, anon resident {m.anonymous / MB:7.1f} MB" for m in maps[:top]]


class Peak:
    """`with Peak(root) as p:` samples snapshot totals every interval; p.peak: the largest total seen."""

    def __init__(self, root: int, interval_s: float = 0.25):
        self.root, self.interval_s = root, interval_s
        self.peak, self.peak_snapshot = 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            s = snapshot(self.root)
            if s["total"] > self.peak:
                self.peak, self.peak_snapshot = s["total"], s
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- the server -----------------------------------------------------------------------------------


def infer_grpc(url: str, payload: bytes, timeout_s: float = 600):
    """One raw request to the ensemble over gRPC: (seconds, None or (status, message))."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    video = grpcclient.InferInput("VIDEO", [1], "BYTES")
    video.set_data_from_numpy(np.array([payload], dtype=np.object_))
    start = time.perf_counter()
    try:
        with grpcclient.InferenceServerClient(url) as c:
            c.infer(config.ENSEMBLE_NAME, [video], client_timeout=timeout_s)
        error = None
    except InferenceServerException as exc:
        error = (exc.status(), exc.message())
    return time.perf_counter() - start, error


def infer_http(url: str, payload: bytes, timeout_s: float = 600):
    """The same over HTTP, the input as binary data (Triton's binary tensor extension)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    video = httpclient.InferInput("VIDEO", [1], "BYTES")
    video.set_data_from_numpy(np.array([payload], dtype=np.object_), binary_data=True)
    start = time.perf_counter()
    try:
        with httpclient.InferenceServerClient(url, network_timeout=timeout_s, connection_timeout=timeout_s) as c:
            c.infer(config.ENSEMBLE_NAME, [video])
        error = None
    except InferenceServerException as exc:
        error = (exc.status(), exc.message())
    return time.perf_counter() - start, error


def clip(seconds: int) -> bytes:
    """The talking-head clip `make bench` uses (cached in benchmarks/out/clips/, as benchmarks/run.py does)."""
    width, height, fps = bench_settings.BENCH_CLIP_FORMAT
    path = ROOT / "benchmarks" / "out" / "clips" / f"talking_head_{seconds}s_{width}x{height}_{fps}fps.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synth.talking_head_video(seconds, width=width, height=height, fps=fps))
    return path.read_bytes()


def repository_call(server: EmbeddedServer, path: str, body: dict | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(f"http://{server.http_url}/v2/repository/{path}", data=data, method="POST",
                                     headers={config.ADMIN_KEY_HEADER: server.admin_key})
    with urllib.request.urlopen(request, timeout=600) as reply:
        assert reply.status == 200, reply.status


def reload_model(server: EmbeddedServer, model: str, how: str) -> float:
    """`load`: POST load on the loaded model, nothing changed; `load-config`: POST load with the
    model's own config plus a parameter no model reads, as an override (a changed config: Triton
    loads a new copy of the model, swaps it in and unloads the old one);
    `unload-load`: unload, then load (the ensemble is not ready in between)."""
    start = time.perf_counter()
    if how == "unload-load":
        repository_call(server, f"models/{model}/unload")
    if how == "load-config":
        server.watchdog.reload_in_place(model)
        return time.perf_counter() - start
    repository_call(server, f"models/{model}/load")
    return time.perf_counter() - start


# -- report ---------------------------------------------------------------------------------------


def table(stages: list[tuple[str, dict]]) -> str:
    names = sorted({n for _, s in stages for n in s["processes"]}, key=lambda n: (n != "tritonserver", n))
    head = f"{'MB':<22}" + "".join(f"{stage[:14]:>15}" for stage, _ in stages)
    rows = [head]
    for name in names:
        rows.append(f"{name + ' anon':<22}" + "".join(
            f"{s['processes'].get(name, {}).get('anon', 0) / MB:>15.0f}" for _, s in stages))
    rows.append(f"{'/dev/shm held':<22}" + "".join(f"{s['shm_held'] / MB:>15.0f}" for _, s in stages))
    rows.append(f"{'/dev/shm size':<22}" + "".join(f"{s['shm_size'] / MB:>15.0f}" for _, s in stages))
    rows.append(f"{'TOTAL':<22}" + "".join(f"{s['total'] / MB:>15.0f}" for _, s in stages))
    return "\n".join(rows)


def largest_shm(s: dict) -> str:
    if not s["shm"]:
        return "none"
    name, info = max(s["shm"].items(), key=lambda kv: kv[1]["held"])
    return f"{name}: size {info['size'] / MB:.0f} MB, held {info['held'] / MB:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oversize-mb", type=float, default=600.0, help="size of the oversize request (MB, 1e6 bytes)")
    parser.add_argument("--limit-bytes", type=int, default=None, help="max_input_bytes of a copied repository")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server's environment")
    parser.add_argument("--baseline", action="store_true",
                        help="without the memory settings: no LD_PRELOAD/MALLOC_CONF from config.SERVER_ENV, "
                             "Triton's default --grpc-infer-allocation-pool-size=8 instead of config.SERVER_ARGS")
    parser.add_argument("--arg", action="append", default=[], help="extra tritonserver argument (use --arg=--x=y)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--reload", choices=("load", "load-config", "unload-load"), default=None,
                        help="at the end, reload demux this way (the server runs in explicit model-control mode)")
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait before the 'later' measurement")
    parser.add_argument("--repeat", type=int, default=1, help="oversize requests sent (one after another)")
    parser.add_argument("--timing-clip-s", type=int, default=0,
                        help="also time normal requests of this benchmark clip (s), before the oversize one")
    parser.add_argument("--timing-runs", type=int, default=3)
    parser.add_argument("--maps", action="store_true", help="print tritonserver's largest anonymous mappings")
    parser.add_argument("--json", type=Path, default=None, help="write all snapshots here")
    args = parser.parse_args()

    limit = args.limit_bytes or config.MAX_INPUT_BYTES
    oversize = int(args.oversize_mb * MB)
    if oversize <= limit:
        parser.error(f"--oversize-mb {args.oversize_mb} is not over the limit of {limit} bytes")
    for item in args.env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    if args.baseline:
        for key in ("LD_PRELOAD", "MALLOC_CONF"):
            config.SERVER_ENV.pop(key, None)

    work = Path(tempfile.mkdtemp(prefix="fv2es-oversize-"))
    repository = limited_repository(work / "models", limit) if args.limit_bytes else REPOSITORY
    sample = SAMPLE.read_bytes()
    payload = synth.noise_bytes(oversize)
    infer = infer_grpc if args.protocol == "grpc" else infer_http

    server = EmbeddedServer(repository)
    if args.baseline:
        extra = ["--grpc-infer-allocation-pool-size=8", *args.arg]  # Triton's default; the last one given wins
    else:  # config.SERVER_ARGS, where EmbeddedServer does not pass them itself
        extra = [a for a in getattr(config, "SERVER_ARGS", ()) if a not in server.command()] + args.arg
    server.extra_args = extra
    env_shown = {k: v for k, v in {**config.SERVER_ENV, **os.environ}.items()
                 if k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "OMP_", "KMP_"))}
    print(f"server environment (memory-related): {env_shown}")
    print(f"extra arguments: {extra}")
    print(f"limit {limit} bytes, oversize request {oversize} bytes over {args.protocol}")
    stages: list[tuple[str, dict]] = []
    with server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
        root = server.process.pid
        time.sleep(2)
        stages.append(("idle", snapshot(root)))
        seconds, error = infer(url, sample)
        assert error is None, error
        print(f"sample request: {seconds:.2f} s")
        if args.timing_clip_s:
            video = clip(args.timing_clip_s)
            infer(url, video)  # warm-up
            cpu = cpu_seconds(root)
            times = [infer(url, video)[0] for _ in range(args.timing_runs)]
            cpu = (cpu_seconds(root) - cpu) / args.timing_runs
            print(f"{args.timing_clip_s} s clip: " + ", ".join(f"{t:.2f}" for t in times)
                  + f" s (median {sorted(times)[len(times) // 2]:.2f} s); server CPU {cpu:.2f} s per request")
        time.sleep(1)
        stages.append(("after sample", snapshot(root)))
        for i in range(args.repeat):
            with Peak(root) as peak:
                seconds, error = infer(url, payload)
            print(f"oversize request {i + 1}: {seconds:.2f} s, answer {error}")
            stages.append((f"oversize peak {i + 1}" if args.repeat > 1 else "oversize peak", peak.peak_snapshot))
            stages.append((f"after oversize {i + 1}" if args.repeat > 1 else "after oversize", snapshot(root)))
        del payload
        time.sleep(args.settle_s)
        stages.append((f"{args.settle_s:.0f} s later", snapshot(root)))
        if args.maps:
            print("tritonserver's largest anonymous mappings after the oversize request:")
            print("\n".join("  " + row for row in anon_mappings(root)))
        seconds, error = infer(url, sample)
        assert error is None, error
        time.sleep(1)
        stages.append(("after sample 2", snapshot(root)))
        if args.reload:
            print(f"reload demux ({args.reload}): {reload_model(server, 'demux', args.reload):.2f} s")
            stages.append(("after reload", snapshot(root)))
            time.sleep(3)
            stages.append(("reload + 3 s", snapshot(root)))
            seconds, error = infer(url, sample)
            assert error is None, error
            stages.append(("after sample 3", snapshot(root)))
        healthy = server.ready()
    shutil.rmtree(work, ignore_errors=True)
    print(f"server healthy at the end: {healthy}")
    print(table(stages))
    for name, s in stages:
        print(f"{name}: largest /dev/shm region {largest_shm(s)}")
    base = dict(stages)["after sample"]["total"]
    for name, s in stages[2:]:
        print(f"{name}: total {(s['total'] - base) / MB:+.0f} MB against 'after sample'")
    if args.json:
        record = {"stages": stages, "args": vars(args) | {"json": str(args.json)}}
        args.json.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
