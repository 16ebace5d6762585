"""Triton Python-backend models. Each `triton_models/<name>/1/model.py` imports one class from here.

These modules import `triton_python_backend_utils`, which exists only inside Triton's Python stub.
"""
