"""assign_faces: FACE_TIMES, FACE_MAIN, SEGMENT_TIMES -> FACE_SEGMENT, SEGMENT_HAS_FACE (once both are known)."""

from __future__ import annotations

from .. import stages
from .base import PipelineModel, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.assign_faces(inputs["FACE_TIMES"], inputs["FACE_MAIN"], inputs["SEGMENT_TIMES"], limits=self.limits)
