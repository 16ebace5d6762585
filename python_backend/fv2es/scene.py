"""The whole frame at low resolution: what the group model (fv2es.models.group) sees of a scene
beside its faces and its voices. One grey SCENE_SIZE x SCENE_SIZE thumbnail per sampled frame,
from the frames the face step decodes anyway (a file: stages.face_crop; a live stream: the stream
model), so it costs no decoding. Training composes its scenes' frames with the same `thumbnail`.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import cv2
import numpy as np

from . import config

KEYS = ("SCENE", "SCENE_TIMES")


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """A grey frame (uint8 [H, W]) -> [SCENE_SIZE, SCENE_SIZE] uint8, squeezed to a square (the
    whole frame stays in view)."""
    return cv2.resize(np.ascontiguousarray(grey), (config.SCENE_SIZE, config.SCENE_SIZE), interpolation=cv2.INTER_AREA)


def normalise(thumbnails: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S] -> float32 [N, 1, S, S], the group model's input (scaled as the faces are)."""
    return ((thumbnails.astype(np.float32) - config.FACE_MEAN) / config.FACE_STD)[:, None]


class SceneRows:
    """The thumbnails of the frames seen so far, with their times."""

    def __init__(self):
        self.thumbnails: list[np.ndarray] = []
        self.times: list[float] = []

    def add(self, t: float, grey: np.ndarray) -> None:
        self.thumbnails.append(thumbnail(grey))
        self.times.append(t)

    def watch(self, frames: Iterable[tuple[float, np.ndarray]]) -> Iterator[tuple[float, np.ndarray]]:
        """The frames, passed on, each one added on its way."""
        for t, grey in frames:
            self.add(t, grey)
            yield t, grey

    def take(self, end_s: float | None = None) -> dict[str, np.ndarray]:
        """SCENE [N, 1, S, S] and SCENE_TIMES [N] of the frames before `end_s` (all when None), removed
        from those kept; with none, one grey placeholder row at time -1 (in no segment)."""
        n = len(self.times) if end_s is None else int(np.searchsorted(np.asarray(self.times), end_s, side="left"))
        thumbnails, times = self.thumbnails[:n], self.times[:n]
        del self.thumbnails[:n], self.times[:n]
        if not times:
            grey = np.full((1, config.SCENE_SIZE, config.SCENE_SIZE), config.FACE_MEAN, np.uint8)
            return {"SCENE": normalise(grey), "SCENE_TIMES": np.array([-1.0], np.float32)}
        return {"SCENE": normalise(np.stack(thumbnails)), "SCENE_TIMES": np.asarray(times, np.float32)}
