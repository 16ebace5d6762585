"""Triton entry point of "text_encoder": fv2es.serving.torchscript, from the fv2es package in this folder."""

from fv2es.serving.torchscript import TritonPythonModel  # noqa: F401
