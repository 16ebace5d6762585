"""One runner for every TorchScript model of the repository (encoders and fusion).

Loads `<version>/model.pt`, passes the config's inputs in their config order to `forward` and names
the outputs in config order. With max_batch_size > 0 the rows of all requests that the dynamic
batcher hands over are concatenated into one forward call and split back per request, which is what
makes batching across concurrent videos pay off.
"""

from __future__ import annotations

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from ..models import load_for_inference
from .base import PipelineModel


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        threads = int(self.parameter("torch_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = load_for_inference(str(self.directory / "model.pt"), self.device)
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.output_names = [o["name"] for o in self.model_config["output"]]
        self.batched = int(self.model_config.get("max_batch_size", 0)) > 0
        self.rows_per_forward = int(self.parameter("rows_per_forward", "0"))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in self.input_names]
        # A batched model's rows are independent: run them rows_per_forward (config
        # ENCODER_ROWS_PER_FORWARD) at a time, so the activations of a 20-minute video's 2,400 faces
        # never sit in memory at once. An unbatched model, the fusion, takes its inputs whole.
        rows = len(args[0]) if self.batched else 1
        step = self.rows_per_forward if self.batched and self.rows_per_forward > 0 else max(1, rows)
        parts = []
        with torch.inference_mode():
            for start in range(0, max(1, rows), step):
                sliced = [a[start : start + step] for a in args] if self.batched else args
                result = self.model(*(a.to(self.device) for a in sliced))
                parts.append([r.cpu() for r in (result if isinstance(result, (tuple, list)) else (result,))])
        return {name: torch.cat([p[i] for p in parts]).numpy() for i, name in enumerate(self.output_names)}

    def process(self, inputs):
        return self.run(inputs)

    def execute(self, requests):
        if not self.batched or len(requests) == 1:
            return super().execute(requests)
        per_request = [{t.name(): t.as_numpy() for t in r.inputs()} for r in requests]
        sizes = [next(iter(inputs.values())).shape[0] for inputs in per_request]
        try:
            merged = self.run({name: np.concatenate([inputs[name] for inputs in per_request]) for name in self.input_names})
        except Exception:  # noqa: BLE001 - fall back to one call per request, each with its own error
            return super().execute(requests)
        bounds = np.cumsum([0] + sizes)
        responses = []
        for i in range(len(requests)):
            tensors = [
                pb_utils.Tensor(name, value[bounds[i] : bounds[i + 1]].astype(self.output_dtypes[name], copy=False))
                for name, value in merged.items()
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
