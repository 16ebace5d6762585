"""publish: an ensemble output that steps read, under its internal name -> the same values under its
public name (no step of the ensemble reads an ensemble output: fv2es_build.repository.ensemble_steps).

Its inputs are optional: each copy step of the ensemble gives those of one producer, and gets back the outputs at the
same position in config.pbtxt.
"""

from __future__ import annotations

from .. import checks
from ..errors import InputError
from .base import PipelineModel


class TritonPythonModel(PipelineModel):
    def setup(self) -> None:
        inputs, outputs = self.model_config["input"], self.model_config["output"]
        self.outputs = {i["name"]: o["name"] for i, o in zip(inputs, outputs, strict=True)}
        # The config's dims (JSON strings or numbers), -1: any size.
        self.dims = {i["name"]: tuple(None if int(d) < 0 else int(d) for d in i["dims"]) for i in inputs}

    def process(self, inputs):
        if not inputs:
            raise InputError(f"no input: give one of {', '.join(self.outputs)}")
        copies = {}
        for name, value in inputs.items():
            value = checks.shape(value, name, self.dims[name])
            if value.dtype.kind == "f":
                checks.finite(value, name)
            copies[self.outputs[name]] = value
        return copies
