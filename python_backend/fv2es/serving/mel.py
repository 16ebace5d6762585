"""mel: AUDIO, AUDIO_START, SEGMENT_TIMES -> MEL_CHUNKS [N, N_MELS, CHUNK_FRAMES], MEL_SEGMENT [N] (on GPU for KIND_GPU)."""

from __future__ import annotations

import torch

from .. import stages
from ..audio import mel_transform
from .base import PipelineModel, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        torch.set_num_threads(1)
        self.transform = mel_transform(self.device)
        self.max_duration_s = input_limits(self)["max_duration_s"]

    def process(self, inputs):
        return stages.mel(inputs["AUDIO"], inputs["SEGMENT_TIMES"], self.transform, self.device,
                          audio_start=inputs["AUDIO_START"], max_duration_s=self.max_duration_s)
