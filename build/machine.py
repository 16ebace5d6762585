"""The machine a number was measured on: every number in MODEL_CARD.md and BENCHMARKS.md names it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), e.g. "Intel(R) Xeon(R) Platinum 8488C"."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor() or "unknown CPU")


def cpu_description() -> str:
    """`<model name>, <n> cores`."""
    return f"{cpu_name()}, {os.cpu_count()} cores"
