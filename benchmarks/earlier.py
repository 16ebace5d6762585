"""This code's server against an earlier version's, on the same clip, in turns, in one run.

Speed changes between versions are smaller than the difference between two sessions on a shared
machine (the floors moved 2-3x between runs a week apart), so a regression shows only when both
versions run side by side. The earlier version's model repository is built from its own commit in a
git worktree (its own runtime code, configs and weights, exported with its own build code); both
repositories are served by this checkout's tritonserver launcher at the same time, and each round
sends the clip to one then the other (the order alternates), one request at a time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

from fv2es.tritonserver import EmbeddedServer
from fv2es_client import Fv2esClient

ROOT = Path(__file__).resolve().parents[1]
# Where each package of the pyproject's package-dir lives in a checkout (importable by name from a link).
PACKAGES = {"fv2es": "python_backend/fv2es", "fv2es_client": "client/fv2es_client", "fv2es_build": "build"}


def commit_of(ref: str) -> str | None:
    """The full commit of `ref`, or None when this clone does not have it (a shallow clone)."""
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                           capture_output=True, text=True)
    return found.stdout.strip() or None


def repository_of(commit: str, out: Path) -> Path:
    """The earlier version's model repository, built (once) in a worktree at out/versions/<commit>."""
    tree = out / "versions" / commit[:12]
    models = tree / "triton_models"
    if (tree / ".built").exists():
        return models
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
    links = tree / ".packages"  # the worktree's packages by their import names, ahead of this checkout's install
    links.mkdir(exist_ok=True)
    for name, folder in PACKAGES.items():
        if not (links / name).exists():
            (links / name).symlink_to(tree / folder)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "from fv2es_build.repository import main; main()"], cwd=tree, check=True,
                   env={**os.environ, "PYTHONPATH": str(links)})
    (tree / ".built").touch()
    print(f"built the model repository of {commit[:12]} in {time.monotonic() - started:.0f} s", flush=True)
    return models


def compute_ns(stats_client: grpcclient.InferenceServerClient) -> dict[str, int]:
    """Cumulative compute nanoseconds of every model the server has (Triton's compute_input +
    compute_infer + compute_output)."""
    stats = stats_client.get_inference_statistics(as_json=True)["model_stats"]
    return {m["name"]: sum(int(m["inference_stats"][k].get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output"))
            for m in stats if m.get("inference_stats")}


def in_turns(repositories: dict[str, Path], video: bytes, rounds: int) -> tuple[dict, dict]:
    """Seconds of each request per repository (one warm-up each, then `rounds` rounds of one request to
    each), and each model's compute seconds per request."""
    names = list(repositories)
    servers = {name: EmbeddedServer(path) for name, path in repositories.items()}
    try:
        for server in servers.values():
            server.start(timeout_s=600)
        clients = {name: Fv2esClient(server.grpc_url, timeout_s=3600) for name, server in servers.items()}
        stats = {name: grpcclient.InferenceServerClient(server.grpc_url) for name, server in servers.items()}
        times = {name: [] for name in names}
        for client in clients.values():
            client.analyze(video)
        before = {name: compute_ns(stats[name]) for name in names}
        for round_ in range(rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                started = time.perf_counter()
                clients[name].analyze(video)
                times[name].append(time.perf_counter() - started)
        after = {name: compute_ns(stats[name]) for name in names}
        for client in (*clients.values(), *stats.values()):
            client.close()
        models = {name: {m: (after[name][m] - before[name].get(m, 0)) / 1e9 / rounds for m in after[name]
                         if after[name][m] > before[name].get(m, 0)} for name in names}
        return times, models
    finally:
        for server in servers.values():
            server.stop()


def measure(ref: str, description: str, current: Path, video: bytes, rounds: int, out: Path) -> dict:
    """This checkout's repository (`current`) against `ref`'s on `video`: medians and their ratio."""
    commit = commit_of(ref)
    if commit is None:
        return {"ref": ref, "description": description, "skipped": f"{ref} is not in this clone (shallow?)"}
    times, models = in_turns({"earlier": repository_of(commit, out), "current": current}, video, rounds)
    earlier, now = statistics.median(times["earlier"]), statistics.median(times["current"])
    pairs = [c / e for c, e in zip(times["current"], times["earlier"])]
    return {"ref": ref, "commit": commit, "description": description, "rounds": rounds, "times": times, "model_s": models,
            "earlier_median_s": earlier, "current_median_s": now, "ratio_of_medians": now / earlier,
            "median_round_ratio": statistics.median(pairs)}


def main() -> None:
    """`.venv/bin/python benchmarks/earlier.py [--ref COMMIT] [--rounds N]`: the comparison alone, printed
    (make bench runs it too and writes it into BENCHMARKS.md)."""
    import argparse
    import json

    import bench_settings  # benchmarks/, beside this script
    from fv2es.tritonserver import REPOSITORY
    from run import OUT, clip

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default=bench_settings.BENCH_EARLIER_VERSION[0], help="the earlier commit (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=bench_settings.BENCH_EARLIER_ROUNDS)
    args = parser.parse_args()
    description = bench_settings.BENCH_EARLIER_VERSION[1] if args.ref == bench_settings.BENCH_EARLIER_VERSION[0] else args.ref
    result = measure(args.ref, description, REPOSITORY, clip(60), args.rounds, OUT)
    (OUT / "earlier.json").write_text(json.dumps(result, indent=2))
    if "skipped" in result:
        print(result["skipped"])
        return
    for name in ("earlier", "current"):
        t = result["times"][name]
        print(f"{name:8s} median {statistics.median(t):.2f} s  min {min(t):.2f}  max {max(t):.2f}  ({len(t)} runs)")
    models = result["model_s"]
    for model in sorted(set(models["earlier"]) | set(models["current"])):
        e, c = models["earlier"].get(model), models["current"].get(model)
        print(f"  {model:18s} {'-' if e is None else f'{e:.3f}':>7s} {'-' if c is None else f'{c:.3f}':>7s} s per request")
    print(f"this code / {args.ref}: {result['ratio_of_medians']:.2f}x (medians), {result['median_round_ratio']:.2f}x (median round ratio)")


if __name__ == "__main__":
    main()
