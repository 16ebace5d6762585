"""face_crop: VIDEO bytes, DURATION -> FACES, FACE_TIMES.

Decodes the frames itself, one sampled frame at a time, and keeps only the face crops: it runs in
parallel with speech recognition, and its memory does not grow with the video's length. DURATION
(from demux) is its cue to start: a file that demux rejects never reaches it, so a bad input fails
in exactly one step of the ensemble (Triton 2.51 can leave a request unanswered when two parallel
steps fail).
"""

from __future__ import annotations

from .. import config, stages
from ..faces import FaceDetector
from .base import PipelineModel, bytes_input, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.detector = FaceDetector(self.parameter("cascade", config.FACE_CASCADE))
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.face_crop(bytes_input(inputs["VIDEO"], "VIDEO"), self.detector, duration=inputs["DURATION"], **self.limits)
