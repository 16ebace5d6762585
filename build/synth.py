"""Generated media for the demo, the tests and the benchmarks.

Everything is public domain or synthetic: the face is `skimage.data.astronaut()` (NASA, public
domain); the second face of the two-person clip is Grace Hopper's official US Navy portrait (public
domain), as matplotlib ships it (`matplotlib.cbook.get_sample_data("grace_hopper.jpg")`); the voices
are espeak-ng. Files are encoded in memory with PyAV.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from fv2es import config

SAMPLE_SENTENCES = (
    "I am so happy to see you again today.",
    "This is the best news I have heard all year.",
)


def speak(
    text: str, *, rate: int = config.SAMPLE_RATE, words_per_minute: int = 150, voice: str | None = None
) -> np.ndarray:
    """Speech for `text` from espeak-ng, as float32 mono at `rate` Hz; `voice`: espeak-ng's -v
    (e.g. "en-us+f3": American English, female variant 3; default: espeak-ng's default voice)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (Debian package 'espeak-ng')")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        options = ["-v", voice] if voice else []
        subprocess.run(["espeak-ng", *options, "-s", str(words_per_minute), "-w", str(wav), text], check=True)
        with av.open(str(wav)) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            parts = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
            parts += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32)


def noise_bytes(n: int, seed: int = 0) -> bytes:
    """`n` random bytes, the same for the same seed: input that no demuxer can read, at any size
    (Generator.integers: 300 MB in 0.4 s, where Generator.bytes takes 8 s)."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


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
    container_options: dict[str, str] | None = None,
) -> bytes:
    """Encodes RGB frames and/or float audio into a container, returned as bytes.

    `audio` is [n] (mono) or [channels, n] (2: stereo, 6: 5.1) at `audio_rate`; the stream is
    encoded at `stream_rate` (default: `audio_rate`, 48 kHz for Opus). With `display_rotation`
    (counter-clockwise degrees, a multiple of 90) the frames are stored turned the other way and
    the container's display matrix says how to turn them back upright, as phones record; `width`
    and `height` stay those of the upright picture. `frame_times` (seconds, one per frame) makes
    the frame rate variable. `audio_delay_s` starts the sound that much after the picture (its
    timestamps, as a late-starting audio track has; the samples are unchanged).
    `container_options` go to the muxer: {"movflags": "frag_keyframe+empty_moov"} writes fragmented
    MP4 (readable while it is written, as a live stream), {"movflags": "faststart"} the index first.
    """
    turns = round(display_rotation / 90) % 4
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format, container_options=container_options) as out:
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


# --- Two people: the two-person clip (one timeline per person) -----------------------------------

SIDES = ("left", "right")
# Who says what, in turn: the astronaut (left) speaks while Grace Hopper (right) is silent, then the other way round.
TWO_PERSON_TURNS = (
    ("left", "I am so happy to see you again today."),
    ("right", "This is the best news I have heard all year."),
    ("left", "We should celebrate together tonight."),
)
TWO_PERSON_VOICES = {"left": "en-us+f3", "right": "en+f5"}  # espeak-ng voices, one per side


class Portrait(NamedTuple):
    image: np.ndarray  # RGB uint8, square, the head in its middle
    mouth: tuple[float, float, float]  # the mouth's centre x, y and width, px of `image`


class Turn(NamedTuple):
    side: str  # "left" or "right": the face that speaks
    start: float  # seconds: the speech's first and last audible sample
    end: float
    text: str


def hopper_image() -> np.ndarray:
    """Grace Hopper's portrait (RGB uint8, 600 x 512), as matplotlib ships it (US Navy, public domain)."""
    import cv2
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def portraits() -> tuple[Portrait, Portrait]:
    """The two faces of the two-person clip: the astronaut and Grace Hopper, each a square around the
    head. Face boxes and mouth corners: MTCNN's on the full images."""
    return (_portrait(face_image(), (181, 62, 268, 172), (202, 139), (245, 142)),
            _portrait(hopper_image(), (174, 120, 356, 340), (233, 280), (307, 276)))


