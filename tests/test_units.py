"""Invariants of the preprocessing functions that server and training share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fv2es import config
from fv2es_build import settings
from fv2es.audio import mel_chunks, mel_transform, segment_mel_chunks
from fv2es.faces import crop_face
from fv2es.segments import Segment, segment_timeline
from fv2es.segments import aggregate_scores


def test_segment_timeline_covers_the_video():
    speech = [Segment(1.0, 3.2, "hello there"), Segment(3.4, 5.0, "fine"), Segment(5.2, 40.0, "a very long one")]
    segments = segment_timeline(speech, 50.0)
    assert segments[0].start == 0 and segments[-1].end == 50.0
    for a, b in zip(segments, segments[1:]):
        assert a.end == pytest.approx(b.start)
    assert all(config.MIN_SEGMENT_S <= s.duration <= config.MAX_SEGMENT_S + 1e-6 for s in segments)
    assert [s.text for s in segments if s.has_speech][:2] == ["hello there", "fine"]
    assert sum(s.has_speech for s in segments) >= 5  # the 35 s sentence was split


def test_segment_timeline_without_speech_uses_fixed_windows():
    segments = segment_timeline([], 10.0)
    assert len(segments) == 3 and not any(s.has_speech for s in segments)
    assert segment_timeline([], 0.2) == [Segment(0.0, 0.2)]


def test_segment_timeline_ignores_speech_outside_the_video():
    segments = segment_timeline([Segment(-1.0, 0.8, "early"), Segment(9.5, 12.0, "late")], 10.0)
    assert segments[0].start == 0 and segments[-1].end == 10.0


def test_mel_chunks_shape_and_padding():
    transform = mel_transform()
    one_second = torch.randn(config.SAMPLE_RATE) * 0.1
    chunks = mel_chunks(one_second, transform)
    frames = config.SAMPLE_RATE // config.HOP_LENGTH + 1
    assert chunks.shape == (-(-frames // config.CHUNK_FRAMES), config.N_MELS, config.CHUNK_FRAMES)
    assert torch.isfinite(chunks).all()
    # A segment's chunks equal the chunks of the same clip computed alone (training uses clips).
    audio = torch.randn(3 * config.SAMPLE_RATE) * 0.1
    chunks, owners = segment_mel_chunks(audio, [(0.0, 1.0), (1.0, 3.0)], transform)
    alone = mel_chunks(audio[config.SAMPLE_RATE :], transform)
    torch.testing.assert_close(chunks[owners == 1], alone)


def test_crop_face_is_square_and_handles_edges():
    grey = np.arange(100 * 200, dtype=np.uint8).reshape(100, 200)
    assert crop_face(grey, (180, 80, 40, 40)).shape == (config.FACE_SIZE, config.FACE_SIZE)
    assert crop_face(grey, None).shape == (config.FACE_SIZE, config.FACE_SIZE)


def test_aggregate_is_duration_weighted():
    scores = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(aggregate_scores(scores, np.array([[0, 1], [1, 4]])), [0.25, 0.75])


def test_committed_configs_match_the_builder(tmp_path):
    from fv2es_build.repository import REPOSITORY, ROOT, weights_description, write_configs

    write_configs(weights_description(ROOT / settings.WEIGHTS_DIR), tmp_path)
    for generated in tmp_path.rglob("*"):
        if generated.is_file():
            committed = REPOSITORY / generated.relative_to(tmp_path)
            assert committed.read_text() == generated.read_text(), f"{committed} is stale: run `make build`"


def test_docker_compose_file_is_valid():
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed")
    root = Path(config.__file__).resolve().parents[2]
    subprocess.run(["docker-compose", "-f", str(root / "docker-compose.yml"), "config", "-q"], check=True)
