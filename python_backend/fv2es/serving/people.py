"""people: the faces' persons, the segments and each modality's rows -> SEGMENT_SPEAKER and the inputs
of the fusion run on (person, segment) pairs (fv2es.people)."""

from __future__ import annotations

from .. import modalities, stages
from .base import PipelineModel, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.limits = input_limits(self)
        self.modalities = modalities.from_model(self.parameter)

    def process(self, inputs):
        return stages.people(inputs, self.modalities, limits=self.limits)
