"""Face crops: detect the largest face in a frame, crop it to the visual encoder's input.

Two detectors with the same interface: `MtcnnFaceDetector`, the FV2ES paper's (the default), and
`FaceDetector`, OpenCV's Haar cascade (no torch: the CPU fallback); `make_face_detector` picks one
by name (config.FACE_DETECTOR).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import cv2
import numpy as np

from . import config

Box = tuple[int, int, int, int]  # x, y, w, h in the frame's pixels
DETECTORS = ("mtcnn", "haar")


def make_face_detector(name: str = config.FACE_DETECTOR, device: str = "cpu", cascade: str = config.FACE_CASCADE):
    """The detector called `name` (one of DETECTORS); MTCNN runs on the torch `device` ("cpu", "cuda:0"),
    Haar with the OpenCV `cascade`."""
    if name == "mtcnn":
        return MtcnnFaceDetector(device)
    if name == "haar":
        return FaceDetector(cascade)
    raise ValueError(f"unknown face detector {name!r}: use one of {', '.join(DETECTORS)}")


def _track_region(near: Box, scale: float, shape: tuple[int, int]) -> tuple[int, int, int, int, float]:
    """x0, y0, x1, y1 of the square FACE_TRACK_REGION times the face `near` around it, and the face's
    side, in the coordinates of the frame scaled by `scale` (`shape`), clipped to it."""
    x, y, w, h = (v * scale for v in near)
    side = max(w, h)
    half = side * config.FACE_TRACK_REGION / 2
    x0, y0 = max(0, int(x + w / 2 - half)), max(0, int(y + h / 2 - half))
    x1, y1 = min(shape[1], int(x + w / 2 + half)), min(shape[0], int(y + h / 2 + half))
    return x0, y0, x1, y1, side


class FaceDetector:
    """OpenCV's Haar cascade (ships inside opencv-python-headless 4.x: no download)."""

    batch_size = 1  # searches frame by frame: nothing to gain from batches

    def __init__(self, cascade: str = config.FACE_CASCADE):
        path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"could not load the face detector cascade {path}")

    def largest_face(self, grey: np.ndarray, near: Box | None = None) -> Box | None:
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
            x0, y0, x1, y1, side = _track_region(near, scale, image.shape)
            image = image[y0:y1, x0:x1]
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

    def largest_faces(self, greys: list[np.ndarray]) -> list[Box | None]:
        return [self.largest_face(grey) for grey in greys]


