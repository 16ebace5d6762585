"""The face detectors compared on the same frames: MTCNN (the default) and the Haar cascade (fallback).

    .venv/bin/python benchmarks/faces.py [--per-condition 200] [--repeat 3] [--output docs/face_detectors.md]

(a) samples/talking_head.mp4, frames from fv2es.media.sample_frames, and (b) generated clips
(fv2es_build.synth.talking_head_frames, one frame per FRAME_INTERVAL_S, grey and scaled to FRAME_MAX_WIDTH
as sample_frames does) go through fv2es.faces.video_faces: tracking and batches, as face_crop runs
them. Hit rate: frames with a face found (every frame holds one); time: the median over --repeat
runs of the clip's time per frame (decoding not counted).

(c) FER2013 PublicTest faces (../shared/data/fer2013/validation.npz) pasted at several sizes and
in-plane angles, each into its own 640 x 480 frame: a random region of a textured public-domain
image (skimage.data), at a random place (fixed seed). Every frame gets a whole-frame search (the
frames are unrelated): MTCNN in batches of MTCNN_BATCH frames, Haar one by one. Hit: the largest face
found has its centre within 0.3 x the pasted size of the pasted face's centre and a side of 0.3 to
1.6 x the pasted size. Time: the median per frame (a batch's time / its frames).

Runs on CPU with face_crop's torch threads (config.MTCNN_CPU_THREADS); writes the table into --output.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from fv2es import config
from fv2es_build import synth
from fv2es.faces import make_face_detector, video_faces
from fv2es.media import sample_frames

ROOT = Path(__file__).resolve().parents[1]
FER = ROOT.parent / "shared" / "data" / "fer2013" / "validation.npz"
DETECTORS = ("mtcnn", "haar")
SIZES = (64, 96, 144, 200)  # pasted face side, px in a 640 x 480 frame
ANGLES = (0, -15, 15, -30, 30)  # degrees, in-plane
FRAME_W, FRAME_H = 640, 480
BACKGROUNDS = ("coffee", "rocket", "brick", "grass", "gravel", "immunohistochemistry")
SEED = 0


def grey_frame(rgb: np.ndarray) -> np.ndarray:
    """As sample_frames gives it: grey, at most FRAME_MAX_WIDTH wide."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    scale = config.FRAME_MAX_WIDTH / grey.shape[1]
    return cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else grey


def generated_clip(seconds: float, width: int, height: int, face: np.ndarray | None = None) -> list[tuple[float, np.ndarray]]:
    fps = 25
    step = int(config.FRAME_INTERVAL_S * fps)
    frames = synth.talking_head_frames(int(seconds * fps), width, height, face)
    return [(i / fps, grey_frame(f)) for i, f in enumerate(frames) if i % step == 0]


