"""The whole ensemble on real media through a real server over gRPC."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import ROOT, make_video
from fv2es_build.repository import weights_description

from fv2es import config
from fv2es_build import settings
from fv2es.tritonserver import REPOSITORY
from fv2es.segments import aggregate_scores


def check_result_consistency(result, duration: float):
    """Invariants every result satisfies: a contiguous timeline, probabilities, consistent aggregation."""
    assert result.labels == list(config.LABELS)
    assert result.segments, "a video always has at least one segment"
    assert result.segments[0].start == pytest.approx(0.0, abs=1e-3)
    assert result.segments[-1].end == pytest.approx(duration, abs=0.1)
    for previous, current in zip(result.segments, result.segments[1:]):
        assert current.start == pytest.approx(previous.end, abs=1e-4)
    for segment in result.segments:
        assert segment.end > segment.start
        scores = np.array([segment.scores[label] for label in config.LABELS])
        assert np.all(scores >= 0) and np.all(scores <= 1)
        assert scores.sum() == pytest.approx(1.0, abs=1e-4)
        assert segment.has_speech == bool(segment.transcript.strip())
    seg_scores = np.array([[s.scores[label] for label in config.LABELS] for s in result.segments])
    times = np.array([[s.start, s.end] for s in result.segments])
    video_scores = np.array([result.scores[label] for label in config.LABELS])
    np.testing.assert_allclose(video_scores, aggregate_scores(seg_scores, times), atol=1e-5)
    assert result.emotion == config.LABELS[int(np.argmax(video_scores))]


def test_talking_video_end_to_end(client, sample_bytes):
    result = client.analyze(sample_bytes)
    check_result_consistency(result, duration=8.51)
    transcript = " ".join(s.transcript for s in result.segments).lower()
    assert "happy" in transcript and "see you again" in transcript
    speech = [s for s in result.segments if s.has_speech]
    assert len(speech) == 2, "the sample speaks two sentences"
    assert all(s.has_face for s in speech), "the face is visible throughout"
    # Speech segments follow the audio: the first sentence starts after the 1 s of silence.
    assert 0.5 <= speech[0].start <= 1.3
    # The answer names the exact trained weights, as the exported repository records them.
    provenance = json.loads((REPOSITORY / "fusion" / "1" / "provenance.json").read_text())
    digests = [hashlib.sha256((ROOT / w["file"]).read_bytes()).hexdigest() for w in provenance["weights"]]
    assert digests == [w["sha256"] for w in provenance["weights"]], "the exported models are stale: make build"
    assert result.model_info["weights"] == weights_description(ROOT / settings.WEIGHTS_DIR)


@pytest.mark.parametrize(
    "container_format, video_codec, audio_codec",
    [("matroska", "libx264", "aac"), ("webm", "libvpx", "libopus"), ("avi", "mpeg4", "libmp3lame"), ("mov", "libx264", "aac"),
     ("mpegts", "libx264", "aac")],  # MPEG-TS timestamps start at 1.4 s, not 0
)
def test_containers_and_codecs(client, sample_speech, container_format, video_codec, audio_codec):
    data = make_video(sample_speech, container_format=container_format, video_codec=video_codec, audio_codec=audio_codec)
    result = client.analyze(data)
    check_result_consistency(result, duration=len(sample_speech) / config.SAMPLE_RATE)
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()
    assert any(s.has_face for s in result.segments)


def test_long_video_is_cut_into_windows(client, sample_speech):
    # Three times the sample's speech, 25 s: more segments, all on one timeline.
    speech = np.concatenate([sample_speech] * 3)
    result = client.analyze(make_video(speech))
    check_result_consistency(result, duration=len(speech) / config.SAMPLE_RATE)
    assert " ".join(s.transcript for s in result.segments).lower().count("happy") == 3
    assert len(result.segments) >= 6
    assert max(s.end - s.start for s in result.segments) <= config.MAX_SEGMENT_S + 1e-3
