"""face_crop: FRAMES, FRAME_TIMES, SEGMENT_TIMES -> FACES, FACE_SEGMENT, SEGMENT_HAS_FACE.

Only frames where a face was found go to the visual encoder; a segment without any face is flagged
and fused from its other modalities.
"""

from __future__ import annotations

import numpy as np

from .. import config
from ..faces import FaceDetector, face_crops, normalise_faces
from ..segments import frame_segments
from .base import PipelineModel


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.detector = FaceDetector(self.parameter("cascade", config.FACE_CASCADE))

    def process(self, inputs):
        segment_times = inputs["SEGMENT_TIMES"]
        owners = frame_segments(inputs["FRAME_TIMES"], segment_times)
        faces, found = face_crops(inputs["FRAMES"], self.detector)
        keep = found & (owners >= 0)
        faces, owners = faces[keep], owners[keep]
        has_face = np.zeros(len(segment_times), bool)
        has_face[owners] = True
        if faces.shape[0] == 0:
            # No face anywhere: one neutral grey row keeps the encoder's batch non-empty; segment -1 = ignore.
            faces = normalise_faces(np.full((1, config.FACE_SIZE, config.FACE_SIZE), config.FACE_MEAN, np.uint8))
            owners = np.array([-1], np.int64)
        return {"FACES": faces, "FACE_SEGMENT": owners, "SEGMENT_HAS_FACE": has_face}
