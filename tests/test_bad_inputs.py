"""Every bad input gets a valid flagged result or a clear INVALID_ARG, and the server stays healthy."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import make_video
from tritonclient.utils import InferenceServerException

from fv2es import config
from fv2es_build import synth
from fv2es.checks import Limits
from fv2es.errors import InputError
from fv2es.media import demux


def image_png() -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", synth.face_image()[:, :, ::-1])
    assert ok
    return encoded.tobytes()


def wav_bytes(speech: np.ndarray) -> bytes:
    return synth.encode_video(frames=None, audio=speech, container_format="wav", audio_codec="pcm_s16le")


BROKEN = {
    "empty": (lambda sample: b"", "empty"),
    "random": (lambda sample: np.random.default_rng(0).bytes(50_000), "not a readable video"),
    "text": (lambda sample: b"This is a text file, not a video.\n" * 200, "not a readable video"),
    "image": (lambda sample: image_png(), "still image"),
    "truncated_header": (lambda sample: sample[:2000], ""),
}


def assert_invalid(client, data: bytes, fragment: str):
    with pytest.raises(InferenceServerException) as info:
        client.analyze(data)
    assert "INVALID_ARGUMENT" in str(info.value.status()), info.value
    assert fragment.lower() in info.value.message().lower(), info.value.message()
    return info.value.message()


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_input_is_invalid_argument(client, sample_bytes, name):
    make, fragment = BROKEN[name]
    assert_invalid(client, make(sample_bytes), fragment)
    # The server answers the next good request correctly.
    result = client.analyze(sample_bytes)
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()


def test_truncated_file_gives_a_result_for_what_is_there_or_an_error(client, sample_speech):
    # A file cut in half: with the index at the front (faststart) the first half decodes.
    data = make_video(np.concatenate([sample_speech] * 2), container_format="matroska")
    half = data[: len(data) // 2]
    try:
        result = client.analyze(half)
    except InferenceServerException as exc:
        assert "INVALID_ARGUMENT" in str(exc.status()) and "corrupt" in exc.message()
    else:
        assert 0 < result.segments[-1].end < len(sample_speech) * 2 / config.SAMPLE_RATE


def test_audio_only(client, sample_speech):
    result = client.analyze(wav_bytes(sample_speech))
    assert not any(s.has_face for s in result.segments)
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()


def test_video_only(client):
    result = client.analyze(make_video(None))
    assert not any(s.has_speech for s in result.segments)
    assert all(s.transcript == "" for s in result.segments)
    assert any(s.has_face for s in result.segments)
    assert result.segments[-1].end == pytest.approx(4.0, abs=0.1)


def test_silence(client):
    result = client.analyze(make_video(np.zeros(5 * config.SAMPLE_RATE, np.float32)))
    assert not any(s.has_speech for s in result.segments)
    assert any(s.has_face for s in result.segments)


def test_video_without_faces(client, sample_speech):
    result = client.analyze(make_video(sample_speech, faces=False))
    assert not any(s.has_face for s in result.segments)
    assert any(s.has_speech for s in result.segments)


def test_limits_give_clear_errors(sample_bytes):
    with pytest.raises(InputError, match="over the server's limit of 1000 bytes"):
        demux(sample_bytes, Limits(max_input_bytes=1000))
    with pytest.raises(InputError, match="over the server's limit of 5 s"):
        demux(sample_bytes, Limits(max_duration_s=5))
