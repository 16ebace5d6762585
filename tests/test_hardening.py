"""The server's own defences: admin APIs behind a key, loopback binding, dead stubs replaced, clean stops.

Every test here talks to a real tritonserver. The ones that kill processes start a server of their
own, so that the session's server is never disturbed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import SAMPLE, make_video, serving
from tritonclient.utils import InferenceServerException

from fv2es import config
from fv2es.tritonserver import EmbeddedServer, restricted_api_args
from fv2es.watchdog import SHM_DIR, live_stubs, process_state
from fv2es_client import Fv2esClient, Fv2esError

GRPC_KEY_HEADER = f"triton-grpc-protocol-{config.ADMIN_KEY_HEADER}"


def http_call(server, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{server.http_url}{path}", data=data, headers=headers or {},
                                     method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def server_is_healthy(server, sample_bytes) -> None:
    assert server.process.poll() is None, "tritonserver died"
    assert http_call(server, "/v2/health/ready")[0] == 200
    with Fv2esClient(server.grpc_url) as client:
        result = client.analyze(sample_bytes)
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()


def backend_regions(server) -> list[str]:
    regions = [stub.shm_region for stub in live_stubs(server.process.pid).values()]
    assert regions, "no Python-backend stub found"
    return regions


# --- restricted APIs ---------------------------------------------------------------------------


def test_the_crash_sequence_is_refused(server, sample_bytes):
    """Registering the Python backend's own region, then asking Triton to write outputs into it,
    killed tritonserver (SIGSEGV) before the shared-memory API was put behind the admin key."""
    region = backend_regions(server)[0]
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc.register_system_shared_memory("victim", f"/{region}", 1 << 20)
    status, body = http_call(server, "/v2/systemsharedmemory/region/victim/register",
                             {"key": f"/{region}", "offset": 0, "byte_size": 1 << 20})
    assert status == 403 and "restricted" in body, (status, body)
    # A wrong key is refused as well.
    with pytest.raises(InferenceServerException, match="restricted"):
        grpc.register_system_shared_memory("victim", f"/{region}", 1 << 20, headers={GRPC_KEY_HEADER: "wrong-key-0123456789"})
    # The request that wrote into the region now names a region the server does not know.
    video = grpcclient.InferInput("VIDEO", [1], "BYTES")
    video.set_data_from_numpy(np.array([sample_bytes], dtype=np.object_))
    output = grpcclient.InferRequestedOutput("VIDEO_SCORES")
    output.set_shared_memory("victim", 1 << 20)
    with pytest.raises(InferenceServerException, match="victim"):
        grpc.infer(config.ENSEMBLE_NAME, [video], outputs=[output])
    assert grpc.get_system_shared_memory_status(headers={GRPC_KEY_HEADER: server.admin_key}) is not None
    server_is_healthy(server, sample_bytes)


def test_admin_apis_need_the_key_and_the_rest_stays_open(server):
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for call in (
        lambda h: grpc.update_log_settings({"log_verbose_level": 1}, headers=h),
        lambda h: grpc.get_trace_settings(headers=h),
        lambda h: grpc.unload_model("asr", headers=h),
        lambda h: grpc.get_model_repository_index(headers=h),
    ):
        with pytest.raises(InferenceServerException, match="restricted"):
            call(None)
    for path, body in (("/v2/logging", {"log_verbose_level": 1}), ("/v2/trace/setting", {"trace_rate": "1"}),
                       ("/v2/repository/models/asr/unload", {}), ("/v2/repository/index", {})):
        status, text = http_call(server, path, body)
        assert status == 403 and "restricted" in text, (path, status, text)
    # The key opens them (read-only calls: nothing is changed for the other tests).
    assert "log_verbose_level" in json.dumps(grpc.get_log_settings(headers={GRPC_KEY_HEADER: server.admin_key}, as_json=True))
    status, text = http_call(server, "/v2/logging", headers={config.ADMIN_KEY_HEADER: server.admin_key})
    assert status == 200 and "log_verbose_level" in text
    # Open: health, metadata, model config, statistics.
    assert grpc.is_server_ready() and grpc.is_model_ready(config.ENSEMBLE_NAME)
    assert grpc.get_model_metadata(config.ENSEMBLE_NAME).name == config.ENSEMBLE_NAME
    assert grpc.get_model_config(config.ENSEMBLE_NAME).config.name == config.ENSEMBLE_NAME
    assert grpc.get_inference_statistics(config.ENSEMBLE_NAME) is not None
    assert httpclient.InferenceServerClient(server.http_url).is_server_live()


def listening_addresses(port: int) -> set[str]:
    """Local addresses on which something listens on `port`, over TCP on IPv4 and IPv6 (IPv4-mapped
    IPv6 addresses, as gRPC binds them, given as IPv4)."""
    found = set()
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port:
            ip = ipaddress.ip_address(connection.laddr.ip)
            found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


def test_every_port_listens_on_loopback_only(server):
    assert config.BIND_ADDRESS == "127.0.0.1"
    for port in (server.http_port, server.grpc_port, server.metrics_port):
        assert listening_addresses(port) == {"127.0.0.1"}, port


def test_the_admin_key_comes_from_the_environment(monkeypatch, tmp_path):
    from fv2es.tritonserver import load_admin_key

    monkeypatch.setenv(config.ADMIN_KEY_ENV, "k" * 24)
    assert load_admin_key() == ("k" * 24, config.ADMIN_KEY_ENV)
    monkeypatch.delenv(config.ADMIN_KEY_ENV)
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file-0123456789\n")
    monkeypatch.setenv(config.ADMIN_KEY_FILE_ENV, str(key_file))
    assert load_admin_key() == ("from-a-file-0123456789", str(key_file))
    key_file.write_text("short")
    with pytest.raises(SystemExit, match="16 to 256"):
        load_admin_key()
    monkeypatch.delenv(config.ADMIN_KEY_FILE_ENV)
    generated, source = load_admin_key()
    assert len(generated) >= 32 and source == ""
    assert restricted_api_args("x" * 20)[0] == f"--http-restricted-api=shared-memory,model-repository,logging,trace:{config.ADMIN_KEY_HEADER}={'x' * 20}"


# --- dead stubs, probes, shutdown --------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server(spare_server):
    """The tests that kill its processes run on the spare server (conftest), not the session's."""
    return spare_server


