"""Face crops: detect the largest face in a frame, crop it to the visual encoder's input."""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from . import config


class FaceDetector:
    """OpenCV's Haar cascade (ships inside opencv-python-headless 4.x: no download)."""

    def __init__(self, cascade: str = config.FACE_CASCADE):
        path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"could not load the face detector cascade {path}")

    def largest_face(self, grey: np.ndarray, near: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int] | None:
        """(x, y, w, h) of the largest face in a grey image, or None; only around the box `near` when given.

        Detection runs on a copy at most FACE_DETECT_WIDTH wide (its cost grows with the pixels);
        the box is scaled back to `grey`'s coordinates so the crop keeps the full resolution.
        """
        scale = min(1.0, config.FACE_DETECT_WIDTH / grey.shape[1])
        small = grey if scale == 1.0 else cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        image = cv2.equalizeHist(small)  # on the whole frame, so a region search sees the same pixels
        x0 = y0 = 0
        min_size, max_size = config.FACE_MIN_SIZE, 0
        if near is not None:
            x, y, w, h = (v * scale for v in near)
            side = max(w, h)
            half = side * config.FACE_TRACK_REGION / 2
            x0, y0 = max(0, int(x + w / 2 - half)), max(0, int(y + h / 2 - half))
            image = image[y0 : int(y + h / 2 + half), x0 : int(x + w / 2 + half)]
            min_size = max(min_size, int(side / config.FACE_TRACK_SIZE_CHANGE))
            max_size = int(side * config.FACE_TRACK_SIZE_CHANGE)
            if min(image.shape) < min_size:
                return None
        boxes = self.cascade.detectMultiScale(
            image, scaleFactor=config.FACE_SCALE_FACTOR, minNeighbors=5, minSize=(min_size,) * 2, maxSize=(max_size,) * 2
        )
        if len(boxes) == 0:
            return None
        x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
        return tuple(int(round(v / scale)) for v in (x + x0, y + y0, w, h))


class FaceTracker:
    """The largest face in consecutive frames of one video.

    Searches near the last face first (a few ms instead of a whole-frame search), and the whole
    frame after a miss and at least every FACE_TRACK_FRAMES frames, so a larger face that appears
    elsewhere is found.
    """

    def __init__(self, detector: FaceDetector):
        self.detector = detector
        self.previous: tuple[int, int, int, int] | None = None
        self.tracked = 0

    def find(self, grey: np.ndarray) -> tuple[int, int, int, int] | None:
        box = None
        if self.previous is not None and self.tracked < config.FACE_TRACK_FRAMES:
            box = self.detector.largest_face(grey, near=self.previous)
            self.tracked += 1
        if box is None:
            box = self.detector.largest_face(grey)
            self.tracked = 0
        self.previous = box
        return box


def crop_face(grey: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """A FACE_SIZE square uint8 crop around `box` (with margin); the centre square when box is None."""
    height, width = grey.shape
    if box is None:
        side = min(height, width)
        cx, cy = width / 2, height / 2
    else:
        x, y, w, h = box
        side = max(w, h) * (1 + 2 * config.FACE_MARGIN)
        cx, cy = x + w / 2, y + h / 2
    half = side / 2
    x0, y0 = int(round(cx - half)), int(round(cy - half))
    x1, y1 = int(round(cx + half)), int(round(cy + half))
    # Pad with edge pixels where the square runs off the frame, so the face is not stretched.
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = grey[y0:y1, x0:x1]
    return cv2.resize(crop, (config.FACE_SIZE, config.FACE_SIZE), interpolation=cv2.INTER_AREA)


def normalise_faces(crops: np.ndarray) -> np.ndarray:
    """uint8 [N, FACE_SIZE, FACE_SIZE] -> float32 [N, 1, FACE_SIZE, FACE_SIZE], the encoder's input."""
    return ((crops.astype(np.float32) - config.FACE_MEAN) / config.FACE_STD)[:, None]


def video_faces(frames: Iterable[tuple[float, np.ndarray]], detector: FaceDetector) -> tuple[np.ndarray, np.ndarray]:
    """Normalised crops [N, 1, S, S] of the largest face of each (time, grey frame) where one is
    found, and their times [N]. Frames are consumed one at a time: only the small crops are kept."""
    tracker = FaceTracker(detector)
    crops, times = [], []
    for t, grey in frames:
        box = tracker.find(grey)
        if box is not None:
            crops.append(crop_face(grey, box))
            times.append(t)
    if not crops:
        return np.zeros((0, 1, config.FACE_SIZE, config.FACE_SIZE), np.float32), np.zeros(0, np.float32)
    return normalise_faces(np.stack(crops)), np.asarray(times, np.float32)
