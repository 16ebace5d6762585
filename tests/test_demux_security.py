"""Demux reads only the in-memory video: no playlist or script format, no file, no URL.

FFmpeg probes any format by default. Before the allow-list, an ffconcat list naming
`samples/talking_head.mp4` (relative to the server's working directory) came back with that
file's analysis, the error told whether a path exists, and a 4.5 KB list naming the file 140 times
cost 30 s of server time. Every payload here must be refused right after probing, with one message
whatever the paths it names, and the server must go on answering.
"""

from __future__ import annotations

import base64
import io
import os
import time

import av
import numpy as np
import pytest
from conftest import SAMPLE
from tritonclient.utils import InferenceServerException

from fv2es import config
from fv2es_build import synth
from fv2es.errors import InputError
from fv2es.media import _OPEN_OPTIONS, demux, sample_frames

# The server inherits the test run's working directory: this path names the sample from there.
RELATIVE = os.path.relpath(SAMPLE)
MISSING = "samples/no_such_video.mp4"
REFUSED = "container format 'concat' is not accepted"


def ffconcat(*paths: str) -> bytes:
    return ("ffconcat version 1.0\n" + "".join(f"file '{p}'\n" for p in paths)).encode()


def data_url() -> str:
    return "data:video/mp4;base64," + base64.b64encode(SAMPLE.read_bytes()[:4096]).decode()


def images(extension: str, count: int) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(extension, synth.face_image()[:, :, ::-1])
    assert ok
    return encoded.tobytes() * count


def raw_h264() -> bytes:
    """An H.264 elementary stream, no container: FFmpeg reads it, the allow-list does not."""
    with av.open(io.BytesIO(SAMPLE.read_bytes())) as container:
        stream = container.streams.video[0]
        out = io.BytesIO()
        with av.open(out, "w", format="h264") as raw:
            raw_stream = raw.add_stream_from_template(stream)
            for packet in container.demux(stream):
                if packet.dts is not None:
                    packet.stream = raw_stream
                    raw.mux(packet)
    return out.getvalue()


# name -> (payload, a fragment of the error). Concat lists name the sample by relative and absolute
# path, through FFmpeg's subfile: and data: protocols, and 140 times over.
PAYLOADS = {
    "concat_relative": (lambda: ffconcat(RELATIVE), REFUSED),
    "concat_absolute": (lambda: ffconcat(str(SAMPLE)), REFUSED),
    "concat_missing": (lambda: ffconcat(MISSING), REFUSED),
    "concat_file_url": (lambda: ffconcat(f"file:{SAMPLE}"), REFUSED),
    "concat_subfile": (lambda: ffconcat(f"subfile,,start,0,end,0,,:{SAMPLE}"), REFUSED),
    "concat_data_url": (lambda: ffconcat(data_url()), REFUSED),
    "concat_140_times": (lambda: ffconcat(*[RELATIVE] * 140), REFUSED),
    "hls_playlist": (
        lambda: f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{RELATIVE}\n#EXT-X-ENDLIST\n".encode(),
        "not a readable video",
    ),
    "png_sequence": (lambda: images(".png", 5), "still image"),
    "jpeg_sequence": (lambda: images(".jpg", 5), "still image"),
    "raw_h264": (lambda: raw_h264(), "container format 'h264' is not accepted"),
}


# --- In process: media.demux ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_demux_refuses_the_payload(name):
    make, fragment = PAYLOADS[name]
    with pytest.raises(InputError, match=fragment):
        demux(make())
    with pytest.raises(InputError, match=fragment):  # face_crop's pass opens the bytes the same way
        next(sample_frames(make(), stop_at_decode_error=True))


def test_error_does_not_tell_whether_a_path_exists():
    messages = set()
    for paths in ([RELATIVE], [str(SAMPLE)], [MISSING], ["/no/such/dir/video.mp4"], [f"file:{SAMPLE}"]):
        with pytest.raises(InputError) as info:
            demux(ffconcat(*paths))
        messages.add(str(info.value))
    assert len(messages) == 1, messages
    assert "concat" in messages.pop()


