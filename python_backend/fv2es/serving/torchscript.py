"""One runner for every TorchScript model of the repository (encoders, fusion and group).

Loads `<version>/model.pt`, passes the config's inputs in their config order to `forward` and names
the outputs in config order. With max_batch_size > 0 the rows of all requests that the dynamic
batcher hands over are concatenated into one forward call and split back per request, which is what
makes batching across concurrent videos pay off.

Every request's inputs are validated first (fv2es.checks, chosen by the model's input names): an
index out of range reaches TorchScript's unchecked indexing, which can crash the stub process.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from .. import checks, modalities
from ..errors import InputError
from ..models import forward_arguments, prepare_for_inference, takes_dictionary
from ..models.checked import embedding_rows
from .base import PipelineModel, request_inputs

def input_check(model: "TritonPythonModel", loaded: torch.jit.ScriptModule) -> Callable[[dict[str, np.ndarray]], None]:
    """The validation of this model's inputs, by their names; a model without one is refused."""
    names = tuple(model.input_names)
    if "SCENE" in names:  # the group model: the audio and visual modalities of its config's entries
        entries = modalities.from_model(model.parameter)
        audio, visual = modalities.by_name("audio", entries), modalities.by_name("visual", entries)
        limits = checks.limits_from(model.parameter)
        return lambda x: checks.group_inputs(x, audio, visual, limits)
    if "FACE_PERSON" in names:  # the sparse face selection: the face rows and the other modalities' fusion inputs
        entries = modalities.from_model(model.parameter)
        limits = checks.limits_from(model.parameter)
        return lambda x: checks.face_select_inputs(x, entries, limits)
    if takes_dictionary(forward_arguments(loaded)):  # the fusion: its inputs are its modalities' features and indices
        entries = modalities.in_fusion_inputs(names, modalities.from_model(model.parameter))
        limits = checks.limits_from(model.parameter)
        return lambda x: checks.fusion_inputs(x, entries, limits)
    if names == ("MEL_CHUNKS",):
        return lambda x: checks.mel_chunks(x["MEL_CHUNKS"])
    if names == ("SPEECH_ROWS",):
        return lambda x: checks.speech_rows(x["SPEECH_ROWS"])
    if names == ("FACES",):
        return lambda x: checks.faces(x["FACES"])
    if names == ("TEXT_IDS", "TEXT_MASK"):
        vocab_size = int(model.parameter("vocab_size", "0")) or embedding_rows(loaded)
        if not vocab_size:
            raise RuntimeError(f"{model.name}: no vocabulary size (no word embedding in model.pt, no vocab_size parameter)")
        return lambda x: checks.text_tokens(x["TEXT_IDS"], x["TEXT_MASK"], vocab_size)
    raise RuntimeError(f"{model.name}: no input validation for inputs {', '.join(names)}")


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        threads = int(self.parameter("torch_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        self.input_names = [i["name"] for i in self.model_config["input"]]
        self.output_names = [o["name"] for o in self.model_config["output"]]
        loaded = torch.jit.load(str(self.directory / "model.pt"), map_location=self.device)
        self.check = input_check(self, loaded)
        self.by_name = takes_dictionary(forward_arguments(loaded))
        self.model = prepare_for_inference(loaded, self.device)
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
                on_device = [a.to(self.device) for a in sliced]
                result = self.model(dict(zip(self.input_names, on_device))) if self.by_name else self.model(*on_device)
                parts.append([r.cpu() for r in (result if isinstance(result, (tuple, list)) else (result,))])
        return {name: torch.cat([p[i] for p in parts]).numpy() for i, name in enumerate(self.output_names)}

    def process(self, inputs):
        self.check(inputs)
        return self.run(inputs)

    def execute(self, requests):
        if not self.batched or len(requests) == 1:
            return super().execute(requests)
        # Each request is validated alone: a bad one gets its own error, the others run together.
        responses: list = [None] * len(requests)
        valid: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                inputs = request_inputs(request)
                self.check(inputs)
                valid.append((i, inputs))
            except InputError as exc:
                responses[i] = self.invalid_input(exc)
            except Exception:  # noqa: BLE001
                responses[i] = self.internal_error()
        if not valid:
            return responses
        try:
            merged = self.run({name: np.concatenate([inputs[name] for _, inputs in valid]) for name in self.input_names})
        except Exception:  # noqa: BLE001 - fall back to one call per request, each with its own error
            for i, inputs in valid:
                responses[i] = self.respond(inputs)
            return responses
        bounds = np.cumsum([0] + [inputs[self.input_names[0]].shape[0] for _, inputs in valid])
        for k, (i, _) in enumerate(valid):
            tensors = [
                pb_utils.Tensor(name, value[bounds[k] : bounds[k + 1]].astype(self.output_dtypes[name], copy=False))
                for name, value in merged.items()
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
