"""demux: VIDEO bytes -> AUDIO, DURATION (frames are decoded by face_crop, in parallel)."""

from __future__ import annotations

from .. import stages
from .base import PipelineModel, bytes_input, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.demux(bytes_input(inputs["VIDEO"], "VIDEO"), limits=self.limits)
