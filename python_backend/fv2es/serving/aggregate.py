"""aggregate: SEGMENT_SCORES, SEGMENT_TIMES -> VIDEO_SCORES (duration-weighted), LABELS, MODEL_INFO."""

from __future__ import annotations

import json

import numpy as np

from .. import config, stages
from .base import PipelineModel, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.labels = (self.directory.parent / self.parameter("labels_file", "labels.txt")).read_text().split()
        info = {"labels": self.labels, "weights": self.parameter("weights", "unknown"), "asr_model": config.ASR_MODEL}
        self.model_info = np.array([json.dumps(info).encode()], dtype=np.object_)
        self.limits = input_limits(self)

    def process(self, inputs):
        scores = stages.aggregate(
            inputs["SEGMENT_SCORES"], inputs["SEGMENT_TIMES"], self.labels, limits=self.limits
        )
        return {**scores, "MODEL_INFO": self.model_info}
