"""people_aggregate: PERSON_PAIRS, PAIR_SCORES, SEGMENT_TIMES -> PERSON_SEGMENTS, PERSON_SEGMENT_SCORES,
PERSON_SCORES (each person's duration-weighted overall)."""

from __future__ import annotations

from .. import stages
from .base import PipelineModel, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.max_duration_s = input_limits(self)["max_duration_s"]

    def process(self, inputs):
        return stages.people_aggregate(
            inputs["PERSON_PAIRS"], inputs["PAIR_SCORES"], inputs["SEGMENT_TIMES"], max_duration_s=self.max_duration_s
        )
