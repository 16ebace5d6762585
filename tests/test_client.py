"""fv2es-client and the Python client against real tritonservers: outputs, failures, limits, TLS, health."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest
from conftest import ROOT, SAMPLE, serving

from fv2es import config, model_configs
from fv2es.tritonserver import REPOSITORY, EmbeddedServer, free_port, limited_repository
from fv2es_client import Fv2esClient, Fv2esError, InputTooLargeError, ServerUnavailableError
from fv2es_client.client import DEFAULT_MAX_INPUT_BYTES, MESSAGE_HEADROOM_BYTES, parse_limits
from fv2es_client.output import (
    CSV_COLUMNS, CSV_ERROR_COLUMNS, CSV_GROUP_COLUMNS, CSV_PEOPLE_COLUMNS, CSV_UNSURE_COLUMNS, Outcome, format_result, people_cell, plot_timelines,
    rounded,
)

SMALL_LIMIT = 200_000  # max_input_bytes of the limited server; the sample (78 kB) fits, OVERSIZE does not
OVERSIZE = 250_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VIDEO_TIMEOUT_S = 120  # --timeout of every CLI run: a stuck request fails its test instead of hanging it


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The console script's code in a fresh interpreter: real exit status, stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    command = [sys.executable, "-m", "fv2es_client", "--timeout", str(VIDEO_TIMEOUT_S), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def ensemble_counts(url: str, **tls) -> tuple[int, int]:
    """(success, fail) counts of the requests that reached the ensemble's first step (demux), from
    Triton's statistics. (The ensemble's own fail count goes up by 2 for one failed request.)"""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url, **tls) as c:
        demux = c.get_inference_statistics("demux", as_json=True)["model_stats"][0]["inference_stats"]
        asr = c.get_inference_statistics("asr", as_json=True)["model_stats"][0]["inference_stats"]
    # demux answers an input it rejects with an error response, which Triton counts as a success of
    # demux; a request that got past demux reached asr.
    received = int(demux["success"].get("count", 0)) + int(demux["fail"].get("count", 0))
    passed = int(asr["success"].get("count", 0))
    return passed, received - passed


@pytest.fixture(scope="module")
def reference(client, sample_bytes):
    """The sample analysed through the Python API, to compare the CLI's outputs with."""
    return client.analyze(sample_bytes)


@pytest.fixture(scope="module")
def broken_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("broken") / "notes.txt"
    path.write_text("This is a text file, not a video.\n" * 50)
    return path


# -- the package ----------------------------------------------------------------------------------


