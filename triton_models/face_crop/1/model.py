"""Triton entry point of "face_crop": fv2es.serving.face_crop, from the fv2es package in this folder."""

from fv2es.serving.face_crop import TritonPythonModel  # noqa: F401
