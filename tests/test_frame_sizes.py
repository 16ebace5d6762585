"""Frame sizes people send: tiny (down to 1 px a side), odd, extreme aspect ratios, 8K and over.

Each gets a result with honest flags (a frame too small for the face detector has no face) or a
clear INVALID_ARGUMENT naming the limit (config.MAX_FRAME_PIXELS), and the server stays healthy.
libx264 (yuv420p) needs even sizes: the odd ones are VP9 in WebM, which stores any size.
The clips are 2 s of picture alone (no sound: no ASR to wait for).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from test_bad_inputs import assert_invalid

from fv2es import config
from fv2es.errors import InputError
from fv2es.faces import make_face_detector
from fv2es.media import decode_audio, sample_frames
from fv2es_build import synth

SECONDS = 2.0
VP9 = dict(video_codec="libvpx-vp9", container_format="webm")

# name -> (width, height, encode_video arguments, whether the face is found)
SIZES = {
    "2x2": (2, 2, {}, False),
    "8x8": (8, 8, {}, False),
    "16x16": (16, 16, {}, False),  # was INTERNAL: MTCNN's image pyramid had no level
    "20x20": (20, 20, {}, False),  # the smallest frame MTCNN searches (MTCNN_MIN_FACE)
    "17x31_odd": (17, 31, VP9, False),
    "1x31_one_px_wide": (1, 31, VP9, False),
    "31x1_one_px_high": (31, 1, VP9, False),
    "321x241_odd": (321, 241, VP9, True),
    "4000x16_wide": (4000, 16, {}, False),  # sampled frames 640 x 2
    "16x4000_tall": (16, 4000, {}, False),
}


@functools.cache
def clip(width: int, height: int, fps: int = 2, **encode_kwargs) -> bytes:
    """SECONDS of the talking head (a flat grey picture when a side is 1 px) at `fps`, no sound."""
    n = int(SECONDS * fps)
    if min(width, height) > 1:
        frames = synth.talking_head_frames(n, width, height)
    else:
        frames = (np.full((height, width, 3), 96, np.uint8) for _ in range(n))
    return synth.encode_video(frames=frames, fps=fps, width=width, height=height, **encode_kwargs)


def assert_result(client, server, data: bytes, has_face: bool):
    result = client.analyze(data)
    assert result.segments, "no segment"
    assert result.segments[-1].end == pytest.approx(SECONDS, abs=0.1)
    assert not any(s.has_speech for s in result.segments)
    assert any(s.has_face for s in result.segments) == has_face, [s.has_face for s in result.segments]
    assert server.ready()


# --- The detectors on frames too small for them (no server) ---------------------------------------


@pytest.fixture(scope="module", params=["mtcnn", "haar"])
def detector(request):
    return make_face_detector(request.param, "cpu")


@pytest.mark.parametrize("shape", [(2, 2), (16, 16), (19, 200), (31, 17), (1, 31), (31, 1), (1, 640), (2, 2000)])
def test_a_frame_too_small_for_the_detector_has_no_face(detector, shape):
    grey = np.full(shape, 96, np.uint8)
    assert detector.all_faces([grey, grey]) == [[], []]
    assert detector.largest_faces([grey]) == [None]
    assert detector.largest_face(grey) is None
    assert detector.largest_face(grey, near=(0, 0, shape[1], shape[0])) is None


def test_frame_pixel_limit_is_checked_before_decoding(monkeypatch):
    data = clip(64, 48)
    monkeypatch.setattr(config, "MAX_FRAME_PIXELS", 64 * 48 - 1)
    for decode in (decode_audio, lambda d: list(sample_frames(d))):
        with pytest.raises(InputError, match=f"64x48 .*limit of {64 * 48 - 1} pixels a frame"):
            decode(data)


def test_extreme_aspect_ratio_is_scaled_to_the_frame_width():
    assert {grey.shape for _, grey in sample_frames(clip(4000, 16))} == {(2, config.FRAME_MAX_WIDTH)}


# --- The server ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
def test_frame_size_gives_a_result_with_honest_flags(client, server, name):
    width, height, encode_kwargs, has_face = SIZES[name]
    assert_result(client, server, clip(width, height, **encode_kwargs), has_face)


def test_8k_video_is_scaled_down_and_its_face_found(client, server):
    assert_result(client, server, clip(7680, 4320, fps=1), True)


def test_frames_over_the_pixel_limit_are_invalid_argument(client, server, sample_bytes):
    width, height = 8448, 4352  # 36.8 M pixels: just over 8K (config.MAX_FRAME_PIXELS)
    assert width * height > config.MAX_FRAME_PIXELS
    data = synth.encode_video(frames=[np.full((height, width, 3), 96, np.uint8)], fps=1, width=width, height=height,
                              audio=np.zeros(int(SECONDS * config.SAMPLE_RATE), np.float32))
    message = assert_invalid(client, data, f"limit of {config.MAX_FRAME_PIXELS} pixels a frame")
    assert f"{width}x{height}" in message
    # The server answers the next good request correctly.
    assert server.ready()
    result = client.analyze(sample_bytes)
    assert any(s.has_face for s in result.segments)
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()
