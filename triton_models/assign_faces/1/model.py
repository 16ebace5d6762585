"""Triton entry point of "assign_faces": fv2es.serving.assign_faces, from the fv2es package in this folder."""

from fv2es.serving.assign_faces import TritonPythonModel  # noqa: F401
