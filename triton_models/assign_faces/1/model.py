"""Triton entry point; the implementation is fv2es.serving.assign_faces."""

import sys
from pathlib import Path

# The repository layout: <root>/triton_models/<model>/<version>/model.py, code in <root>/python_backend.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python_backend"))

from fv2es.serving.assign_faces import TritonPythonModel  # noqa: E402,F401
