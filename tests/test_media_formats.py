"""The containers, codecs, sample rates, channel layouts and rotations that people send.

Every clip is built here with PyAV (synth.encode_video): the talking head, with a 440 Hz tone for
the unit checks of demux (pitch, duration, frame times) or the sample's speech for the server's.
Phones store the sensor's landscape picture and a display matrix: `display_rotation` clips store
their frames turned, so that only applying the matrix makes the face upright.
"""

from __future__ import annotations

import functools
import io

import av
import numpy as np
import pytest

from fv2es import config
from fv2es_build import synth
from fv2es.faces import FaceDetector
from fv2es.media import decode_audio, demux, sample_frames

SIZE = (320, 240)  # the picture as displayed: width, height
FPS = 25

# name -> encode_video arguments, with `rate` (Hz) and `channels` (1, 2 or 6) of the sound track.
FORMATS = {
    "mp4": dict(container_format="mp4", video_codec="libx264", audio_codec="aac", rate=44_100, channels=2),
    "mov_rotated": dict(container_format="mov", video_codec="libx264", audio_codec="aac", rate=48_000, channels=2,
                        display_rotation=90),
    "mp4_rotated": dict(container_format="mp4", video_codec="libx264", audio_codec="aac", rate=48_000, channels=1,
                        display_rotation=-90),  # as an iPhone held upright records
    "mp4_upside_down": dict(container_format="mp4", video_codec="libx264", audio_codec="aac", rate=44_100, channels=2,
                            display_rotation=180),
    "webm_vp8": dict(container_format="webm", video_codec="libvpx", audio_codec="libopus", rate=48_000, channels=2),
    "webm_vp9": dict(container_format="webm", video_codec="libvpx-vp9", audio_codec="libopus", rate=48_000, channels=6),
    "mkv": dict(container_format="matroska", video_codec="libx264", audio_codec="aac", rate=48_000, channels=6),
    "avi": dict(container_format="avi", video_codec="mpeg4", audio_codec="libmp3lame", rate=44_100, channels=2),
    "flv": dict(container_format="flv", video_codec="libx264", audio_codec="aac", rate=44_100, channels=2),
    "mpegts": dict(container_format="mpegts", video_codec="libx264", audio_codec="aac", rate=48_000, channels=2),
    "mpeg_ps": dict(container_format="mpeg", video_codec="mpeg2video", audio_codec="mp2", rate=48_000, channels=2),
    "wmv": dict(container_format="asf", video_codec="wmv2", audio_codec="wmav2", rate=44_100, channels=2),
    "mp4_vfr": dict(container_format="mp4", video_codec="libx264", audio_codec="aac", rate=48_000, channels=2, vfr=True),
}
ROTATED = [name for name, spec in FORMATS.items() if spec.get("display_rotation")]


def vfr_times(seconds: float) -> np.ndarray:
    """Frame times with gaps from 20 to 330 ms, as a phone recording in low light writes them."""
    gaps = np.random.default_rng(1).choice([0.02, 0.04, 0.1, 0.25, 0.33], size=int(seconds / 0.02) + 1)
    times = np.round(np.concatenate([[0.0], np.cumsum(gaps)]), 3)
    end = seconds - 2 / FPS  # the last two frames at the normal rate: the clip lasts `seconds`
    return np.concatenate([times[times < end], [end, seconds - 1 / FPS]])


def spread(mono: np.ndarray, channels: int) -> np.ndarray:
    """Mono -> the sound track: stereo gets it in both channels, 5.1 in the centre only (dialogue)."""
    if channels == 1:
        return mono
    out = np.zeros((channels, len(mono)), np.float32)
    out[[0, 1] if channels == 2 else [2]] = mono
    return out


def encode(name: str, sound: np.ndarray, sound_rate: int) -> tuple[bytes, np.ndarray]:
    """The clip `name` with `sound` (mono at `sound_rate`) as long as the sound; and its frame times."""
    spec = dict(FORMATS[name])
    rate, channels, vfr = spec.pop("rate"), spec.pop("channels"), spec.pop("vfr", False)
    seconds = len(sound) / sound_rate
    times = vfr_times(seconds) if vfr else np.arange(int(seconds * FPS)) / FPS
    data = synth.encode_video(
        frames=synth.talking_head_frames(len(times), *SIZE), fps=FPS, width=SIZE[0], height=SIZE[1],
        audio=spread(sound, channels), audio_rate=sound_rate, stream_rate=rate,
        frame_times=times if vfr else None, **spec,
    )
    return data, times


def tone(seconds: float, rate: int, hz: float = 440.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


@functools.cache
def tone_clip(name: str) -> tuple[bytes, np.ndarray]:
    return encode(name, tone(3.0, FORMATS[name]["rate"]), FORMATS[name]["rate"])


def dominant_hz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum)) * config.SAMPLE_RATE / len(audio)


def faces_found(frames) -> int:
    detector = FaceDetector()
    return sum(detector.largest_face(grey) is not None for grey in frames)


