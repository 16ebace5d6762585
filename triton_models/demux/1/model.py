"""Triton entry point of "demux": fv2es.serving.demux, from the fv2es package in this folder."""

from fv2es.serving.demux import TritonPythonModel  # noqa: F401
