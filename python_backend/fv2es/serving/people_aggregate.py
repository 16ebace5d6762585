"""people_aggregate: PERSON_PAIRS, PAIR_SCORES, SEGMENT_TIMES -> PERSON_SEGMENTS, PERSON_SEGMENT_SCORES,
PERSON_SCORES (each person's duration-weighted overall)."""

from __future__ import annotations

from .. import stages
from .base import PipelineModel, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.people_aggregate(
            inputs["PERSON_PAIRS"], inputs["PAIR_SCORES"], inputs["SEGMENT_TIMES"], limits=self.limits
        )