def video_row(frames: list[tuple[float, np.ndarray]], detector, repeat: int) -> tuple[float, float]:
    """(hit rate, median ms per frame) of video_faces on `frames`: hits are the frames with a (main) face."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        found = video_faces(frames, detector)["FACE_MAIN"].sum()
        times.append((time.perf_counter() - start) / len(frames))
    return found / len(frames), float(np.median(times)) * 1000


def backgrounds() -> list[np.ndarray]:
    from skimage import data

    images = []
    for name in BACKGROUNDS:
        image = getattr(data, name)()
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = max(FRAME_W / grey.shape[1], FRAME_H / grey.shape[0], 1.0)
        images.append(cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) if scale > 1 else grey)
    return images


def pasted_faces(faces: np.ndarray, size: int, angle: float, rng: np.random.Generator, scenes: list[np.ndarray]):
    """Frames [N, H, W] with one face each, and the faces' centres [N, 2]."""
    frames, centres = [], []
    for face in faces:
        scene = scenes[rng.integers(len(scenes))]
        y, x = rng.integers(scene.shape[0] - FRAME_H + 1), rng.integers(scene.shape[1] - FRAME_W + 1)
        frame = scene[y : y + FRAME_H, x : x + FRAME_W].astype(np.float32)
        margin = int(np.ceil(size * 0.71)) + 2  # half the rotated square's diagonal
        cx, cy = rng.integers(margin, FRAME_W - margin), rng.integers(margin, FRAME_H - margin)
        # The face scaled to `size`, turned by `angle` about its centre and moved to (cx, cy).
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        matrix[:, 2] += (cx - size / 2, cy - size / 2)
        patch = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        warped = cv2.warpAffine(patch, matrix, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ones_like(patch), matrix, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
        frames.append(np.clip(mask * warped + (1 - mask) * frame, 0, 255).astype(np.uint8))
        centres.append((cx, cy))
    return frames, np.asarray(centres, np.float32)


def is_hit(box, centre: np.ndarray, size: int) -> bool:
    if box is None:
        return False
    x, y, w, h = box
    near = np.hypot(x + w / 2 - centre[0], y + h / 2 - centre[1]) <= 0.3 * size
    return bool(near and 0.3 * size <= max(w, h) <= 1.6 * size)


def fer_row(frames: list[np.ndarray], centres: np.ndarray, size: int, detector) -> tuple[float, float]:
    """(hit rate, median ms per frame) of whole-frame searches on `frames`."""
    boxes, per_frame = [], []
    for i in range(0, len(frames), detector.batch_size):
        batch = frames[i : i + detector.batch_size]
        start = time.perf_counter()
        boxes += detector.largest_faces(batch)
        per_frame.append((time.perf_counter() - start) / len(batch))
    hits = sum(is_hit(box, centre, size) for box, centre in zip(boxes, centres))
    return hits / len(frames), float(np.median(per_frame)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-condition", type=int, default=200, help="FER2013 faces per size and angle")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each clip (the median time is kept)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "face_detectors.md")
    args = parser.parse_args()

    torch.set_num_threads(config.MTCNN_CPU_THREADS)
    detectors = {name: make_face_detector(name, "cpu") for name in DETECTORS}
    rows = []  # (set, condition, frames, {detector: (hit rate, ms)})

    def add(group: str, condition: str, n: int, measure) -> None:
        results = {name: measure(detector) for name, detector in detectors.items()}
        rows.append((group, condition, n, results))
        cells = "  ".join(f"{name} {hit:6.1%} {ms:6.1f} ms" for name, (hit, ms) in results.items())
        print(f"{group:10} {condition:28} {n:4d}  {cells}", flush=True)

    sample = list(sample_frames((ROOT / "samples" / "talking_head.mp4").read_bytes()))
    add("video", "samples/talking_head.mp4", len(sample), lambda d: video_row(sample, d, args.repeat))
    fer = np.load(FER)["images"]
    clips = {
        "astronaut 1280x720, 60 s": generated_clip(60, 1280, 720),
        "astronaut 320x240, 20 s": generated_clip(20, 320, 240),
        "FER2013 face 640x480, 20 s": generated_clip(20, 640, 480, face=cv2.cvtColor(fer[0], cv2.COLOR_GRAY2RGB)),
    }
    for name, frames in clips.items():
        add("generated", name, len(frames), lambda d, frames=frames: video_row(frames, d, args.repeat))

    rng = np.random.default_rng(SEED)
    scenes = backgrounds()
    for size in SIZES:
        for angle in ANGLES:
            faces = fer[rng.choice(len(fer), args.per_condition, replace=False)]
            frames, centres = pasted_faces(faces, size, angle, rng, scenes)
            add("FER2013", f"{size} px, {angle:+d} deg", len(frames), lambda d: fer_row(frames, centres, size, d))

    command = " ".join([".venv/bin/python benchmarks/faces.py", *sys.argv[1:]])
    write_table(args.output, rows, command)
    print(f"wrote {args.output}")


def write_table(path: Path, rows, command: str) -> None:
    header = "| set | condition | frames | " + " | ".join(f"{n} hit | {n} ms/frame" for n in DETECTORS) + " |"
    lines = [header, "|" + "---|" * (3 + 2 * len(DETECTORS))]
    for group, condition, n, results in rows:
        cells = " | ".join(f"{results[d][0]:.1%} | {results[d][1]:.1f}" for d in DETECTORS)
        lines.append(f"| {group} | {condition} | {n} | {cells} |")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    text = f"""# Face detectors: MTCNN (default) and Haar cascade (fallback)

Measured by `{command}` on {datetime.date.today().isoformat()} ({machine}; CPU only, torch threads
{config.MTCNN_CPU_THREADS} as face_crop sets them; times from one run, on a machine whose load can
vary: compare the two columns of a row, measured side by side). How each set is made and
what counts as a hit: the docstring of benchmarks/faces.py. Settings: fv2es/config.py, "Faces".

{chr(10).join(lines)}
"""
    path.write_text(text)


if __name__ == "__main__":
    main()
