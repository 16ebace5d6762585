"""Face crops: detect the faces of a frame, track them over the video, crop them to the visual encoder's input.

Two detectors with the same interface: `MtcnnFaceDetector`, the FV2ES paper's (the default), and
`FaceDetector`, OpenCV's Haar cascade (no torch: the CPU fallback); `make_face_detector` picks one
by name (config.FACE_DETECTOR).

`FaceRows` turns (time, grey frame) pairs, fed one at a time, into face rows: every face of every
frame (the largest of each frame flagged "main": what the visual encoder scores the segments with),
the person each face is (`PersonTracker`: tracks and appearance, decided as the frames come) and how
much that person's mouth moved since their previous row. `video_faces` runs it over a whole video.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import cv2
import numpy as np

from . import config

Box = tuple[int, int, int, int]  # x, y, w, h in the frame's pixels
Rows = dict[str, np.ndarray]
DETECTORS = ("mtcnn", "haar")
ROW_KEYS = ("FACES", "FACE_TIMES", "FACE_PERSON", "FACE_MAIN", "FACE_MOUTH")  # what FaceRows returns


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


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def frame_faces(boxes: list[Box]) -> list[Box]:
    """The faces of a frame kept from `boxes` (largest first): at most MAX_FACES_PER_FRAME, each at
    least FACE_MIN_SIDE_RATIO of the largest's side and overlapping no larger kept one by PERSON_IOU
    (the same face twice). The largest is always kept."""
    kept: list[Box] = []
    for box in boxes:
        if len(kept) == config.MAX_FACES_PER_FRAME:
            break
        if kept and (max(box[2:]) < config.FACE_MIN_SIDE_RATIO * max(kept[0][2:])
                     or any(box_iou(box, k) >= config.PERSON_IOU for k in kept)):
            continue
        kept.append(box)
    return kept


class FaceDetector:
    """OpenCV's Haar cascade (ships inside opencv-python-headless 4.x: no download)."""

    batch_size = 1  # searches frame by frame: nothing to gain from batches

    def __init__(self, cascade: str = config.FACE_CASCADE):
        path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"could not load the face detector cascade {path}")

    def faces(self, grey: np.ndarray, near: Box | None = None) -> list[Box]:
        """(x, y, w, h) of every face in a grey image, largest first; only around the box `near` when given.

        Detection runs on a copy at most FACE_DETECT_WIDTH wide (its cost grows with the pixels);
        the boxes are scaled back to `grey`'s coordinates so the crop keeps the full resolution.
        A frame whose copy is smaller than FACE_MIN_SIZE has none.
        """
        scale = min(1.0, config.FACE_DETECT_WIDTH / grey.shape[1])
        if min(grey.shape) * scale < config.FACE_MIN_SIZE:
            return []  # (and the copy of a frame 1 px high could have no pixels)
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
                return []
        boxes = self.cascade.detectMultiScale(
            image, scaleFactor=config.FACE_SCALE_FACTOR, minNeighbors=5, minSize=(min_size,) * 2, maxSize=(max_size,) * 2
        )
        boxes = sorted(boxes, key=lambda b: -(b[2] * b[3]))  # stable: the first of equal ones first, as max() picks
        return [tuple(int(round(v / scale)) for v in (x + x0, y + y0, w, h)) for x, y, w, h in boxes]

    def largest_face(self, grey: np.ndarray, near: Box | None = None) -> Box | None:
        """(x, y, w, h) of the largest face in a grey image, or None; only around the box `near` when given."""
        faces = self.faces(grey, near)
        return faces[0] if faces else None

    def all_faces(self, greys: list[np.ndarray]) -> list[list[Box]]:
        """The faces of each of `greys` (whole-frame searches), largest first, as `frame_faces` keeps them."""
        return [frame_faces(self.faces(grey)) for grey in greys]

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

    @staticmethod
    def _fits(shape: tuple[float, ...], min_face: float) -> bool:
        """Whether a face of `min_face` px fits an image of `shape` (height, width): whether MTCNN's
        image pyramid (P-Net's 12 px window on the image scaled by 12 / min_face, then smaller) has a
        level, as facenet-pytorch's detect_face decides it (with none it fails: torch.cat of no levels)."""
        return min(shape) * (12.0 / min_face) >= 12

    def _boxes(self, images: list[np.ndarray], min_face: float) -> list[np.ndarray]:
        """[k, 5] boxes (x1, y1, x2, y2, score) of the faces of at least `min_face` px in each of
        `images` (grey, all the same size), found in one batched pass; none in images smaller than that."""
        if not self._fits(images[0].shape, min_face):
            return [np.zeros((0, 5), np.float32) for _ in images]
        rgb = np.repeat(np.stack(images)[..., None], 3, axis=-1)
        with self.torch.inference_mode():
            boxes, _ = self.detect_face(
                rgb, min_face, *self.nets, config.MTCNN_THRESHOLDS, config.MTCNN_PYRAMID_FACTOR, self.device
            )
        return [np.asarray(b, np.float32).reshape(-1, 5) for b in boxes]

    @staticmethod
    def _sorted(boxes: np.ndarray, scale: float, x0: float = 0, y0: float = 0, max_side: float = np.inf) -> list[Box]:
        """`boxes` (found at `scale`, offset by x0, y0) in the frame's pixels, largest first."""
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        boxes = boxes[sides <= max_side]
        # Stable: of equal areas the first comes first, as np.argmax picks it.
        order = np.argsort(-((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), kind="stable")
        return [
            tuple(int(round(v)) for v in ((x1 + x0) / scale, (y1 + y0) / scale, (x2 - x1) / scale, (y2 - y1) / scale))
            for x1, y1, x2, y2 in boxes[order, :4]
        ]

    def all_faces(self, greys: list[np.ndarray]) -> list[list[Box]]:
        """The faces of each of `greys` (same size), largest first as `frame_faces` keeps them, searched
        whole-frame in one batch on a copy at most MTCNN_DETECT_WIDTH wide; frames without one again
        turned by each MTCNN_MISS_ROTATIONS. A frame whose copy is smaller than MTCNN_MIN_FACE has none."""
        scale = min(1.0, config.MTCNN_DETECT_WIDTH / greys[0].shape[1])
        if not self._fits(np.multiply(greys[0].shape, scale), config.MTCNN_MIN_FACE):
            return [[] for _ in greys]  # (and the copy of a frame 1 px high could have no pixels)
        if scale < 1.0:
            greys = [cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for g in greys]
        found = [self._sorted(boxes, scale) for boxes in self._boxes(greys, config.MTCNN_MIN_FACE)]
        for angle in config.MTCNN_MISS_ROTATIONS:
            missed = [i for i, boxes in enumerate(found) if not boxes]
            if not missed:
                break
            height, width = greys[0].shape
            turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
            turned = [cv2.warpAffine(greys[i], turn, (width, height), borderMode=cv2.BORDER_REPLICATE) for i in missed]
            back = cv2.invertAffineTransform(turn)
            for i, boxes in zip(missed, self._boxes(turned, config.MTCNN_MIN_FACE)):
                found[i] = []
                for x, y, w, h in self._sorted(boxes, 1.0):  # the same boxes, around the faces' centres turned back
                    cx, cy = back @ (x + w / 2, y + h / 2, 1.0)
                    found[i].append(tuple(int(round(v / scale)) for v in (cx - w / 2, cy - h / 2, w, h)))
        return [frame_faces(boxes) for boxes in found]

    def largest_faces(self, greys: list[np.ndarray]) -> list[Box | None]:
        """The largest face of each of `greys` (same size), searched as `all_faces` does."""
        return [boxes[0] if boxes else None for boxes in self.all_faces(greys)]

    def largest_face(self, grey: np.ndarray, near: Box | None = None) -> Box | None:
        """(x, y, w, h) of the largest face in `grey`, or None; only around the box `near` when given,
        on a copy of that region scaled so that the face `near` is MTCNN_TRACK_FACE px."""
        if near is None:
            return self.largest_faces([grey])[0]
        x0, y0, x1, y1, side = _track_region(near, 1.0, grey.shape)
        scale = config.MTCNN_TRACK_FACE / side
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        min_face = config.MTCNN_TRACK_FACE / config.FACE_TRACK_SIZE_CHANGE
        if not self._fits(np.multiply((y1 - y0, x1 - x0), scale), min_face):
            return None  # (and the copy of a region 1 px high could have no pixels)
        region = cv2.resize(grey[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=interpolation)
        boxes = self._sorted(self._boxes([region], min_face)[0], scale, x0 * scale, y0 * scale,
                             config.MTCNN_TRACK_FACE * config.FACE_TRACK_SIZE_CHANGE)
        return boxes[0] if boxes else None


class FaceTracker:
    """The faces of consecutive frames of one video; the first of each frame's is its main face, the
    largest face as the single-face tracker has always found it.

    Searches near the last frame's faces first (a few ms each instead of a whole-frame search), and
    the whole frame after the main face is missed and at least every FACE_TRACK_FRAMES frames, so a
    larger face, or a new one, that appears elsewhere is found. The main face is searched first, near
    the last main face; the frame's other faces only when it is found, each near one of the last
    frame's other faces (a face missed there drops out until the next whole-frame search). Frames come
    in batches (`detector.batch_size`): each frame is tracked in turn, then the batch's whole-frame
    searches run together; the frames of a batch after a miss are tracked near the faces found before
    it (with batches of 1 a miss's whole-frame result is what the next frame tracks), and the next
    batch near the last frame's faces and the other faces of the batch's last whole-frame search. A
    batch that starts with no face to track searches its first frame alone first, so a video's faces
    are tracked from its second frame on.

    The main faces do not depend on the other faces: they are exactly those of the single-face
    tracker this one replaced, with the same searches (one region search per other face tracked).
    """

    def __init__(self, detector):
        self.detector = detector
        self.previous: list[Box] = []  # the faces of the last frame, its main face first
        self.tracked = 0

    def find(self, grey: np.ndarray) -> Box | None:
        """The main face of the next frame, or None."""
        return self.find_batch([grey])[0]

    def find_batch(self, greys: list[np.ndarray]) -> list[Box | None]:
        """The main face of each of the next frames (None: no face)."""
        return [faces[0] if faces else None for faces in self.find_all(greys)]

    def find_all(self, greys: list[np.ndarray]) -> list[list[Box]]:
        """The faces of each of the next frames, main face first, the others largest first."""
        faces: list[list[Box]] = [[] for _ in greys]
        searched = []  # the frames that get a whole-frame search
        for i, grey in enumerate(greys):
            if i == 0 and not self.previous:  # nothing to track yet: look for faces to track first
                faces[0] = self.previous = self.detector.all_faces([grey])[0]
                self.tracked = 0
                continue
            if self.previous and self.tracked < config.FACE_TRACK_FRAMES:
                main = self.detector.largest_face(grey, near=self.previous[0])
                self.tracked += 1
                if main is not None:
                    faces[i] = self._with_others(grey, main)
            if not faces[i]:
                searched.append(i)
                self.tracked = 0
            else:
                self.previous = faces[i]
        if searched:
            for i, found in zip(searched, self.detector.all_faces([greys[i] for i in searched])):
                faces[i] = found
        self.previous = faces[-1]
        if searched and self.previous:
            # Faces that the batch's last whole-frame search found besides the last frame's are
            # tracked from the next batch on (else a face that appears would be found only by the
            # whole-frame searches). The main face to track stays the last frame's.
            self.previous = self.previous + [
                box for box in faces[searched[-1]] if all(box_iou(box, k) < config.PERSON_IOU for k in self.previous)
            ]
            self.previous = self.previous[: config.MAX_FACES_PER_FRAME]
        return faces

    def _with_others(self, grey: np.ndarray, main: Box) -> list[Box]:
        """`main`, then the faces found near the last frame's other faces (one region search each),
        largest first, kept as `frame_faces` keeps a frame's faces (main always)."""
        found = (self.detector.largest_face(grey, near=near) for near in self.previous[1:])
        others = [box for box in found if box is not None]
        others.sort(key=lambda b: -(b[2] * b[3]))
        largest = max(max(b[2:]) for b in (main, *others))
        faces = [main]
        for box in others:
            if len(faces) == config.MAX_FACES_PER_FRAME:
                break
            large = max(box[2:]) >= config.FACE_MIN_SIDE_RATIO * largest
            if large and all(box_iou(box, k) < config.PERSON_IOU for k in faces):
                faces.append(box)
        return faces


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


# --- Who each face is, and how their mouth moves -------------------------------------------------


def _uniform_lbp_bins() -> np.ndarray:
    """Bin of each 8-neighbour LBP code: the 58 uniform patterns (at most two 0/1 changes around the
    circle) one bin each, all others bin 58."""
    bins = np.full(256, 58, np.intp)
    uniform = [code for code in range(256) if bin(code ^ ((code >> 1) | ((code & 1) << 7))).count("1") <= 2]
    bins[uniform] = np.arange(len(uniform))
    return bins


_LBP_BINS = _uniform_lbp_bins()
_LBP_GRID = 4


@functools.lru_cache(maxsize=4)
def _lbp_cells(n: int) -> np.ndarray:
    """[n, n]: the first histogram bin of the grid cell of each of n x n LBP codes."""
    cell = np.arange(n) * _LBP_GRID // n
    return (cell[:, None] * _LBP_GRID + cell[None, :]) * 59
# The 8 neighbours of a pixel, in order around it (dy, dx).
_LBP_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def face_descriptor(crop: np.ndarray) -> np.ndarray:
    """Appearance of a uint8 FACE_SIZE crop: histograms of uniform LBP codes (radius 1, 8 neighbours)
    over a 4 x 4 grid, square-rooted (Hellinger), centred and L2-normalised: [16 x 59] float32, whose
    dot products are correlations. Monotonic changes of brightness do not change it; a different face
    does. Centring matters: all faces' LBP histograms look alike (uncentred, two different faces
    score 0.79, their own frames 0.91; centred 0.53 and 0.80)."""
    centre = crop[1:-1, 1:-1]
    n = centre.shape[0]
    code = np.zeros(centre.shape, np.uint8)
    for bit, (dy, dx) in enumerate(_LBP_NEIGHBOURS):
        code |= (crop[1 + dy : 1 + dy + n, 1 + dx : 1 + dx + n] >= centre).view(np.uint8) << bit
    histogram = np.bincount((_lbp_cells(n) + _LBP_BINS[code]).ravel(), minlength=_LBP_GRID * _LBP_GRID * 59)
    histogram = np.sqrt(histogram.astype(np.float32))
    histogram -= histogram.mean()
    return histogram / max(float(np.linalg.norm(histogram)), 1e-12)


def mouth_motion(before: np.ndarray, after: np.ndarray, max_shift: int = 3) -> float:
    """How much the mouth moved between two uint8 FACE_SIZE crops of one face: the mean absolute grey
    difference of their lower part (from 7/12 of the height down: mouth and chin), after aligning
    their upper part (eyes and nose, which speaking does not move) by up to `max_shift` px each way.
    Best on crops of the same frame region (PersonTracker crops both frames with the same box)."""
    size, m = before.shape[0], max_shift
    eyes, mouth = size * 13 // 24, size * 7 // 12
    scores = cv2.matchTemplate(before[: eyes + m], after[m:eyes, m : size - m], cv2.TM_SQDIFF)
    dy, dx = np.unravel_index(int(np.argmin(scores)), scores.shape)
    dy, dx = int(dy) - m, int(dx) - m
    lower = after[mouth : size - m, m : size - m]
    shifted = before[mouth + dy : size - m + dy, m + dx : size - m + dx]
    return float(cv2.mean(cv2.absdiff(lower, shifted))[0])


class PersonTracker:
    """Person ids of the faces of consecutive frames, decided frame by frame and never revised.

    A face continues the track (a person seen in the last PERSON_TRACK_GAP_S) whose last box overlaps
    it most, by at least PERSON_IOU (greedily, best overlap first, one face per person per frame).
    A face that continues none is compared by appearance (`face_descriptor`) with every person not yet
    in the frame: it is the most similar, at cosine similarity PERSON_SIMILARITY or more (greedily,
    most similar first), else a new person. Ids are 0, 1, 2, ... in order of first appearance; a
    person's appearance is the mean descriptor of their faces so far: their first face and every
    DESCRIBE_EVERY-th after it, and every face that was compared by appearance (a descriptor costs
    about as much as the rest of a face row's bookkeeping together; faces tracked by overlap, most
    faces, need none).

    Mouth motion compares a face with the person's previous face (seen PERSON_TRACK_GAP_S ago at
    most): the frame is cropped again with the previous face's box, so that both crops show the same
    region of the frame (the detector's boxes jitter by 10 % from frame to frame, which alone changes
    a 48 px crop as much as an opening mouth), and `mouth_motion` compares the two. A person found
    elsewhere (their previous box overlaps theirs by less than PERSON_IOU) is compared crop to crop.
    """

    DESCRIBE_EVERY = 4  # faces: 2 s of video at FRAME_INTERVAL_S

    def __init__(self):
        self.boxes: list[Box] = []  # per person: their last box,
        self.times: list[float] = []  # when they were last seen,
        self.crops: list[np.ndarray] = []  # their last crop (uint8),
        self.faces: list[int] = []  # how many faces they have had,
        self.appearance: list[np.ndarray] = []  # the sum of the descriptors of the faces described

    def assign(
        self, t: float, grey: np.ndarray, boxes: list[Box], crops: list[np.ndarray]
    ) -> tuple[list[int], list[float]]:
        """The person of each face of the frame `grey` at `t` (boxes and their uint8 crops), and their
        mouth motion since that person's previous face (-1: none in the last PERSON_TRACK_GAP_S)."""
        ids = [-1] * len(boxes)
        taken: set[int] = set()
        recent = [p for p in range(len(self.boxes)) if t - self.times[p] <= config.PERSON_TRACK_GAP_S]
        overlaps = [(box_iou(box, self.boxes[p]), f, p) for f, box in enumerate(boxes) for p in recent]
        self._greedy(ids, taken, [o for o in overlaps if o[0] >= config.PERSON_IOU])
        unmatched = [f for f in range(len(boxes)) if ids[f] < 0]
        descriptors = {f: face_descriptor(crops[f]) for f in unmatched}
        if unmatched:
            others = [p for p in range(len(self.boxes)) if p not in taken]
            similar = []
            for p in others:
                mean = self.appearance[p] / max(float(np.linalg.norm(self.appearance[p])), 1e-12)
                similar += [(float(descriptors[f] @ mean), f, p) for f in unmatched]
            self._greedy(ids, taken, [s for s in similar if s[0] >= config.PERSON_SIMILARITY])
        mouths = []
        for f, (box, crop) in enumerate(zip(boxes, crops)):
            p = ids[f]
            if p < 0:  # a new person
                p = ids[f] = len(self.boxes)
                self.boxes.append(box)
                self.times.append(t)
                self.crops.append(crop)
                self.faces.append(0)
                self.appearance.append(np.zeros_like(descriptors[f]))
            if self.times[p] < t and t - self.times[p] <= config.PERSON_TRACK_GAP_S:
                last = self.boxes[p]
                same_place = box_iou(last, box) >= config.PERSON_IOU
                mouths.append(mouth_motion(self.crops[p], crop_face(grey, last) if same_place else crop))
            else:
                mouths.append(-1.0)
            self.boxes[p], self.times[p], self.crops[p] = box, t, crop
            if f in descriptors or self.faces[p] % self.DESCRIBE_EVERY == 0:
                described = descriptors[f] if f in descriptors else face_descriptor(crop)
                self.appearance[p] = self.appearance[p] + described
            self.faces[p] += 1
        return ids, mouths

    @staticmethod
    def _greedy(ids: list[int], taken: set[int], candidates: list[tuple[float, int, int]]) -> None:
        """Gives each face its best free person among `candidates` (score, face, person), best score first."""
        for _, f, p in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
            if ids[f] < 0 and p not in taken:
                ids[f] = p
                taken.add(p)


# --- Face rows, frame by frame -------------------------------------------------------------------


def empty_rows(boxes: bool = False) -> Rows:
    """No face rows (the shapes and types of FaceRows' arrays)."""
    rows = {
        "FACES": np.zeros((0, 1, config.FACE_SIZE, config.FACE_SIZE), np.float32),
        "FACE_TIMES": np.zeros(0, np.float32),
        "FACE_PERSON": np.zeros(0, np.int64),
        "FACE_MAIN": np.zeros(0, bool),
        "FACE_MOUTH": np.zeros(0, np.float32),
    }
    if boxes:
        rows["FACE_BOXES"] = np.zeros((0, 4), np.int64)
    return rows


def join_rows(parts: list[Rows | None], boxes: bool = False) -> Rows:
    """Face rows one after another (None: no rows)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return empty_rows(boxes)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


class FaceRows:
    """The face rows of a video whose sampled frames come one at a time (a live stream) or all at once.

    `add(t, grey)` takes the next frame (times increasing). Frames are searched in batches of up to
    `detector.batch_size` consecutive frames of the same size (FaceTracker): `add` returns the rows of
    the batch it completes (a full batch, as soon as it is full, or the one before a change of size),
    else None; `finish()` returns those of the last, partial batch (None when there is none). Rows:
    FACES [N, 1, S, S] normalised crops, FACE_TIMES [N] float32 seconds, FACE_PERSON [N] int64
    (PersonTracker), FACE_MAIN [N] bool (the frame's main face, the largest: exactly the single-face
    rows the pipeline has always had), FACE_MOUTH [N] float32 (mouth_motion; -1: none), the faces of
    each frame in frame order, main face first. Every decision looks only at the frames before and
    in the batch, so the rows do not depend on how the frames were fed.

    `done_until`: every frame before this time (compared as FACE_TIMES are, in float32) has had its
    rows returned: the first pending frame's time; just over the last frame's when none is pending
    (a later frame can still come); -inf before the first frame. With `boxes`, the rows also have
    FACE_BOXES [N, 4] int64: each face's x, y, w, h in its frame (tests, plots; not a model output).
    """

    def __init__(self, detector, *, boxes: bool = False):
        self.detector = detector
        self.boxes = boxes
        self.tracker = FaceTracker(detector)
        self.people = PersonTracker()
        self.pending: list[tuple[float, np.ndarray]] = []
        self.last_t = -math.inf

    @property
    def done_until(self) -> float:
        """Every frame whose FACE_TIMES (float32) is under this has had its rows returned."""
        if self.pending:
            return float(np.float32(self.pending[0][0]))
        if self.last_t == -math.inf:
            return -math.inf
        return float(np.nextafter(np.float32(self.last_t), np.float32(np.inf)))

    def add(self, t: float, grey: np.ndarray) -> Rows | None:
        parts = []
        if self.pending and grey.shape != self.pending[0][1].shape:
            parts.append(self._search())
        self.pending.append((float(t), grey))
        self.last_t = float(t)
        if len(self.pending) >= self.detector.batch_size:
            parts.append(self._search())
        return join_rows(parts, self.boxes) if parts else None

    def finish(self) -> Rows | None:
        return self._search() if self.pending else None

    def flush_until(self, t: float) -> Rows | None:
        """The rows of the pending frames before `t`, searched now as a batch of their own (a live
        stream's low-latency cut, which must not wait for the batch to fill); later frames stay pending."""
        before = [frame for frame in self.pending if np.float32(frame[0]) < np.float32(t)]
        if not before:
            return None
        later, self.pending = self.pending[len(before) :], before
        rows = self._search()
        self.pending = later
        return rows

    def _search(self) -> Rows:
        batch, self.pending = self.pending, []
        crops, times, persons, main, mouths, found = [], [], [], [], [], []
        for (t, grey), boxes in zip(batch, self.tracker.find_all([grey for _, grey in batch])):
            if not boxes:
                continue
            found += boxes
            frame_crops = [crop_face(grey, box) for box in boxes]
            ids, moved = self.people.assign(t, grey, boxes, frame_crops)
            crops += frame_crops
            times += [t] * len(boxes)
            persons += ids
            main += [True] + [False] * (len(boxes) - 1)
            mouths += moved
        if not crops:
            return empty_rows(self.boxes)
        rows = {
            "FACES": normalise_faces(np.stack(crops)),
            "FACE_TIMES": np.asarray(times, np.float32),
            "FACE_PERSON": np.asarray(persons, np.int64),
            "FACE_MAIN": np.asarray(main, bool),
            "FACE_MOUTH": np.asarray(mouths, np.float32),
        }
        if self.boxes:
            rows["FACE_BOXES"] = np.asarray(found, np.int64).reshape(-1, 4)
        return rows


def video_faces(frames: Iterable[tuple[float, np.ndarray]], detector, *, boxes: bool = False) -> Rows:
    """The face rows (FaceRows) of a whole video's (time, grey frame) pairs. Frames are consumed a
    batch (`detector.batch_size`) at a time: only the small crops are kept. The largest face of each
    frame alone, as (crops, times): `main_faces(video_faces(...))`."""
    faces = FaceRows(detector, boxes=boxes)
    parts = [faces.add(t, grey) for t, grey in frames]
    parts.append(faces.finish())
    return join_rows(parts, boxes)


def main_faces(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """(crops [N, 1, S, S], times [N]) of the main face of each frame with a face: what video_faces
    returned before it returned every face."""
    main = rows["FACE_MAIN"]
    return rows["FACES"][main], rows["FACE_TIMES"][main]
