"""Triton entry point of "publish": fv2es.serving.publish, from the fv2es package in this folder."""

import sys
from pathlib import Path

# Triton appends this folder to sys.path; first, so that an fv2es installed in Triton's Python (as in
# docker/Dockerfile, for the launcher) cannot shadow the code this model was built with.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fv2es.serving.publish import TritonPythonModel  # noqa: E402,F401