def kill_stub(server, model: str) -> int:
    pid = next(pid for pid, stub in live_stubs(server.process.pid).items() if stub.model == model)
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_for(condition, timeout_s: float, step_s: float = 0.1) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s")


@pytest.mark.slow
def test_a_dead_stub_is_replaced_and_readiness_says_so_meanwhile(own_server, sample_bytes):
    before = len(own_server.watchdog.recoveries)
    kill_stub(own_server, "asr")
    # Not ready soon after the crash (it was 200 for good before the watchdog) ...
    wait_for(lambda: http_call(own_server, f"/v2/models/{config.ENSEMBLE_NAME}/ready")[0] != 200, timeout_s=5, step_s=0.05)
    # ... ready again within seconds, with a new asr stub, and answering.
    recovered_in = wait_for(lambda: own_server.ready() and not own_server.watchdog.recovering, timeout_s=60)
    assert len(own_server.watchdog.recoveries) == before + 1
    assert own_server.watchdog.recoveries[-1]["model"] == "asr"
    assert any(s.model == "asr" for s in live_stubs(own_server.process.pid).values())
    server_is_healthy(own_server, sample_bytes)
    print(f"recovered in {recovered_in:.1f} s")


@pytest.mark.slow
def test_an_asr_model_the_audio_branch_was_not_trained_on_is_refused_at_load(own_server, sample_bytes):
    """Another Whisper gives the audio branch features it never learnt (tiny multilingual: the same width,
    silently wrong): an operator's config with another asr_model does not load, and says why."""
    admin = grpcclient.InferenceServerClient(own_server.grpc_url)
    key = {GRPC_KEY_HEADER: own_server.admin_key}
    served = admin.get_model_config("asr", as_json=True)["config"]
    other = json.loads(json.dumps(served))
    other["parameters"]["asr_model"] = {"string_value": "Systran/faster-whisper-tiny"}
    try:
        with pytest.raises(InferenceServerException) as refused:
            admin.load_model("asr", config=json.dumps(other), headers=key)
        assert f"is not the ASR model the audio branch was trained on ({config.ASR_MODEL!r})" in refused.value.message()
    finally:
        admin.load_model("asr", headers=key)
    wait_for(lambda: own_server.ready() and not own_server.watchdog.recovering, timeout_s=60)
    server_is_healthy(own_server, sample_bytes)


