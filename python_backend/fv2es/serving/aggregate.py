"""aggregate: SEGMENT_SCORES, SEGMENT_TIMES -> VIDEO_SCORES (duration-weighted), LABELS, MODEL_INFO."""

from __future__ import annotations

import json

import numpy as np

from ..segments import aggregate_scores
from .base import PipelineModel


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.labels = (self.directory.parent / self.parameter("labels_file", "labels.txt")).read_text().split()
        info = {"labels": self.labels, "weights": self.parameter("weights", "unknown")}
        self.model_info = np.array([json.dumps(info).encode()], dtype=np.object_)

    def process(self, inputs):
        scores = inputs["SEGMENT_SCORES"]
        if scores.shape[1] != len(self.labels):
            raise RuntimeError(f"fusion gives {scores.shape[1]} scores but {len(self.labels)} labels are shipped")
        return {
            "VIDEO_SCORES": aggregate_scores(scores, inputs["SEGMENT_TIMES"]),
            "LABELS": np.array([label.encode() for label in self.labels], dtype=np.object_),
            "MODEL_INFO": self.model_info,
        }