# --- demux, in process ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FORMATS))
def test_audio_is_16khz_mono_with_the_right_length_and_pitch(name):
    data, _ = tone_clip(name)
    audio, duration = decode_audio(data)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # 3 s of sound; codecs add up to ~50 ms (encoder priming, the last frame's padding).
    assert 2.98 < len(audio) / config.SAMPLE_RATE < 3.08, len(audio)
    assert 2.98 < duration < 3.08, duration
    body = audio[config.SAMPLE_RATE // 10 : -config.SAMPLE_RATE // 10]
    assert dominant_hz(body) == pytest.approx(440.0, abs=2.0)
    assert np.sqrt(np.mean(body**2)) > 0.15  # the downmix keeps the tone (0.21 RMS in one channel)


@pytest.mark.parametrize("name", list(FORMATS))
def test_frames_are_upright_and_sampled_every_interval(name):
    data, times = tone_clip(name)
    sampled = list(sample_frames(data))
    got = np.array([t for t, _ in sampled])
    frames = [grey for _, grey in sampled]
    assert all(grey.shape == (SIZE[1], SIZE[0]) for grey in frames), frames[0].shape  # displayed orientation
    # One frame per 0.5 s interval of the 3 s (AVI's first frame is a frame late: a 7th at 3.0 s),
    # each within a few frames of the interval's start (variable rate: see the test below).
    intervals = np.floor(got / config.FRAME_INTERVAL_S + 1e-6)
    assert list(intervals) == list(range(len(got))) and 6 <= len(got) <= 7 and got[-1] <= 3.01, got
    if not FORMATS[name].get("vfr"):
        assert np.all(got - intervals * config.FRAME_INTERVAL_S < 0.15), got
    assert faces_found(frames) >= len(frames) - 1


def test_variable_frame_rate_frames_are_sampled_at_their_times(monkeypatch):
    # With every frame decoded, the sampled frames are exactly the first at or after each multiple
    # of 0.5 s (skipping unreferenced frames may take a later one: test_stages.py covers it).
    data, times = tone_clip("mp4_vfr")
    expected, next_t = [], 0.0
    for t in times:
        if t + 1e-6 >= next_t:
            expected.append(t)
            next_t = (np.floor(t / config.FRAME_INTERVAL_S + 1e-6) + 1) * config.FRAME_INTERVAL_S
    monkeypatch.setattr(config, "FRAME_SKIP_NONREF", False)
    got = [t for t, _ in sample_frames(data)]
    np.testing.assert_allclose(got, expected, atol=1e-3)
    monkeypatch.setattr(config, "FRAME_SKIP_NONREF", True)
    skipping = [t for t, _ in sample_frames(data)]
    assert len(skipping) == len(expected) and set(np.round(skipping, 3)) <= set(np.round(times, 3))


@pytest.mark.parametrize("name", ROTATED)
def test_rotation_is_applied(name):
    data, _ = tone_clip(name)
    upright = [grey for _, grey in sample_frames(tone_clip("mp4")[0])]
    turned = [grey for _, grey in sample_frames(data)]
    assert len(turned) == len(upright)
    for a, b in zip(turned, upright):  # the same picture as the unrotated clip, up to the codec's loss
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 12
    # Without the display matrix the stored frames show the face on its side: no face is found.
    with av.open(io.BytesIO(data)) as container:
        stored = [f.to_ndarray(format="gray") for i, f in enumerate(container.decode(video=0)) if i % 12 == 0]
    assert faces_found(stored) == 0
    assert faces_found(turned) >= len(turned) - 1


def test_width_limit_applies_to_the_picture_as_displayed():
    # A portrait phone clip: stored 320 x 240 landscape, displayed 240 x 320 portrait.
    portrait = synth.encode_video(frames=synth.talking_head_frames(25, 240, 320), width=240, height=320, display_rotation=-90)
    _, grey = next(iter(sample_frames(portrait, max_width=120)))
    assert grey.shape == (160, 120)
    _, grey = next(iter(sample_frames(tone_clip("mov_rotated")[0], max_width=160)))
    assert grey.shape == (120, 160)


@pytest.mark.parametrize("container_format", ["mp4", "matroska", "mpegts", "webm"])
def test_sound_that_starts_late_stays_in_sync(container_format):
    # A sound track starting 1 s after the picture (a phone's empty edit, a cut stream) must not be
    # moved to 0: the speech would be matched with the wrong faces.
    rate = 48_000
    sound = np.concatenate([tone(1.0, rate), np.zeros(rate, np.float32)])
    data = synth.encode_video(
        frames=synth.talking_head_frames(3 * FPS, *SIZE), audio=sound, audio_rate=rate, stream_rate=rate, audio_delay_s=1.0,
        container_format=container_format, audio_codec="libopus" if container_format == "webm" else "aac",
        video_codec="libvpx" if container_format == "webm" else "libx264",
    )
    audio, duration = decode_audio(data)
    loud = np.flatnonzero(np.abs(audio) > 0.1) / config.SAMPLE_RATE
    assert loud[0] == pytest.approx(1.0, abs=0.03) and loud[-1] == pytest.approx(2.0, abs=0.05)
    assert duration == pytest.approx(3.0, abs=0.05)


# --- Through the server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_48k(sample_speech) -> np.ndarray:
    """The sample's speech at 48 kHz (encode_video resamples it to each clip's own rate)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=48_000)
    frame = av.AudioFrame.from_ndarray(sample_speech[None, :], format="flt", layout="mono")
    frame.sample_rate = config.SAMPLE_RATE
    parts = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame)]
    parts += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(parts)


@pytest.mark.parametrize("name", list(FORMATS))
def test_server_analyses_the_format(client, speech_48k, name):
    data, _ = encode(name, speech_48k, 48_000)
    result = client.analyze(data)
    seconds = len(speech_48k) / 48_000
    assert result.segments[-1].end == pytest.approx(seconds, abs=0.1)
    assert sum(s.has_face for s in result.segments) >= len(result.segments) - 1, [s.has_face for s in result.segments]
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()
