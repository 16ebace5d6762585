"""demux: VIDEO bytes -> AUDIO, FRAMES, FRAME_TIMES, DURATION."""

from __future__ import annotations

import numpy as np

from .. import config
from ..media import demux
from .base import PipelineModel, bytes_input


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        self.max_bytes = int(self.parameter("max_input_bytes", str(config.MAX_INPUT_BYTES)))
        self.max_duration_s = float(self.parameter("max_duration_s", str(config.MAX_DURATION_S)))

    def process(self, inputs):
        media = demux(bytes_input(inputs["VIDEO"], "VIDEO"), max_bytes=self.max_bytes, max_duration_s=self.max_duration_s)
        return {
            "AUDIO": media.audio,
            "FRAMES": media.frames,
            "FRAME_TIMES": media.frame_times,
            "DURATION": np.array([media.duration], np.float32),
        }