class MtcnnFaceDetector:
    """MTCNN (Zhang et al. 2016), the FV2ES paper's face detector: facenet-pytorch's pretrained P-,
    R- and O-Nets (their weights ship inside its wheel) and its detection cascade, on a torch device.

    Frames are grey: MTCNN gets them as RGB with the channel replicated.
    """

    batch_size = config.MTCNN_BATCH

    def __init__(self, device: str = "cpu"):
        # Imported here: the Haar path (and fv2es.stages) stays free of torch.
        import torch
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
        from facenet_pytorch.models.utils.detect_face import detect_face

        self.torch, self.detect_face = torch, detect_face
        self.device = torch.device(device)
        self.nets = [net().eval().to(self.device) for net in (PNet, RNet, ONet)]

    def _boxes(self, images: list[np.ndarray], min_face: float) -> list[np.ndarray]:
        """[k, 5] boxes (x1, y1, x2, y2, score) of the faces of at least `min_face` px in each of
        `images` (grey, all the same size), found in one batched pass."""
        rgb = np.repeat(np.stack(images)[..., None], 3, axis=-1)
        with self.torch.inference_mode():
            boxes, _ = self.detect_face(
                rgb, min_face, *self.nets, config.MTCNN_THRESHOLDS, config.MTCNN_PYRAMID_FACTOR, self.device
            )
        return [np.asarray(b, np.float32).reshape(-1, 5) for b in boxes]

    @staticmethod
    def _largest(boxes: np.ndarray, scale: float, x0: float = 0, y0: float = 0, max_side: float = np.inf) -> Box | None:
        """The largest of `boxes` (found at `scale`, offset by x0, y0) in the frame's pixels."""
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[sides <= max_side]
        if len(boxes) == 0:
            return None
        x1, y1, x2, y2 = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), :4]
        return tuple(int(round(v)) for v in ((x1 + x0) / scale, (y1 + y0) / scale, (x2 - x1) / scale, (y2 - y1) / scale))

    def largest_faces(self, greys: list[np.ndarray]) -> list[Box | None]:
        """The largest face of each of `greys` (same size), searched whole-frame in one batch on a copy
        at most MTCNN_DETECT_WIDTH wide; frames without one again turned by each MTCNN_MISS_ROTATIONS."""
        scale = min(1.0, config.MTCNN_DETECT_WIDTH / greys[0].shape[1])
        if scale < 1.0:
            greys = [cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for g in greys]
        found = [self._largest(boxes, scale) for boxes in self._boxes(greys, config.MTCNN_MIN_FACE)]
        for angle in config.MTCNN_MISS_ROTATIONS:
            missed = [i for i, box in enumerate(found) if box is None]
            if not missed:
                break
            height, width = greys[0].shape
            turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
            turned = [cv2.warpAffine(greys[i], turn, (width, height), borderMode=cv2.BORDER_REPLICATE) for i in missed]
            back = cv2.invertAffineTransform(turn)
            for i, boxes in zip(missed, self._boxes(turned, config.MTCNN_MIN_FACE)):
                box = self._largest(boxes, 1.0)
                if box is not None:  # the same box, around the face's centre turned back
                    x, y, w, h = box
                    cx, cy = back @ (x + w / 2, y + h / 2, 1.0)
                    found[i] = tuple(int(round(v / scale)) for v in (cx - w / 2, cy - h / 2, w, h))
        return found

    def largest_face(self, grey: np.ndarray, near: Box | None = None) -> Box | None:
        """(x, y, w, h) of the largest face in `grey`, or None; only around the box `near` when given,
        on a copy of that region scaled so that the face `near` is MTCNN_TRACK_FACE px."""
        if near is None:
            return self.largest_faces([grey])[0]
        x0, y0, x1, y1, side = _track_region(near, 1.0, grey.shape)
        scale = config.MTCNN_TRACK_FACE / side
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        region = cv2.resize(grey[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=interpolation)
        min_face = config.MTCNN_TRACK_FACE / config.FACE_TRACK_SIZE_CHANGE
        if min(region.shape) < min_face:
            return None
        boxes = self._boxes([region], min_face)[0]
        return self._largest(boxes, scale, x0 * scale, y0 * scale, config.MTCNN_TRACK_FACE * config.FACE_TRACK_SIZE_CHANGE)


class FaceTracker:
    """The largest face in consecutive frames of one video.

    Searches near the last face first (a few ms instead of a whole-frame search), and the whole
    frame after a miss and at least every FACE_TRACK_FRAMES frames, so a larger face that appears
    elsewhere is found. Frames come in batches (`detector.batch_size`): each frame is tracked in
    turn, then the batch's whole-frame searches run together; the frames of a batch after a miss are
    tracked near the last face found before it (with batches of 1 a miss's whole-frame result is
    what the next frame tracks). A batch that starts with no face to track searches its first frame
    alone first, so a video's faces are tracked from its second frame on.
    """

    def __init__(self, detector):
        self.detector = detector
        self.previous: Box | None = None
        self.tracked = 0

    def find(self, grey: np.ndarray) -> Box | None:
        return self.find_batch([grey])[0]

    def find_batch(self, greys: list[np.ndarray]) -> list[Box | None]:
        boxes: list[Box | None] = [None] * len(greys)
        searched = []  # the frames that get a whole-frame search
        for i, grey in enumerate(greys):
            if i == 0 and self.previous is None:  # nothing to track yet: look for a face to track first
                boxes[0] = self.previous = self.detector.largest_faces([grey])[0]
                self.tracked = 0
                continue
            if self.previous is not None and self.tracked < config.FACE_TRACK_FRAMES:
                boxes[i] = self.detector.largest_face(grey, near=self.previous)
                self.tracked += 1
            if boxes[i] is None:
                searched.append(i)
                self.tracked = 0
            else:
                self.previous = boxes[i]
        if searched:
            for i, box in zip(searched, self.detector.largest_faces([greys[i] for i in searched])):
                boxes[i] = box
        self.previous = boxes[-1]
        return boxes


def crop_face(grey: np.ndarray, box: Box | None) -> np.ndarray:
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


def _batches(frames: Iterable[tuple[float, np.ndarray]], size: int) -> Iterator[list[tuple[float, np.ndarray]]]:
    """Consecutive frames in lists of up to `size` frames of the same size."""
    batch = []
    for frame in frames:
        if batch and (len(batch) == size or frame[1].shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append(frame)
    if batch:
        yield batch


def video_faces(frames: Iterable[tuple[float, np.ndarray]], detector) -> tuple[np.ndarray, np.ndarray]:
    """Normalised crops [N, 1, S, S] of the largest face of each (time, grey frame) where one is
    found, and their times [N]. Frames are consumed a batch (`detector.batch_size`) at a time: only
    the small crops are kept."""
    tracker = FaceTracker(detector)
    crops, times = [], []
    for batch in _batches(frames, detector.batch_size):
        for (t, grey), box in zip(batch, tracker.find_batch([grey for _, grey in batch])):
            if box is not None:
                crops.append(crop_face(grey, box))
                times.append(t)
    if not crops:
        return np.zeros((0, 1, config.FACE_SIZE, config.FACE_SIZE), np.float32), np.zeros(0, np.float32)
    return normalise_faces(np.stack(crops)), np.asarray(times, np.float32)
