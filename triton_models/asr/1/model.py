"""Triton entry point of "asr": fv2es.serving.asr, from the fv2es package in this folder."""

from fv2es.serving.asr import TritonPythonModel  # noqa: F401
