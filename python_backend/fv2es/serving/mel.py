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
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.mel(inputs["AUDIO"], inputs["SEGMENT_TIMES"], self.transform, self.device,
                          audio_start=inputs["AUDIO_START"], limits=self.limits)
