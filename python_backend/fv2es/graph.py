"""The pipeline's building blocks: the tensors a step reads and writes, and a step (one model of
the ensemble). `fv2es.pipeline` and `fv2es.modalities` describe the graph with them."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import config


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's data type without "TYPE_": FP32, INT64, BOOL, STRING
    dims: tuple[int, ...]  # per request (without the batch dimension of a batched model)
    labels: str = ""  # the label_filename of scores (the file of their class names, pipeline.LABEL_FILES)
    optional: bool = False  # an input a request may leave out


def fp32(name: str, *dims: int) -> Tensor:
    return Tensor(name, "FP32", dims)


def int64(name: str, *dims: int) -> Tensor:
    return Tensor(name, "INT64", dims)


def boolean(name: str, *dims: int) -> Tensor:
    return Tensor(name, "BOOL", dims)


def string(name: str, *dims: int) -> Tensor:
    return Tensor(name, "STRING", dims)


@dataclass(frozen=True)
class Step:
    """One model of the ensemble. `runner` is the implementation, `fv2es.serving.<runner>` on the
    server and the runner of the same name in `fv2es.inprocess`; "torchscript" steps run the
    exported `<name>/1/model.pt`. Tensor names are the ensemble's, except where `sources` maps an
    input to the ensemble tensor it reads and `targets` an output to the ensemble tensor it writes."""

    name: str
    runner: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    sources: dict[str, str] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 0  # > 0: dynamic batching across requests
    kind: str = "KIND_CPU"
    parameters: dict[str, str] = field(default_factory=dict)
    model: str = ""  # the model this step runs when it is another step's (the same weights on other tensors)
    decoupled: bool = False  # answers with any number of responses per request (the live stream)

    @property
    def model_name(self) -> str:
        return self.model or self.name

    @property
    def serves_model(self) -> bool:
        """The step has its own model folder (a step that runs another step's model has none)."""
        return not self.model

    @property
    def torchscript(self) -> bool:
        return self.runner == "torchscript"

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def source(self, input_name: str) -> str:
        """The ensemble tensor an input reads."""
        return self.sources.get(input_name, input_name)

    def target(self, output_name: str) -> str:
        """The ensemble tensor an output writes."""
        return self.targets.get(output_name, output_name)

    def inputs_from(self, available) -> tuple["Tensor", ...]:
        """The inputs a call of the step gives: every required one, and each optional one whose
        source is in `available` (tensor names)."""
        return tuple(i for i in self.inputs if not i.optional or self.source(i.name) in available)

    @property
    def instance_count(self) -> int:
        return config.INSTANCE_COUNTS.get(self.name, 1)