def run_probe(server, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fv2es_client.probe", "--url", server.grpc_url, "--video", str(SAMPLE)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bare_server():
    """A server without the stub watchdog (as a bare tritonserver is), for the tests that end it."""
    with serving(EmbeddedServer(watch_stubs=False)) as instance:
        yield instance


@pytest.mark.slow
def test_the_probe_runs_an_inference_and_sees_what_ready_misses(bare_server):
    """Without the watchdog: /ready stays 200 with a dead stub; the probe does not."""
    done = run_probe(bare_server)
    assert done.returncode == 0 and "healthy" in done.stdout, done.stderr
    kill_stub(bare_server, "fusion")
    time.sleep(0.5)
    assert bare_server.ready()  # Triton's readiness misses it
    done = run_probe(bare_server)
    assert done.returncode == 1 and "unhealthy" in done.stderr and "fusion" in done.stderr, (done.stdout, done.stderr)


def shm_files(regions) -> list[str]:
    return [r for r in regions if (SHM_DIR / r).exists()]


@pytest.mark.slow
def test_stop_leaves_no_stub_and_no_shared_memory(sample_bytes):
    server = EmbeddedServer().start()
    regions = set(backend_regions(server))
    kill_stub(server, "assign_faces")  # a crash, and the watchdog's reload, before the stop
    wait_for(lambda: len(server.watchdog.recoveries) == 1 and not server.watchdog.recovering, timeout_s=60)
    regions |= set(backend_regions(server))
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < config.SERVER_EXIT_TIMEOUT_S + 5
    assert shm_files(regions) == []
    assert [p for p in live_stubs(server.process.pid)] == []


@pytest.mark.slow
def test_a_server_killed_outright_is_cleaned_up_by_stop(bare_server):
    """SIGKILL: tritonserver cannot stop its stubs (nor, after the probe test, has anything replaced the
    dead one); stop() ends them and removes their shared memory."""
    regions = set(backend_regions(bare_server))
    stub_pids = list(live_stubs(bare_server.process.pid))
    os.kill(bare_server.process.pid, signal.SIGKILL)
    bare_server.stop()
    assert shm_files(regions) == []
    assert {pid: process_state(pid) for pid in stub_pids if process_state(pid) not in (None, "Z")} == {}


# --- load with a fault -------------------------------------------------------------------------

LOAD_REQUESTS = 32  # measured with 48 (kill after 12): 8 failed around the kill, 28 came after the recovery
LOAD_CONCURRENCY = 8
KILL_AFTER = 8  # requests answered before a stub is killed


@pytest.mark.slow
def test_load_with_a_stub_killed_midway(own_server, sample_speech):
    """LOAD_REQUESTS at LOAD_CONCURRENCY, the fusion's stub killed after KILL_AFTER answers: each one
    succeeds with the right result or fails with a clear status; the requests after the recovery all succeed."""
    clip = make_video(sample_speech[: int(3.8 * config.SAMPLE_RATE)])
    with Fv2esClient(own_server.grpc_url, timeout_s=120, retries=0) as client:
        reference = client.analyze(clip)
    answered = []  # (started at, ok, result or (status, message)), in order of completion
    lock = threading.Lock()
    killed = threading.Event()

    def one(_):
        started = time.monotonic()
        with Fv2esClient(own_server.grpc_url, timeout_s=120, retries=0) as client:
            try:
                outcome = (True, client.analyze(clip))
            except Fv2esError as exc:
                outcome = (False, (exc.status(), exc.message()))
                time.sleep(0.5)  # a client's backoff: failures are fast, the recovery takes seconds
        with lock:
            answered.append((started, *outcome))
            if len(answered) == KILL_AFTER and not killed.is_set():
                kill_stub(own_server, "fusion")
                killed.set()

    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        list(pool.map(one, range(LOAD_REQUESTS)))

    assert len(answered) == LOAD_REQUESTS and killed.is_set()
    recovery = own_server.watchdog.recoveries[-1]
    assert recovery["model"] == "fusion" and recovery["ready_at"] is not None
    failures = [detail for _, ok, detail in answered if not ok]
    for status, message in failures:
        assert status in ("INTERNAL", "UNAVAILABLE", "NOT_FOUND", "MODEL_NOT_READY", "MODEL_NOT_FOUND"), (status, message)
        assert message and "Traceback" not in message and len(message) < 500, message
    for _, ok, result in answered:
        if ok:
            assert [(s.start, s.end, s.transcript) for s in result.segments] == \
                [(s.start, s.end, s.transcript) for s in reference.segments]
            np.testing.assert_allclose([list(s.scores.values()) for s in result.segments],
                                       [list(s.scores.values()) for s in reference.segments], atol=1e-4)
    # Every request sent after the recovery succeeded (and there were such requests), and so do 8 more now.
    ready_at = time.monotonic() - (time.time() - recovery["ready_at"])
    late = [ok for started, ok, _ in answered if started > ready_at]
    assert late and all(late), f"{late.count(False)} of {len(late)} requests sent after the recovery failed"
    answered.clear()
    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        list(pool.map(one, range(8)))
    assert all(ok for _, ok, _ in answered)
    print(f"{len(failures)} of {LOAD_REQUESTS} failed around the kill: {sorted(set(failures))}, "
          f"{len(late)} sent after the recovery")


def test_compose_publishes_on_loopback_and_probes_with_an_inference():
    import yaml

    service = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())["services"]["tritonserver"]
    assert service["ports"] and all(p.startswith("${FV2ES_BIND_ADDRESS:-127.0.0.1}:") for p in service["ports"])
    # The image's own command is fv2es-serve (tests/test_image_requirements.py); compose does not replace it.
    assert service["build"]["dockerfile"] == "docker/Dockerfile" and "command" not in service
    assert "FV2ES_ADMIN_KEY" in service["environment"]
    assert service["healthcheck"]["test"][:2] == ["CMD", "fv2es-probe"]
