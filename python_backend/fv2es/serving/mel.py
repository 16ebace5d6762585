"""mel: AUDIO, SEGMENT_TIMES -> MEL_CHUNKS [N, N_MELS, CHUNK_FRAMES], MEL_SEGMENT [N] (on GPU for KIND_GPU)."""

from __future__ import annotations

import numpy as np
import torch

from .. import config
from ..audio import mel_transform, segment_mel_chunks
from .base import PipelineModel


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        torch.set_num_threads(1)
        self.transform = mel_transform(self.device)

    def process(self, inputs):
        audio = torch.from_numpy(inputs["AUDIO"].astype(np.float32, copy=False)).to(self.device)
        times = [(float(a), float(b)) for a, b in inputs["SEGMENT_TIMES"]]
        with torch.inference_mode():
            chunks, owners = segment_mel_chunks(audio, times, self.transform)
        if chunks.shape[0] == 0:
            # No audio: one silent row keeps the encoder's batch non-empty; segment -1 = ignore.
            chunks = torch.zeros(1, config.N_MELS, config.CHUNK_FRAMES)
            owners = torch.full((1,), -1, dtype=torch.int64)
        return {"MEL_CHUNKS": chunks.cpu().numpy(), "MEL_SEGMENT": owners.numpy()}
