"""Runs the real `tritonserver` binary that the nvidia-pytriton wheel ships, on our model repository.

Only the binary, its Python backend and stubs are used (not PyTriton's Python API). What it takes is
in `shared/notes/triton-embedded.md`: a backends folder holding the stub for this Python, the venv's
bin/ first on PATH (the stub reads pyvenv.cfg), this interpreter's libpython first on
LD_LIBRARY_PATH, and every config complete (auto-complete is off for a faster start).
Another tritonserver binary (the NGC container's) can be named with --tritonserver.

The server is started locked down: bound to 127.0.0.1, the admin APIs (config.RESTRICTED_APIS)
behind a key that no other local user can read (preload_library()), and watched by a `StubWatchdog`
that reloads a model whose stub process died.

    fv2es-serve [--address 127.0.0.1] [--grpc-port 8001] [--http-port 8000]   # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
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

from . import config, model_configs
from .watchdog import SHM_DIR, StubWatchdog, orphaned_stubs, process_group_members, process_state, remove_shm_regions

REPOSITORY = Path(__file__).resolve().parents[2] / "triton_models"
READY_POLL_S = 0.1  # how often start() asks /v2/health/ready (a local HTTP request: cheap)


def pytriton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADMIN_KEY_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")


def load_admin_key() -> tuple[str, str]:
    """The admin key and where it came from: FV2ES_ADMIN_KEY, the file FV2ES_ADMIN_KEY_FILE names, or a new random one."""
    if os.environ.get(config.ADMIN_KEY_ENV):
        key, source = os.environ[config.ADMIN_KEY_ENV].strip(), config.ADMIN_KEY_ENV
    elif os.environ.get(config.ADMIN_KEY_FILE_ENV):
        path = os.environ[config.ADMIN_KEY_FILE_ENV]
        key, source = Path(path).read_text().strip(), path
    else:
        return secrets.token_urlsafe(32), ""
    if not ADMIN_KEY_PATTERN.fullmatch(key):
        raise SystemExit(f"the admin key from {source} must be 16 to 256 letters, digits or -._~+/ characters")
    return key, source


# Where the key goes in restricted_api_args: fv2es_preload.so puts it after this text (config.ARGV_SECRET_ENV).
ADMIN_KEY_PLACE = f":{config.ADMIN_KEY_HEADER}="


def restricted_api_args(key: str) -> list[str]:
    """tritonserver flags that put config.RESTRICTED_APIS behind the admin key on HTTP and gRPC
    (`key` "": its place left empty, for preload_library() to fill)."""
    rule = f"{','.join(config.RESTRICTED_APIS)}{ADMIN_KEY_PLACE}{key}"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]


def preload_library() -> Path | None:
    """The library that keeps the admin key off tritonserver's command line and the stubs' shared memory
    private (config.PRELOAD_LIBRARY; `make` builds it); None where FV2ES_ADMIN_KEY_ON_COMMAND_LINE=1
    puts the key there instead."""
    if os.environ.get(config.ADMIN_KEY_ON_COMMAND_LINE_ENV) == "1":
        return None
    library = Path(sys.prefix) / config.PRELOAD_LIBRARY
    if not library.is_file():
        # Fail closed: a key on the command line is a key for every local user (`ps`).
        raise RuntimeError(f"{library} is missing: it keeps the admin key off tritonserver's command line, which "
                           f"every local user can read. Build it with `make` (python_backend/native/fv2es_preload.c, "
                           f"a C compiler), or set {config.ADMIN_KEY_ON_COMMAND_LINE_ENV}=1 to accept the key there")
    return library


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


def server_env(embedded: bool = True, stub_env: Path | None = None) -> dict[str, str]:
    """The server's environment. The stubs run in the Python environment `stub_env` (a venv's root;
    default: the running one): the stub finds it through the `python` first on PATH."""
    env = {**config.SERVER_ENV, **os.environ}  # the caller's settings win
    # A preload that is not installed (no libjemalloc2) would print an ld.so error in every process.
    preload = [p for p in re.split(r"[: ]", env.get("LD_PRELOAD", "")) if p and Path(p).exists()]
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    env.pop(config.ADMIN_KEY_ENV, None)  # the stubs run model code: they have no use for the key
    venv_bin = str(Path(stub_env) / "bin") if stub_env else str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libs = [sysconfig.get_config_var("LIBDIR")]
    if embedded:
        libs.append(str(pytriton_dir().parent.parent / "nvidia_pytriton.libs"))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


def limited_repository(target: Path, max_input_bytes: int | None = None, repository: Path = REPOSITORY,
                       parameters: dict[str, dict[str, str]] | None = None, instances: dict[str, int] | None = None) -> Path:
    """A view of `repository` at `target` with other limits: `max_input_bytes` for every model that
    carries it, `parameters` ({model: {name: value}}) and `instances` ({model: instance count}) for
    the models named; everything else is symlinked. For a server with smaller limits, or more or
    fewer instances of a model."""
    target.mkdir(parents=True)
    for model in sorted(p for p in repository.iterdir() if p.is_dir()):
        model_config = model_configs.read(model / "config.pbtxt")
        values = dict((parameters or {}).get(model.name, {}))
        unknown = set(values) - set(model_config.parameters)
        if unknown:
            raise ValueError(f"model {model.name} has no parameter {sorted(unknown)}")
        if max_input_bytes is not None and "max_input_bytes" in model_config.parameters:
            values["max_input_bytes"] = str(max_input_bytes)
        count = (instances or {}).get(model.name)
        if not values and count is None:
            (target / model.name).symlink_to(model, target_is_directory=True)
            continue
        model_configs.set_parameters(model_config, values)
        if count is not None:
            model_config.instance_group[0].count = count
        (target / model.name).mkdir()
        for item in model.iterdir():
            if item.name != "config.pbtxt":
                (target / model.name / item.name).symlink_to(item)
        (target / model.name / "config.pbtxt").write_text(model_configs.to_text(model_config))
    return target


def is_remote(repository: Path | str) -> bool:
    """Whether a model repository is a cloud-storage URL that tritonserver reads itself."""
    return isinstance(repository, str) and repository.split("://", 1)[0] in ("s3", "gs", "as")


class EmbeddedServer:
    """Starts tritonserver and waits until every model is ready; use as a context manager.

    Bound to `address` (config.BIND_ADDRESS), the admin APIs behind `admin_key` (config: where it
    comes from), every model loaded at start in explicit model-control mode so that the stub
    watchdog can reload one. `stop()` leaves no stub process, no /dev/shm file and no work folder behind.
    """

    def __init__(
        self,
        repository: Path | str = REPOSITORY,
        *,
        address: str = config.BIND_ADDRESS,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        admin_key: str | None = None,
        tritonserver: Path | None = None,
        backend_directory: Path | None = None,
        watch_stubs: bool = True,
        log_file: Path | None = None,
        verbose: bool = False,
        extra_args: list[str] | None = None,
        stub_env: Path | None = None,
    ):
        # A local folder, or a URL Triton reads itself (s3://host:port/bucket/path, gs://, as://).
        self.repository = repository if is_remote(repository) else Path(repository)
        self.address = address
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.work_dir = Path(tempfile.mkdtemp(prefix="fv2es-triton-"))
        # Every stub's /dev/shm region starts with this: stop() finds this server's stubs and regions
        # by it, also those the watchdog had not seen yet when the server was killed.
        self.shm_prefix = f"fv2es_{secrets.token_hex(4)}_"
        self.admin_key, self.admin_key_source = (admin_key, "argument") if admin_key else load_admin_key()
        if not self.admin_key_source:  # generated: only the server's user can read it back
            self.admin_key_source = str(self.work_dir / "admin-key")
            fd = os.open(self.admin_key_source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.admin_key + "\n")
        self.tritonserver = Path(tritonserver) if tritonserver else None
        self.backend_directory = Path(backend_directory) if backend_directory else None
        self.watch_stubs = watch_stubs
        self.watchdog: StubWatchdog | None = None
        self.log_file = log_file or self.work_dir / "tritonserver.log"
        self.verbose = verbose
        self.extra_args = extra_args or []
        self.stub_env = stub_env
        self.process: subprocess.Popen | None = None

    @property
    def local_address(self) -> str:
        """Where a client on this machine reaches the server (a wildcard bind answers on loopback)."""
        return "127.0.0.1" if self.address in ("0.0.0.0", "::", "") else self.address

    @property
    def grpc_url(self) -> str:
        return f"{self.local_address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.local_address}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self.local_address}:{self.metrics_port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """Headers that open the restricted APIs: HTTP (`http`) and gRPC (`grpc`) spellings."""
        return {config.ADMIN_KEY_HEADER: self.admin_key, f"triton-grpc-protocol-{config.ADMIN_KEY_HEADER}": self.admin_key}

    def command(self) -> list[str]:
        binary = self.tritonserver or pytriton_dir() / "bin" / "tritonserver"
        backends = self.backend_directory or prepare_backends(self.work_dir)
        return [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={self.work_dir / 'cache'}",
            f"--http-address={self.address}", f"--http-port={self.http_port}",
            f"--grpc-address={self.address}", f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}",
            # The key's place left empty: env() hands the key to fv2es_preload.so, which fills it in.
            *restricted_api_args("" if preload_library() else self.admin_key),
            # Explicit control with everything loaded at start: the watchdog reloads single models.
            "--model-control-mode=explicit", "--load-model=*",
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--exit-timeout-secs={config.SERVER_EXIT_TIMEOUT_S}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *config.SERVER_ARGS,
            *self.extra_args,
        ]

    def env(self) -> dict[str, str]:
        env = server_env(embedded=self.tritonserver is None, stub_env=self.stub_env)
        # Models of an s3:// repository are downloaded here, so they go with the work folder.
        mount = self.work_dir / "s3"
        mount.mkdir(exist_ok=True)
        env.setdefault("TRITON_AWS_MOUNT_DIRECTORY", str(mount))
        for name in (config.ARGV_SECRET_ENV, config.ARGV_SECRET_AFTER_ENV):
            env.pop(name, None)
        library = preload_library()
        if library is None:
            print(f"fv2es: warning: {config.ADMIN_KEY_ON_COMMAND_LINE_ENV}=1: the admin key is on tritonserver's "
                  f"command line, where every local user can read it", file=sys.stderr, flush=True)
        else:  # the key for fv2es_preload.so, which puts it into the arguments and out of the environment
            env["LD_PRELOAD"] = ":".join(p for p in (str(library), env.get("LD_PRELOAD")) if p)
            env[config.ARGV_SECRET_ENV] = self.admin_key
            env[config.ARGV_SECRET_AFTER_ENV] = ADMIN_KEY_PLACE
        return env

    def start(self, timeout_s: float = 300.0) -> "EmbeddedServer":
        if not is_remote(self.repository):
            missing = [str(p) for p in self.repository.glob("*_encoder/1") if not (p / "model.pt").exists()]
            if missing or not (self.repository / "fusion" / "1" / "model.pt").exists():
                raise RuntimeError(f"model repository {self.repository} has no exported models: run `make build` first")
        out = None if self.verbose else open(self.log_file, "wb")
        self.process = subprocess.Popen(
            self.command(), env=self.env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, umask=config.SERVER_UMASK,  # the files it and its stubs make: this user's only
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{tail}")
            if self.ready():
                if self.watch_stubs:
                    self.watchdog = StubWatchdog(self.process.pid, self.http_url, self.admin_key,
                                                 metrics_url=self.metrics_url).start()
                return self
            time.sleep(READY_POLL_S)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"tritonserver was not ready after {timeout_s:.0f} s:\n{tail}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self, timeout_s: float = config.SERVER_EXIT_TIMEOUT_S + 10) -> None:
        """SIGTERM, then SIGKILL to the whole process group; then the stubs' /dev/shm files that remain."""
        if self.process is None:
            return
        regions = set()
        if self.watchdog is not None:
            self.watchdog.stop()
            regions = self.watchdog.regions
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # stubs that outlived the server (a killed server cannot stop them)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        regions = regions | {f.name for f in SHM_DIR.glob(f"{self.shm_prefix}*")}
        # The server's process group (stubs that are still tearing down have no command line left to
        # recognise them by), and any stub that left the group.
        stubs = sorted(set(process_group_members(self.process.pid)) | set(orphaned_stubs(regions, self.shm_prefix)))
        for pid in stubs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + config.STUB_KILL_WAIT_S
        while any(process_state(pid) not in (None, "Z") for pid in stubs) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {pid: process_state(pid) for pid in stubs if process_state(pid) not in (None, "Z")}
        if left:
            print(f"fv2es: {len(left)} stub(s) still alive {config.STUB_KILL_WAIT_S} s after SIGKILL "
                  f"(pid: state {left})", file=sys.stderr, flush=True)
        remove_shm_regions(regions)
        # The copied backends, the cache, s3:// downloads, a generated admin key and the default log.
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_file).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, exc_type, exc, traceback) -> None:
        if isinstance(exc, Exception) and self.process is not None:  # whatever failed: was it the server?
            state = "still running" if self.process.poll() is None else f"exited with {self.process.returncode}"
            print(f"fv2es: tritonserver was {state} when this failed; its log ends:\n{self.log_tail()}",
                  file=sys.stderr, flush=True)
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the FV2ES model repository with tritonserver.")
    parser.add_argument("--repository", default=str(REPOSITORY),
                        help="model repository: a folder, or s3://host:port/bucket/path (default %(default)s)")
    parser.add_argument("--address", default=os.environ.get("FV2ES_BIND_ADDRESS", config.BIND_ADDRESS),
                        help="address to bind HTTP, gRPC and metrics to (default %(default)s; 0.0.0.0 for all)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--tritonserver", type=Path, help="a tritonserver binary (default: the nvidia-pytriton wheel's)")
    parser.add_argument("--backend-directory", type=Path, help="its backends folder (default: the wheel's, with this Python's stub)")
    args = parser.parse_args()
    server = EmbeddedServer(
        args.repository if is_remote(args.repository) else Path(args.repository), address=args.address, http_port=args.http_port, grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, tritonserver=args.tritonserver, backend_directory=args.backend_directory,
        verbose=True,
    )
    stop = {"requested": False}

    def on_signal(signum, frame):  # Ctrl-C / SIGTERM: stop the server, then exit
        stop["requested"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    print(f"FV2ES ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.local_address}:{server.metrics_port} "
          f"(Ctrl-C stops)", flush=True)
    print(f"admin APIs ({', '.join(config.RESTRICTED_APIS)}) need the header '{config.ADMIN_KEY_HEADER}' "
          f"(gRPC: 'triton-grpc-protocol-{config.ADMIN_KEY_HEADER}'); key from {server.admin_key_source}", flush=True)
    try:
        while not stop["requested"] and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()
        print("tritonserver stopped", flush=True)


if __name__ == "__main__":
    main()
