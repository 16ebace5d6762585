"""What every Python-backend model of the pipeline shares: config parsing, devices, error replies."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from .. import checks
from ..errors import InputError


MAX_MESSAGE_CHARS = 250  # an error message is a sentence for the client, never a dump


def _error(message: str, code_name: str) -> "pb_utils.TritonError":
    code = getattr(pb_utils.TritonError, code_name, None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


def short(message: str) -> str:
    """One line of at most MAX_MESSAGE_CHARS characters."""
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_MESSAGE_CHARS else line[: MAX_MESSAGE_CHARS - 3] + "..."


class PipelineModel:
    """Base class: subclasses implement `setup()` and `process(inputs) -> outputs` for one request.

    `process` gets a dict of numpy inputs and returns a dict of numpy outputs, named as in
    config.pbtxt; it validates its inputs first (fv2es.checks) and raises `InputError` for a bad
    one, which becomes an INVALID_ARG reply with the error's short text, for that request alone. Any
    other exception is a fault of the server: its traceback goes to the server log and the client
    gets only "<model>: internal error (details in the server log)", never the exception's text,
    which can hold file paths and code. The other requests of the batch are answered normally.
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
            inputs = request_inputs(request)
        except Exception:  # noqa: BLE001
            return self.internal_error()
        return self.respond(inputs)

    def respond(self, inputs: dict[str, np.ndarray]):
        """The response to one request's inputs: its outputs, or its error."""
        try:
            outputs = self.process(inputs)
            tensors = [pb_utils.Tensor(name, np.asarray(value, dtype=self.output_dtypes[name])) for name, value in outputs.items()]
            return pb_utils.InferenceResponse(output_tensors=tensors)
        except InputError as exc:
            return self.invalid_input(exc)
        except Exception:  # noqa: BLE001 - logged, a short reply to the client, the server keeps serving
            return self.internal_error()

    def invalid_input(self, exc: InputError) -> "pb_utils.InferenceResponse":
        return pb_utils.InferenceResponse(error=_error(short(f"{self.name}: {exc}"), "INVALID_ARG"))

    def internal_error(self) -> "pb_utils.InferenceResponse":
        """The reply for an unexpected exception; call it inside the `except` block (it logs the traceback)."""
        pb_utils.Logger.log_error(f"{self.name}: internal error: {traceback.format_exc()}")
        return pb_utils.InferenceResponse(error=_error(f"{self.name}: internal error (details in the server log)", "INTERNAL"))


def request_inputs(request) -> dict[str, np.ndarray]:
    return {t.name(): t.as_numpy() for t in request.inputs()}


def bytes_input(array: np.ndarray, name: str) -> bytes:
    """The single bytes element of a TYPE_STRING input of shape [1]."""
    if array.size != 1:
        raise InputError(f"{name} must hold exactly one element (the whole file), got {array.size}")
    value = array.reshape(-1)[0]
    return value if isinstance(value, bytes) else bytes(value)


def input_limits(model: PipelineModel) -> checks.Limits:
    """The size and duration limits from the model's config parameters (written from fv2es.config)."""
    return checks.limits_from(model.parameter)