def test_console_script_is_declared_and_client_needs_no_server_package():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fv2es-client"] == "fv2es_client.cli:main"
    code = ("import sys, fv2es_client, fv2es_client.cli, fv2es_client.output; "
            "bad = [m for m in sys.modules if m == 'fv2es' or m.startswith('fv2es.')]; assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "client")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT / "client")
    assert done.returncode == 0, done.stderr


def test_limits_fall_back_to_the_default_without_the_parameter():
    limits = parse_limits({"parameters": {}}, DEFAULT_MAX_INPUT_BYTES)
    assert (limits.max_input_bytes, limits.max_duration_s, limits.from_server) == (DEFAULT_MAX_INPUT_BYTES, None, False)
    config = {"parameters": {"max_input_bytes": {"string_value": "1234"}, "max_duration_s": {"string_value": "60"}}}
    limits = parse_limits(config, DEFAULT_MAX_INPUT_BYTES)
    assert (limits.max_input_bytes, limits.max_duration_s, limits.from_server) == (1234, 60.0, True)
    assert limits.channel_bytes == 1234 + MESSAGE_HEADROOM_BYTES


# -- JSON, CSV, plot ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def json_run(server, broken_file, tmp_path_factory):
    copy = tmp_path_factory.mktemp("copy") / "copy.mp4"
    shutil.copy(SAMPLE, copy)
    videos = [str(SAMPLE), str(broken_file), str(broken_file.parent / "missing.mp4"), str(copy)]
    done = run_cli("--json", "--concurrency", "3", "--url", server.grpc_url, *videos)
    return videos, done


def check_group(entry: dict, expected: dict[str, float]) -> None:
    """The group's JSON: its emotion (the top class), score and scores over the group labels."""
    assert set(entry) == {"emotion", "score", "scores"} and tuple(entry["scores"]) == config.GROUP_LABELS
    assert entry["scores"] == pytest.approx(expected, abs=1e-5)
    assert entry["emotion"] == max(expected, key=expected.get) and entry["score"] == entry["scores"][entry["emotion"]]


def check_result_entry(entry: dict, reference) -> None:
    """Every field of a successful JSON result, with its type, against the Python API's result."""
    assert set(entry) == {"video", "ok", "seconds", "emotion", "score", "scores", "labels", "segments", "people",
                          "model_info", "unsure", "unsure_below", "group"}
    check_group(entry["group"], reference.group)
    # The threshold comes from the ensemble's config (config.UNSURE_BELOW); each mark follows from the score.
    assert entry["unsure_below"] == config.UNSURE_BELOW == reference.unsure_below
    assert entry["unsure"] is (entry["score"] < config.UNSURE_BELOW)
    assert entry["ok"] is True
    assert isinstance(entry["seconds"], float) and entry["seconds"] > 0
    labels = entry["labels"]
    assert isinstance(labels, list) and labels and all(isinstance(label, str) for label in labels)
    assert labels == reference.labels
    assert list(entry["scores"]) == labels and all(isinstance(v, float) for v in entry["scores"].values())
    assert sum(entry["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    assert entry["emotion"] == max(entry["scores"], key=entry["scores"].get) == reference.emotion
    assert entry["score"] == entry["scores"][entry["emotion"]]
    assert isinstance(entry["model_info"], dict) and entry["model_info"] == rounded(reference.model_info)
    segments = entry["segments"]
    assert len(segments) == len(reference.segments) >= 1
    assert segments[0]["start"] == pytest.approx(0.0, abs=1e-3)
    for previous, current in zip(segments, segments[1:]):
        assert current["start"] == pytest.approx(previous["end"], abs=1e-4), "segments are contiguous"
    for i, (segment, expected) in enumerate(zip(segments, reference.segments)):
        assert set(segment) == {"index", "start", "end", "transcript", "scores", "has_speech", "has_face", "speaker",
                                "people", "emotion", "score", "unsure", "group"}
        check_group(segment["group"], expected.group)
        assert segment["unsure"] is (segment["score"] < config.UNSURE_BELOW) is expected.unsure
        assert segment["index"] == i
        assert isinstance(segment["speaker"], int) and segment["speaker"] == expected.speaker
        assert set(segment["people"]) == {str(p) for p in expected.people}
        for person, seen in segment["people"].items():
            assert set(seen) == {"emotion", "score", "scores"} and list(seen["scores"]) == labels
            assert seen["scores"] == pytest.approx(expected.people[int(person)], abs=1e-5)
        assert isinstance(segment["start"], float) and isinstance(segment["end"], float)
        assert segment["end"] > segment["start"]
        assert (segment["start"], segment["end"]) == pytest.approx((expected.start, expected.end), abs=1e-4)
        assert isinstance(segment["transcript"], str) and segment["transcript"] == expected.transcript
        assert isinstance(segment["has_speech"], bool) and isinstance(segment["has_face"], bool)
        assert (segment["has_speech"], segment["has_face"]) == (expected.has_speech, expected.has_face)
        assert list(segment["scores"]) == labels
        assert all(isinstance(v, float) and 0 <= v <= 1 for v in segment["scores"].values())
        assert sum(segment["scores"].values()) == pytest.approx(1.0, abs=1e-3)
        assert segment["emotion"] == max(segment["scores"], key=segment["scores"].get) == expected.emotion
        assert segment["score"] == segment["scores"][segment["emotion"]]
        assert segment["scores"] == pytest.approx(expected.scores, abs=1e-5)
    people = entry["people"]
    assert [p["person"] for p in people] == [p.person for p in reference.person_summaries()]
    for person, expected in zip(people, reference.person_summaries()):
        assert set(person) == {"person", "emotion", "score", "scores", "seconds", "speaking_segments"}
        assert person["emotion"] == expected.emotion and person["scores"] == pytest.approx(expected.scores, abs=1e-5)
        assert person["seconds"] == pytest.approx(expected.seconds, abs=1e-4)
        assert person["speaking_segments"] == expected.speaking_segments


def test_json_document_schema(json_run, reference, server):
    videos, done = json_run
    doc = json.loads(done.stdout)  # one document, nothing else on stdout
    assert set(doc) == {"server", "results", "summary"}
    srv = doc["server"]
    assert srv["url"] == server.grpc_url and srv["model"] == "fv2es" and srv["model_version"] == ""
    assert isinstance(srv["max_input_bytes"], int) and srv["max_input_bytes_from_server"] is True
    expected_limit = model_configs.parameters(model_configs.read(REPOSITORY / "fv2es" / "config.pbtxt"))["max_input_bytes"]
    assert srv["max_input_bytes"] == int(expected_limit)
    assert isinstance(srv["max_duration_s"], float) and srv["max_duration_s"] > 0
    assert [r["video"] for r in doc["results"]] == videos, "results in the order given, despite --concurrency"
    assert doc["summary"] == {"videos": 4, "ok": 2, "failed": 2}
    check_result_entry(doc["results"][0], reference)
    check_result_entry(doc["results"][3], reference)
    for failed in doc["results"][1:3]:
        assert set(failed) == {"video", "ok", "seconds", "error"}
        assert failed["ok"] is False and isinstance(failed["seconds"], float)
        assert set(failed["error"]) == {"code", "message"}
        assert all(isinstance(v, str) and v for v in failed["error"].values())


def test_partial_failures_are_reported_per_file(json_run):
    videos, done = json_run
    assert done.returncode == 1, done.stderr
    results = json.loads(done.stdout)["results"]
    assert results[0]["ok"] and results[3]["ok"], "one failure does not stop the others"
    assert results[1]["error"]["code"] == "INVALID_ARGUMENT", results[1]  # the server's status code
    assert "not a readable video" in results[1]["error"]["message"]  # and its message
    assert results[2]["error"] == {"code": "FILE_NOT_FOUND", "message": f"no such file: {videos[2]}"}


def test_table_mode_reports_failures_on_stderr(server, broken_file, reference):
    missing = str(broken_file.parent / "missing.mp4")
    done = run_cli("--url", server.grpc_url, str(SAMPLE), str(broken_file), missing)
    assert done.returncode == 1
    assert done.stdout.startswith(str(SAMPLE) + "\n")
    assert f"  overall emotion: {reference.emotion}" in done.stdout
    rows = [line for line in done.stdout.splitlines() if re.match(r"^\s+\d+\.\d\d\s+\d+\.\d\d\s", line)]
    assert len(rows) == len(reference.segments)
    assert str(broken_file) not in done.stdout and missing not in done.stdout
    errors = done.stderr.splitlines()
    assert any(line.startswith(f"{broken_file}: error [INVALID_ARGUMENT]: ") for line in errors), done.stderr
    assert f"{missing}: error [FILE_NOT_FOUND]: no such file: {missing}" in errors
    assert "1 of 3 videos analysed, 2 failed" in done.stderr


def test_csv_and_plot(server, reference, tmp_path):
    png = tmp_path / "timeline.png"
    done = run_cli("--csv", "--plot", str(png), "--url", server.grpc_url, str(SAMPLE))
    assert done.returncode == 0, done.stderr
    reader = csv.DictReader(io.StringIO(done.stdout))
    assert reader.fieldnames == [*CSV_COLUMNS, *reference.labels, *CSV_ERROR_COLUMNS, *CSV_PEOPLE_COLUMNS, *CSV_UNSURE_COLUMNS,
                                 *CSV_GROUP_COLUMNS]
    rows = list(reader)
    assert len(rows) == len(reference.segments), "one row per segment"
    for row, segment in zip(rows, reference.segments):
        assert row["video"] == str(SAMPLE)
        assert float(row["start"]) == pytest.approx(segment.start, abs=1e-3)
        assert float(row["end"]) == pytest.approx(segment.end, abs=1e-3)
        assert row["transcript"] == segment.transcript
        assert (row["has_face"], row["has_speech"]) == (str(int(segment.has_face)), str(int(segment.has_speech)))
        scores = {label: float(row[label]) for label in reference.labels}
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-3)
        assert row["emotion"] == max(scores, key=scores.get) == segment.emotion
        assert float(row["score"]) == pytest.approx(segment.score, abs=1e-4)
        assert row["error_code"] == row["error_message"] == ""
        assert row["speaker"] == str(segment.speaker) and row["people"] == people_cell(segment)
        assert row["unsure"] == str(int(float(row["score"]) < config.UNSURE_BELOW))
        group = {g: float(row[f"group_{g}"]) for g in config.GROUP_LABELS}
        assert group == pytest.approx(segment.group, abs=1e-4)
        assert row["group"] == max(group, key=group.get) and float(row["group_score"]) == pytest.approx(max(group.values()), abs=1e-4)
    check_png(png)


def test_unsure_segments_are_marked_in_the_table(reference):
    """The table marks each segment whose top score is below the threshold, and says what the mark means."""
    result = copy.deepcopy(reference)
    table = format_result("clip", result.mark_unsure(1.01))  # every top score is below 1.01
    rows = [line for line in table.splitlines() if re.match(r"^\s+\d+\.\d\d\s+\d+\.\d\d\s", line)]
    assert len(rows) == len(result.segments) and all(f"{s.score:5.2f}?" in row for row, s in zip(rows, result.segments))
    assert "? unsure: top score below 1.01" in table and "overall emotion: " + result.emotion + " (unsure)" in table
    table = format_result("clip", result.mark_unsure(0.0))
    rows = [line for line in table.splitlines() if re.match(r"^\s+\d+\.\d\d\s+\d+\.\d\d\s", line)]
    assert all(f"{s.score:5.2f} " in row for row, s in zip(rows, result.segments)) and "unsure" not in table


def check_png(path) -> np.ndarray:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 200 and image.shape[1] >= 600
    assert image[..., :3].std() > 0.05, "the plot is not blank"
    return image


def test_plot_has_one_panel_per_analysed_video(reference, tmp_path):
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    ok = Outcome("a.mp4", 1.0, result=reference)
    failed = Outcome("b.mp4", 0.1, error_code="INVALID_ARGUMENT", error_message="bad")
    assert plot_timelines([ok, failed], one) == 1
    assert plot_timelines([ok, failed, ok], two) == 2
    assert plot_timelines([failed], tmp_path / "none.png") == 0 and not (tmp_path / "none.png").exists()
    height_one, height_two = check_png(one).shape[0], check_png(two).shape[0]
    assert height_two == pytest.approx(2 * height_one, rel=0.05)


# -- health, retries ------------------------------------------------------------------------------


def test_no_server_fails_fast_with_a_clear_message():
    port = free_port()  # nobody listens there
    started = time.monotonic()
    done = run_cli("--url", f"127.0.0.1:{port}", "--retries", "1", str(SAMPLE), timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert (f"no FV2ES server answers at 127.0.0.1:{port} (connection refused): "
            "start one with `make serve` or pass --url") in done.stderr
    assert done.stdout == ""
    assert elapsed < 20, elapsed


def test_retries_back_off_on_unavailable_only(client, server):
    url = f"127.0.0.1:{free_port()}"
    timings = {}
    for retries in (0, 2):
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError) as info:
            Fv2esClient(url, retries=retries).connect()
        timings[retries] = time.monotonic() - started
        assert info.value.code == "UNAVAILABLE" and "connection refused" in info.value.message()
    assert timings[0] < 1.0 and timings[2] >= 1.5, timings  # waits 0.5 s, then 1 s
    # INVALID_ARGUMENT is the input's fault: sent once, not retried.
    success, fail = ensemble_counts(server.grpc_url)
    with pytest.raises(Fv2esError) as info:
        Fv2esClient(server.grpc_url, retries=3, timeout_s=VIDEO_TIMEOUT_S).analyze(b"not a video at all")
    assert info.value.code == "INVALID_ARGUMENT" and "INVALID_ARGUMENT" in info.value.status()
    assert ensemble_counts(server.grpc_url) == (success, fail + 1)


def test_model_not_found_or_not_ready_is_a_different_message(server):
    done = run_cli("--url", server.grpc_url, "--model", "no_such_model", str(SAMPLE), timeout=60)
    assert done.returncode == 2
    assert f"the server at {server.grpc_url} does not serve model 'no_such_model'" in done.stderr
    assert "no FV2ES server answers" not in done.stderr
    done = run_cli("--url", server.grpc_url, "--model-version", "99", str(SAMPLE), timeout=60)
    assert done.returncode == 2
    assert "model 'fv2es version 99' is not ready" in done.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run_cli("--concurrency", "0", str(SAMPLE), timeout=60).returncode == 2
    done = run_cli("--ssl", "--root-certs", str(tmp_path / "none.pem"), str(SAMPLE), timeout=60)
    assert done.returncode == 2 and "--root-certs: no such file" in done.stderr


def test_python_api_paths_bytes_and_the_default_limit(server, sample_bytes, reference):
    with Fv2esClient(server.grpc_url, timeout_s=VIDEO_TIMEOUT_S, retries=1) as c:
        limits = c.connect()
        assert limits.from_server and limits.max_input_bytes >= len(sample_bytes)
        by_path = c.analyze(SAMPLE)
        by_bytes = c.analyze(sample_bytes)
    for result in (by_path, by_bytes):
        assert result.emotion == reference.emotion and len(result.segments) == len(reference.segments)
        assert result.scores == pytest.approx(reference.scores, abs=1e-5)
    # A model whose config has no max_input_bytes: the client's configurable default applies.
    fallback = Fv2esClient(server.grpc_url, model="fusion", default_max_input_bytes=1000)
    assert fallback.connect().from_server is False
    with pytest.raises(InputTooLargeError, match="client's default"):
        fallback.check_size(2000)
    fallback.close()


# -- one extra server: small limits, gRPC over TLS -------------------------------------------------


def make_certificate(folder) -> tuple[str, str] | None:
    """A self-signed certificate for 127.0.0.1/localhost, or None without the openssl CLI."""
    if shutil.which("openssl") is None:
        return None
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """One extra server; TLS on its gRPC port when a certificate can be made. Yields (server, CLI TLS args, tls)."""
    folder = tmp_path_factory.mktemp("limited")
    limited_repository(folder / "models", SMALL_LIMIT)
    certificate = make_certificate(folder)
    extra, cli_tls, tls = [], [], {}
    if certificate:
        cert, key = certificate
        extra = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        cli_tls, tls = ["--ssl", "--root-certs", cert], {"ssl": True, "root_certificates": cert}
    with serving(EmbeddedServer(folder / "models", extra_args=extra)) as instance:
        yield instance, cli_tls, tls


@pytest.fixture(scope="module")
def oversize(tmp_path_factory, sample_bytes):
    path = tmp_path_factory.mktemp("big") / "big.mp4"
    path.write_bytes(sample_bytes + bytes(OVERSIZE - len(sample_bytes)))
    return path


@pytest.mark.slow
def test_oversize_file_is_refused_before_sending(limited, oversize):
    server, cli_tls, tls = limited
    before = ensemble_counts(server.grpc_url, **tls)
    done = run_cli("--json", "--url", server.grpc_url, *cli_tls, str(SAMPLE), str(oversize))
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["server"]["max_input_bytes"] == SMALL_LIMIT
    good, big = doc["results"]
    assert good["ok"] and good["segments"], "the sample is under the limit and analysed"
    assert big["error"]["code"] == "INPUT_TOO_LARGE"
    message = big["error"]["message"]
    assert f"{OVERSIZE / 2**20:.2f} MiB" in message and f"{SMALL_LIMIT / 2**20:.2f} MiB" in message
    assert "max_input_bytes" in message and "not sent" in message
    # The server saw the sample only: one more success, no request for the big file.
    success, fail = before
    assert ensemble_counts(server.grpc_url, **tls) == (success + 1, fail)
    # Table mode: the same message on stderr, nothing on stdout.
    done = run_cli("--url", server.grpc_url, *cli_tls, str(oversize), timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert f"{oversize}: error [INPUT_TOO_LARGE]: {oversize} is " in done.stderr


@pytest.mark.slow
def test_server_refuses_oversize_input_with_invalid_argument(limited, oversize):
    server, _, tls = limited
    with Fv2esClient(server.grpc_url, timeout_s=VIDEO_TIMEOUT_S, **tls) as c:
        limits = c.connect()
        assert limits.max_input_bytes == SMALL_LIMIT and limits.channel_bytes == SMALL_LIMIT + MESSAGE_HEADROOM_BYTES
        with pytest.raises(InputTooLargeError):
            c.analyze(oversize.read_bytes())
        # Sent anyway (infer_raw does not check): the channel takes it, demux refuses it.
        with pytest.raises(Fv2esError) as info:
            c.infer_raw(oversize.read_bytes())
    assert info.value.code == "INVALID_ARGUMENT"
    assert f"limit of {SMALL_LIMIT} bytes" in info.value.message()


@pytest.mark.slow
def test_tls(limited):
    server, cli_tls, _ = limited
    if not cli_tls:
        pytest.skip("no openssl CLI to make a certificate: the extra server runs without TLS")
    done = run_cli("--url", server.grpc_url, "--retries", "0", str(SAMPLE), timeout=60)  # plain gRPC to a TLS port
    assert done.returncode == 2
    assert f"no FV2ES server answers at {server.grpc_url} (the connection was closed" in done.stderr
    assert "pass --ssl" in done.stderr
    with pytest.raises(ServerUnavailableError, match="TLS handshake failed"):  # TLS, but a certificate it does not trust
        Fv2esClient(server.grpc_url, ssl=True, retries=0).connect()
    with Fv2esClient(server.grpc_url, root_certificates=cli_tls[-1]) as c:  # the certificate implies TLS
        assert c.connect().max_input_bytes == SMALL_LIMIT
