"""Runs the real `tritonserver` binary that the nvidia-pytriton wheel ships, on our model repository.

Only the binary, its Python backend and stubs are used (not PyTriton's Python API). What it takes is
in `shared/notes/triton-embedded.md`: a backends folder holding the stub for this Python, the venv's
bin/ first on PATH (the stub reads pyvenv.cfg), this interpreter's libpython first on
LD_LIBRARY_PATH, and every config complete (auto-complete is off for a faster start).

    fv2es-serve [--grpc-port 8001] [--http-port 8000]     # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

from . import config

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"


def pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_backends(work_dir: Path) -> Path:
    """A backends folder with the Python backend and the stub for the running Python version."""
    source = pytriton_dir()
    backends = work_dir / "backends"
    if not backends.exists():
        shutil.copytree(source / "backends", backends)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = source / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def server_env() -> dict[str, str]:
    env = {**config.SERVER_ENV, **os.environ}  # the caller's settings win
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_dir().parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


class EmbeddedServer:
    """Starts tritonserver on 127.0.0.1 and waits until every model is ready; use as a context manager."""

    def __init__(
        self,
        repository: Path = REPOSITORY,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_file: Path | None = None,
        verbose: bool = False,
        extra_args: list[str] | None = None,
    ):
        self.repository = Path(repository)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.work_dir = Path(tempfile.mkdtemp(prefix="fv2es-triton-"))
        self.log_file = log_file or self.work_dir / "tritonserver.log"
        self.verbose = verbose
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        return [
            str(pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={prepare_backends(self.work_dir)}",
            f"--cache-directory={self.work_dir / 'cache'}",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = 300.0) -> "EmbeddedServer":
        missing = [str(p) for p in self.repository.glob("*_encoder/1") if not (p / "model.pt").exists()]
        if missing or not (self.repository / "fusion" / "1" / "model.pt").exists():
            raise RuntimeError(f"model repository {self.repository} has no exported models: run `make build` first")
        out = None if self.verbose else open(self.log_file, "wb")
        self.process = subprocess.Popen(
            self.command(), env=server_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"tritonserver was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_file).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the FV2ES model repository with tritonserver.")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args()
    server = EmbeddedServer(
        args.repository, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port, verbose=True
    )
    stop = {"requested": False}

    def on_signal(signum, frame):  # Ctrl-C / SIGTERM: stop the server, then exit
        stop["requested"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    print(f"FV2ES ready: gRPC {server.grpc_url}, HTTP {server.http_url} (Ctrl-C stops)", flush=True)
    try:
        while not stop["requested"] and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()
        print("tritonserver stopped", flush=True)


if __name__ == "__main__":
    main()
