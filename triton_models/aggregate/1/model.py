"""Triton entry point of "aggregate": fv2es.serving.aggregate, from the fv2es package in this folder."""

from fv2es.serving.aggregate import TritonPythonModel  # noqa: F401
