"""Shared fixtures: the real tritonservers of a test session (the main one, one with small input limits,
a spare one for the tests that break things), a gRPC client, and real media."""

from __future__ import annotations

import signal
from contextlib import contextmanager

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

from fv2es import config
from fv2es.media import demux
from fv2es.tritonserver import REPOSITORY, EmbeddedServer, limited_repository
from fv2es_build import synth
from fv2es_client import Fv2esClient

SAMPLE = ROOT / "samples" / "talking_head.mp4"


# A test server's teardown: SIGTERM, then SIGKILL to its process group at once (a graceful tritonserver
# exit unloads every model, about 7 s on 2 cores). stop() then ends the stubs and removes their shared
# memory either way; the graceful stop itself is test_hardening's to check.
TEARDOWN_GRACE_S = 0.0


def pytest_configure(config):
    """SIGTERM (a CI job's timeout, `kill`) ends the run as Ctrl-C does: the fixtures' teardown stops
    the tritonservers and removes their /dev/shm files, which Python's default SIGTERM would leave."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@contextmanager
def serving(instance: EmbeddedServer, timeout_s: float = 300):
    """`instance` started, and stopped quickly after (TEARDOWN_GRACE_S), whatever happens."""
    try:
        instance.start(timeout_s=timeout_s)
        yield instance
    finally:
        instance.stop(timeout_s=TEARDOWN_GRACE_S)


@pytest.fixture(scope="session")
def server():
    """The real tritonserver binary on the real model repository, on free ports; always stopped."""
    with serving(EmbeddedServer(REPOSITORY)) as instance:
        yield instance


# max_input_bytes of `small_server`'s repository: the sample (78 kB) fits, twice the sample does not.
SMALL_LIMIT = 100_000


@pytest.fixture(scope="session")
def small_server(tmp_path_factory):
    """A second server, on a view of the repository that takes at most SMALL_LIMIT bytes per input:
    the tests of size limits (oversize requests, the web page's upload limit) share it."""
    repository = limited_repository(tmp_path_factory.mktemp("small") / "models", SMALL_LIMIT)
    with serving(EmbeddedServer(repository)) as instance:
        yield instance


@pytest.fixture(scope="session")
def spare_server():
    """A second server on the real repository for the tests that break things (kill stubs, unload models,
    abandon or break streams): whatever they leave behind stays out of the main one. Each such test
    checks that this one survived."""
    with serving(EmbeddedServer(REPOSITORY)) as instance:
        yield instance


@pytest.fixture(scope="session")
def client(server):
    with Fv2esClient(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="session")
def sample_bytes() -> bytes:
    return SAMPLE.read_bytes()


@pytest.fixture(scope="session")
def sample_speech(sample_bytes) -> np.ndarray:
    """The sample's espeak-ng speech, decoded, to build other test videos from."""
    return demux(sample_bytes).audio


def make_video(speech: np.ndarray | None, *, faces: bool = True, video: bool = True, **encode_kwargs) -> bytes:
    """A test clip as long as `speech` (or 4 s): the astronaut face (or a blank frame), speech or none."""
    seconds = len(speech) / config.SAMPLE_RATE if speech is not None else 4.0
    fps, width, height = 25, 320, 240
    frames = None
    if video:
        n = int(seconds * fps)
        frames = synth.talking_head_frames(n, width, height) if faces else (np.full((height, width, 3), 90, np.uint8) for _ in range(n))
    return synth.encode_video(frames=frames, fps=fps, audio=speech, width=width, height=height, **encode_kwargs)
