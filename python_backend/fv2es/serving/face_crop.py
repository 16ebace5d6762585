"""face_crop: VIDEO bytes, DURATION -> FACES, FACE_TIMES.

Decodes the frames itself, one sampled frame at a time, and keeps only the face crops: it runs in
parallel with speech recognition, and its memory does not grow with the video's length. DURATION
(from demux) is its cue to start: a file that demux rejects never reaches it, so a bad input fails
in exactly one step of the ensemble (Triton 2.51 can leave a request unanswered when two parallel
steps fail).

The face detector is the "detector" parameter (config.FACE_DETECTOR: "mtcnn" or "haar"); MTCNN runs
on the instance's device (cuda:<id> for a KIND_GPU instance, cpu otherwise).
"""

from __future__ import annotations

from .. import config, stages
from ..faces import make_face_detector
from .base import PipelineModel, bytes_input, input_limits


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        name, cascade = self.parameter("detector", config.FACE_DETECTOR), self.parameter("cascade", config.FACE_CASCADE)
        if name == "mtcnn" and self.device == "cpu":  # the Haar fallback stays free of torch
            import torch

            torch.set_num_threads(config.MTCNN_CPU_THREADS)
        self.detector = make_face_detector(name, self.device, cascade)
        self.limits = input_limits(self)

    def process(self, inputs):
        return stages.face_crop(bytes_input(inputs["VIDEO"], "VIDEO"), self.detector, duration=inputs["DURATION"], limits=self.limits)