def _portrait(
    image: np.ndarray, face: tuple[int, int, int, int], left: tuple[int, int], right: tuple[int, int]
) -> Portrait:
    x1, y1, x2, y2 = face
    side = min(int(2.0 * (y2 - y1)), *image.shape[:2])
    x0 = min(max(0, (x1 + x2) // 2 - side // 2), image.shape[1] - side)
    y0 = min(max(0, (y1 + y2) // 2 - side // 2), image.shape[0] - side)
    mouth = ((left[0] + right[0]) / 2 - x0, (left[1] + right[1]) / 2 - y0, float(right[0] - left[0]))
    return Portrait(np.ascontiguousarray(image[y0 : y0 + side, x0 : x0 + side]), mouth)


def open_mouth(portrait: Portrait, openness: float) -> np.ndarray:
    """The portrait with its mouth opened by `openness` (0: closed, as photographed; 1: wide): the
    lower lip and chin pushed down (squeezing the chin), a dark gap between the lips."""
    import cv2

    image = portrait.image
    if openness <= 0:
        return image
    mx, my, mw = portrait.mouth
    x0, x1 = max(0, int(mx - 0.8 * mw)), min(image.shape[1], int(mx + 0.8 * mw) + 1)
    ya, yb = int(round(my)), min(image.shape[0], int(my + 0.9 * mw) + 1)
    xs = np.arange(x0, x1, dtype=np.float32)
    gap = min(openness, 1.0) * 0.4 * mw * np.clip(1 - ((xs - mx) / (0.55 * mw)) ** 2, 0, None)  # 0 at the corners
    rel = np.arange(yb - ya, dtype=np.float32)[:, None]
    length = float(yb - ya)
    source = np.clip((rel - gap) * length / (length - gap), 0, None)  # where each output row comes from
    map_x = np.broadcast_to(xs, source.shape).astype(np.float32)
    region = cv2.remap(image, map_x, (ya + source).astype(np.float32), cv2.INTER_LINEAR)
    inside = rel < gap
    region[inside] = (0.25 * region[inside] + 0.75 * np.array([70, 25, 30])).astype(np.uint8)
    out = image.copy()
    out[ya:yb, x0:x1] = region
    return out


def two_person_frames(openness: np.ndarray, width: int = 640, height: int = 360, layouts=None):
    """Yields RGB frames of two faces side by side on a grey background, still but for their mouths:
    `openness` [n_frames, 2] (left, right; 0 to 1, open_mouth). `layouts`: per frame, which portrait
    (0: the astronaut, 1: Grace Hopper, None: nobody) is on the left and on the right (default (0, 1))."""
    import cv2

    faces = portraits()
    side = int(min(width / 2, height) * 0.85)
    y0 = (height - side) // 2
    xs = [(width // 2 - side) // 2, width // 2 + (width // 2 - side) // 2]
    closed = [cv2.resize(p.image, (side, side), interpolation=cv2.INTER_AREA) for p in faces]
    background = np.full((height, width, 3), 96, np.uint8)
    for i, amounts in enumerate(np.asarray(openness, np.float32)):
        frame = background.copy()
        for slot, who in enumerate((0, 1) if layouts is None else layouts[i]):
            if who is None:
                continue
            face = closed[who] if amounts[slot] <= 0 else cv2.resize(
                open_mouth(faces[who], float(amounts[slot])), (side, side), interpolation=cv2.INTER_AREA)
            frame[y0 : y0 + side, xs[slot] : xs[slot] + side] = face
        yield frame


def speech_envelope(speech: np.ndarray, times: np.ndarray, window_s: float = 0.05) -> np.ndarray:
    """How open a speaker's mouth is at each of `times`: the speech's RMS over `window_s` around it,
    over the 90th percentile of the audible frames' RMS, clipped to [0, 1]."""
    half = int(window_s / 2 * config.SAMPLE_RATE)
    centres = np.round(np.asarray(times) * config.SAMPLE_RATE).astype(int)
    rms = np.array([np.sqrt(np.mean(speech[max(0, c - half) : c + half] ** 2)) if c - half < len(speech) else 0.0
                    for c in centres])
    audible = rms[rms > 0.02 * (rms.max() or 1.0)]
    loud = np.percentile(audible, 90) if len(audible) else 1.0
    return np.clip(rms / loud, 0, 1).astype(np.float32)


def two_person_video(
    turns=TWO_PERSON_TURNS,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 25,
    pause_s: float = 1.0,
    voices: dict[str, str] = TWO_PERSON_VOICES,
    container_format: str = "mp4",
    **encode_kwargs,
) -> tuple[bytes, list[Turn]]:
    """Two different people side by side (the astronaut on the left, Grace Hopper on the right)
    taking turns to speak: `turns` are (side, sentence), each read by that side's espeak-ng voice
    after `pause_s` of silence, the speaking face's mouth opening and closing with the loudness of
    its speech while the other face stays still. Returns the encoded clip (`container_format`, e.g.
    "mp4", "mpegts", "matroska"; other encode_video arguments pass through) and the ground truth: one
    Turn per sentence (its side and when it is heard)."""
    pause = np.zeros(int(pause_s * config.SAMPLE_RATE), np.float32)
    tracks = {side: [pause] for side in SIDES}
    truth = []
    cursor = len(pause)
    for side, text in turns:
        speech = speak(text, voice=voices.get(side))
        loud = np.flatnonzero(np.abs(speech) > 0.01 * np.abs(speech).max())
        start, end = (cursor + loud[0]) / config.SAMPLE_RATE, (cursor + loud[-1] + 1) / config.SAMPLE_RATE
        truth.append(Turn(side, start, end, text))
        for other in SIDES:
            tracks[other] += [speech if other == side else np.zeros_like(speech), pause]
        cursor += len(speech) + len(pause)
    tracks = {side: np.concatenate(parts) for side, parts in tracks.items()}
    audio = tracks["left"] + tracks["right"]
    n_frames = int(round(len(audio) / config.SAMPLE_RATE * fps))
    times = np.arange(n_frames) / fps
    openness = np.stack([speech_envelope(tracks[side], times) for side in SIDES], axis=1)
    frames = two_person_frames(openness, width, height)
    data = encode_video(frames=frames, fps=fps, audio=audio, width=width, height=height,
                        container_format=container_format, **encode_kwargs)
    return data, truth


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a generated talking-head video.")
    parser.add_argument("output", type=Path, help="the file; .ts writes MPEG-TS, anything else MP4")
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: the sample sentences once)")
    parser.add_argument("--two-people", type=int, default=0, metavar="ROUNDS",
                        help="the two-person clip instead: ROUNDS rounds of their turns (--duration is ignored)")
    parser.add_argument("--width", type=int, default=None, help="pixels (320; 640 for --two-people)")
    parser.add_argument("--height", type=int, default=None, help="pixels (240; 360 for --two-people)")
    parser.add_argument("--fps", type=int, default=25)
    args = parser.parse_args()
    container_format = "mpegts" if args.output.suffix == ".ts" else "mp4"
    if args.two_people:
        data, _turns = two_person_video(TWO_PERSON_TURNS * args.two_people, width=args.width or 640,
                                        height=args.height or 360, fps=args.fps, container_format=container_format)
    else:
        data = talking_head_video(args.duration, width=args.width or 320, height=args.height or 240, fps=args.fps,
                                  container_format=container_format)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