def test_long_concat_list_is_refused_at_once():
    payload = ffconcat(*[RELATIVE] * 140)
    assert len(payload) < 5000
    start = time.perf_counter()
    with pytest.raises(InputError, match=REFUSED):
        demux(payload)
    assert time.perf_counter() - start < 0.1


def test_no_nested_open_even_for_a_format_that_would_open_files():
    # Defence in depth: were a playlist format ever allowed, the empty protocol whitelist would still
    # refuse every file and URL it names, with the same error whether the file exists or not.
    options = {**_OPEN_OPTIONS, "format_whitelist": "concat," + _OPEN_OPTIONS["format_whitelist"]}
    errors = set()
    for path in (RELATIVE, MISSING):
        with pytest.raises(av.error.FFmpegError) as info:
            with av.open(io.BytesIO(ffconcat(path)), container_options=options) as container:
                list(container.demux())
        errors.add((type(info.value), info.value.errno))
    assert len(errors) == 1, errors


def test_every_allowed_format_is_an_ffmpeg_demuxer():
    for name in config.CONTAINER_FORMATS:
        assert av.ContainerFormat(name, "r").name == name
    assert not {"concat", "hls", "dash", "image2", "tty"} & {n for e in config.CONTAINER_FORMATS for n in e.split(",")}


# --- Through the server ---------------------------------------------------------------------------


def analyze_invalid(client, data: bytes) -> str:
    with pytest.raises(InferenceServerException) as info:
        client.analyze(data)
    assert "INVALID_ARGUMENT" in str(info.value.status()), info.value
    return info.value.message()


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_server_refuses_the_payload_and_goes_on(client, sample_bytes, name):
    make, fragment = PAYLOADS[name]
    message = analyze_invalid(client, make())
    assert fragment.lower() in message.lower(), message
    assert str(SAMPLE.parent) not in message and RELATIVE not in message  # no path is echoed back
    result = client.analyze(sample_bytes)  # the next good request is answered correctly
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()
    assert sum(s.has_face for s in result.segments) >= len(result.segments) - 1


def test_server_error_is_the_same_for_existing_and_missing_paths(client):
    messages = {analyze_invalid(client, ffconcat(path)) for path in (RELATIVE, str(SAMPLE), MISSING)}
    assert len(messages) == 1, messages


def test_server_refuses_the_long_list_fast(client):
    payload = ffconcat(*[RELATIVE] * 140)
    analyze_invalid(client, payload)  # warm: the first request of a session may load lazily
    start = time.perf_counter()
    message = analyze_invalid(client, payload)
    assert time.perf_counter() - start < 1.0
    assert REFUSED in message


def test_video_formats_still_open(sample_speech):
    # The allow-list must not refuse what users send: a few containers, checked end to end in
    # test_media_formats.py; here only that each opens.
    for container_format, video_codec, audio_codec in [
        ("mp4", "libx264", "aac"), ("mov", "libx264", "aac"), ("matroska", "libx264", "aac"),
        ("webm", "libvpx", "libopus"), ("avi", "mpeg4", "libmp3lame"), ("flv", "libx264", "aac"),
        ("mpegts", "libx264", "aac"), ("mpeg", "mpeg2video", "mp2"), ("asf", "wmv2", "wmav2"),
    ]:
        frames = synth.talking_head_frames(25, 320, 240)
        data = synth.encode_video(frames=frames, audio=sample_speech[: config.SAMPLE_RATE], container_format=container_format,
                                  video_codec=video_codec, audio_codec=audio_codec)
        media = demux(data)
        assert media.frames.shape[0] >= 2 and media.audio.size > 0.9 * config.SAMPLE_RATE, container_format
    for container_format, audio_codec in [("wav", "pcm_s16le"), ("mp3", "libmp3lame"), ("flac", "flac"),
                                          ("adts", "aac"), ("ogg", "libopus")]:
        data = synth.encode_video(audio=sample_speech[: config.SAMPLE_RATE], container_format=container_format, audio_codec=audio_codec)
        assert demux(data).audio.size > 0.9 * config.SAMPLE_RATE, container_format
    assert np.isfinite(demux(SAMPLE.read_bytes()).audio).all()
