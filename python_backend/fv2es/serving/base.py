"""What every Python-backend model of the pipeline shares: config parsing, devices, error replies."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import config
from ..errors import InputError


def _error(message: str, code_name: str) -> "pb_utils.TritonError":
    code = getattr(pb_utils.TritonError, code_name, None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class PipelineModel:
    """Base class: subclasses implement `setup()` and `process(inputs) -> outputs` for one request.

    `process` gets a dict of numpy inputs and returns a dict of numpy outputs, named as in
    config.pbtxt. An `InputError` becomes an INVALID_ARG reply for that request alone; any other
    exception an INTERNAL one; the other requests of the batch are answered normally.
    """

    def initialize(self, args: dict) -> None:
        self.model_config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.directory = Path(args["model_repository"]) / args["model_version"]
        self.parameters = {k: v["string_value"] for k, v in self.model_config.get("parameters", {}).items()}
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = f"cuda:{args['model_instance_device_id']}" if gpu else "cpu"
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.model_config["output"]
        }
        self.setup()

    def setup(self) -> None:
        pass

    def parameter(self, name: str, default: str) -> str:
        return self.parameters.get(name, default) or default

    def process(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        try:
            inputs = {t.name(): t.as_numpy() for t in request.inputs()}
            outputs = self.process(inputs)
            tensors = [pb_utils.Tensor(name, np.asarray(value, dtype=self.output_dtypes[name])) for name, value in outputs.items()]
            return pb_utils.InferenceResponse(output_tensors=tensors)
        except InputError as exc:
            return pb_utils.InferenceResponse(error=_error(f"{self.name}: {exc}", "INVALID_ARG"))
        except Exception as exc:  # noqa: BLE001 - reported to the client, the server keeps serving
            pb_utils.Logger.log_error(f"{self.name}: {traceback.format_exc()}")
            return pb_utils.InferenceResponse(error=_error(f"{self.name}: internal error: {exc!r}", "INTERNAL"))


def bytes_input(array: np.ndarray, name: str) -> bytes:
    """The single bytes element of a TYPE_STRING input of shape [1]."""
    if array.size != 1:
        raise InputError(f"{name} must hold exactly one element (the whole file), got {array.size}")
    value = array.reshape(-1)[0]
    return value if isinstance(value, bytes) else bytes(value)


def input_limits(model: PipelineModel) -> dict:
    """The size and duration limits from the model's config parameters (written from fv2es.config)."""
    return {
        "max_bytes": int(model.parameter("max_input_bytes", str(config.MAX_INPUT_BYTES))),
        "max_duration_s": float(model.parameter("max_duration_s", str(config.MAX_DURATION_S))),
    }
