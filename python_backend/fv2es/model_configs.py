"""config.pbtxt files as Triton's own ModelConfig messages (model_config.proto, which tritonclient ships
compiled): written, read and edited through protobuf's text format, never by string surgery."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType
InstanceKind = model_config_pb2.ModelInstanceGroup.Kind


def read(path: Path) -> ModelConfig:
    return text_format.Parse(Path(path).read_text(), ModelConfig())


def to_text(model_config: ModelConfig, header: str = "") -> str:
    """The config as Triton reads it, after `header` (comment lines)."""
    return header + text_format.MessageToString(model_config)


def parameters(model_config: ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in model_config.parameters.items()}


def set_parameters(model_config: ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        model_config.parameters[key].string_value = value
