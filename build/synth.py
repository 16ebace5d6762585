"""Generated media for the demo, the tests and the benchmarks.

Everything is public domain or synthetic: the face is `skimage.data.astronaut()` (NASA, public
domain), the voice is espeak-ng. Files are encoded in memory with PyAV.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from fv2es import config

SAMPLE_SENTENCES = (
    "I am so happy to see you again today.",
    "This is the best news I have heard all year.",
)


def speak(text: str, *, rate: int = config.SAMPLE_RATE, words_per_minute: int = 150) -> np.ndarray:
    """Speech for `text` from espeak-ng, as float32 mono at `rate` Hz."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package 'espeak-ng')")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-s", str(words_per_minute), "-w", str(wav), text], check=True)
        with av.open(str(wav)) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
            parts += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


def face_image() -> np.ndarray:
    """The astronaut portrait (RGB uint8, 512 x 512)."""
    from skimage import data

    return data.astronaut()


def talking_head_frames(n_frames: int, width: int, height: int, face: np.ndarray | None = None):
    """Yields RGB frames: the face on a grey background, gently moving so the video is not static."""
    import cv2

    face = face_image() if face is None else face
    side = int(min(width, height) * 0.8)
    face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    background = np.full((height, width, 3), 96, np.uint8)
    for i in range(n_frames):
        dx = int(10 * np.sin(i / 15))
        x0 = (width - side) // 2 + dx
        y0 = (height - side) // 2
        frame = background.copy()
        frame[y0 : y0 + side, x0 : x0 + side] = face
        yield frame


_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


def encode_video(
    *,
    frames=None,
    fps: int = 25,
    audio: np.ndarray | None = None,
    audio_rate: int = config.SAMPLE_RATE,
    container_format: str = "mp4",
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    width: int = 320,
    height: int = 240,
    stream_rate: int | None = None,
    display_rotation: int = 0,
    frame_times=None,
    audio_delay_s: float = 0.0,
) -> bytes:
    """Encodes RGB frames and/or float audio into a container, returned as bytes.

    `audio` is [n] (mono) or [channels, n] (2: stereo, 6: 5.1) at `audio_rate`; the stream is
    encoded at `stream_rate` (default: `audio_rate`, 48 kHz for Opus). With `display_rotation`
    (counter-clockwise degrees, a multiple of 90) the frames are stored turned the other way and
    the container's display matrix says how to turn them back upright, as phones record; `width`
    and `height` stay those of the upright picture. `frame_times` (seconds, one per frame) makes
    the frame rate variable. `audio_delay_s` starts the sound that much after the picture (its
    timestamps, as a late-starting audio track has; the samples are unchanged).
    """
    turns = round(display_rotation / 90) % 4
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as out:
        vstream = astream = None
        if frames is not None:
            vstream = out.add_stream(video_codec, rate=fps)
            vstream.width, vstream.height = (height, width) if turns % 2 else (width, height)
            vstream.pix_fmt = "yuv420p"
            if video_codec == "libx264":
                vstream.options = {"preset": "veryfast", "crf": "28"}
            if frame_times is not None:
                vstream.codec_context.time_base = Fraction(1, 1000)
            if turns:
                vstream.set_display_rotation(90 * turns)
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, np.float32))
            rate = stream_rate or (48_000 if audio_codec in ("libopus", "opus") else audio_rate)
            astream = out.add_stream(audio_codec, rate=rate)
            astream.layout = _LAYOUTS[audio.shape[0]]
            if audio_codec == "wmav2":
                astream.bit_rate = 128_000  # the WMA encoder has no default bit rate
        if vstream is not None:
            for i, frame in enumerate(frames):
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(frame, -turns)), format="rgb24")
                if frame_times is not None:
                    picture.pts, picture.time_base = round(frame_times[i] * 1000), Fraction(1, 1000)
                for packet in vstream.encode(picture):
                    out.mux(packet)
            for packet in vstream.encode():
                out.mux(packet)
        if astream is not None:
            _encode_audio(out, astream, audio, audio_rate, round(audio_delay_s * audio_rate))
    return buffer.getvalue()


def _encode_audio(out, stream, audio: np.ndarray, rate: int, delay: int = 0) -> None:
    layout = _LAYOUTS[audio.shape[0]]
    resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=stream.rate)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).T.copy()  # interleaved: [n, channels]
    step = 1024
    for start in range(0, len(pcm), step):
        frame = av.AudioFrame.from_ndarray(pcm[start : start + step].reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = rate
        frame.pts = delay + start
        frame.time_base = Fraction(1, rate)
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                out.mux(packet)
    for resampled in resampler.resample(None):
        for packet in stream.encode(resampled):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def talking_head_video(
    duration_s: float | None = None,
    *,
    sentences=SAMPLE_SENTENCES,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    pause_s: float = 1.0,
    **encode_kwargs,
) -> bytes:
    """A talking-head clip: the astronaut's face, espeak-ng reading `sentences` with pauses.

    With `duration_s`, the speech is repeated (with pauses) to fill that length.
    """
    pause = np.zeros(int(pause_s * config.SAMPLE_RATE), np.float32)
    speech = np.concatenate([np.concatenate([speak(s), pause]) for s in sentences])
    speech = np.concatenate([pause, speech])
    if duration_s is not None:
        n = int(duration_s * config.SAMPLE_RATE)
        speech = np.resize(speech, n) if len(speech) < n else speech[:n]
    n_frames = int(round(len(speech) / config.SAMPLE_RATE * fps))
    frames = talking_head_frames(n_frames, width, height)
    return encode_video(frames=frames, fps=fps, audio=speech, width=width, height=height, **encode_kwargs)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a generated talking-head video.")
    parser.add_argument("output", type=Path)
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: the sample sentences once)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    data = talking_head_video(args.duration, width=args.width, height=args.height, fps=args.fps)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
