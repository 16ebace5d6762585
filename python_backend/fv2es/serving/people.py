"""people: the faces' persons, the segments, their speech and text features -> SEGMENT_SPEAKER and the
inputs of the fusion run on (person, segment) pairs (fv2es.people)."""

from __future__ import annotations

from .. import stages
from .base import PipelineModel, input_limits

INPUTS = ("FACE_TIMES", "FACE_PERSON", "FACE_MOUTH", "SEGMENT_TIMES", "SEGMENT_HAS_SPEECH", "AUDIO_SEGMENT", "TEXT_FEATURES", "SEGMENT_SCORES")


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.people(*(inputs[name] for name in INPUTS), limits=self.limits)
