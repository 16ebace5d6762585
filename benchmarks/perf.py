"""perf_analyzer: installed from the tritonclient wheel that ships it, run against the ensemble.

tritonclient 2.73 (the client library we use) carries no binary; the 2.51 wheel does. Only its
`perf_analyzer` file is unpacked into .venv/perf_analyzer/ (once), with the two shared libraries it
needs linked from nvidia_pytriton.libs.
"""

from __future__ import annotations

import base64
import csv
import json
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import bench_settings  # benchmarks/, beside this script
from fv2es import config
from fv2es.tritonserver import pytriton_dir

ROOT = Path(__file__).resolve().parents[1]
INSTALL_DIR = ROOT / ".venv" / "perf_analyzer"
NEEDED_LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


def install() -> Path:
    binary = INSTALL_DIR / "perf_analyzer"
    if binary.exists():
        return binary
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", bench_settings.PERF_ANALYZER_PACKAGE,
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("tritonclient-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(n for n in archive.namelist() if n.endswith("/bin/perf_analyzer"))
            binary.write_bytes(archive.read(member))
    binary.chmod(0o755)
    libs = pytriton_dir().parent.parent / "nvidia_pytriton.libs"
    for name, pattern in NEEDED_LIBS.items():
        link = INSTALL_DIR / name
        if not link.exists():
            link.symlink_to(next(libs.glob(pattern)))
    return binary


def input_data(videos: list[bytes], path: Path) -> Path:
    """perf_analyzer's --input-data file: one entry per video. A BYTES tensor's base64 must encode
    Triton's serialised form, a 4-byte little-endian length and then the bytes."""
    entries = [{"VIDEO": {"b64": base64.b64encode(struct.pack("<I", len(v)) + v).decode(), "shape": [1]}} for v in videos]
    path.write_text(json.dumps({"data": entries}))
    return path


def run(grpc_url: str, data_file: Path, concurrency: tuple[int, ...], work_dir: Path) -> tuple[list[dict], str]:
    """Throughput and latency percentiles (ms) at each concurrency level, from perf_analyzer's CSV, and the command."""
    binary = install()
    report = work_dir / "perf_analyzer.csv"
    command = [
        str(binary), "-m", config.ENSEMBLE_NAME, "-i", "grpc", "-u", grpc_url, "--input-data", str(data_file),
        "--concurrency-range", f"{min(concurrency)}:{max(concurrency)}",
        "--measurement-mode", "count_windows", "--measurement-request-count", str(bench_settings.BENCH_PERF_REQUESTS),
        "--stability-percentage", "50", "--max-trials", "10", "--percentile", "95", "-f", str(report),
    ]
    log = subprocess.run(command, env={"LD_LIBRARY_PATH": str(INSTALL_DIR)}, capture_output=True, text=True)
    (work_dir / "perf_analyzer.log").write_text(" ".join(command) + "\n\n" + log.stdout + log.stderr)
    if log.returncode != 0 or not report.exists():
        raise RuntimeError(f"perf_analyzer failed ({log.returncode}):\n{log.stdout[-3000:]}{log.stderr[-3000:]}")
    rows = []
    with report.open() as f:
        for row in csv.DictReader(f):
            rows.append({
                "concurrency": int(row["Concurrency"]),
                "throughput": float(row["Inferences/Second"]),
                **{f"p{p}_ms": float(row[f"p{p} latency"]) / 1000 for p in (50, 95, 99)},
            })
    return sorted(rows, key=lambda r: r["concurrency"]), " ".join(command)
