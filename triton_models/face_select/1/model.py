"""Triton entry point of "face_select": fv2es.serving.torchscript, from the repository's one copy of the fv2es package."""

import os
import sys
from pathlib import Path


def runtime_folder() -> Path | None:
    """The folder that holds the repository's copy of fv2es: the ensemble's version folder, beside this
    model's folder. Only one that this server's user (or root) owns and no one else can write: a
    repository served from cloud storage is fetched model by model into temporary folders, where the
    path beside this model is anyone's to create; there the fv2es installed with Triton's Python (as
    in docker/Dockerfile) is used."""
    folder = Path(__file__).resolve().parents[2] / "fv2es" / "1"
    for path in (folder, folder / "fv2es"):
        try:
            info = path.stat()
        except OSError:
            return None
        if info.st_uid not in (0, os.getuid()) or info.st_mode & 0o022:
            return None
    return folder


# First on sys.path, so that an installed fv2es cannot shadow the code this model was built with.
if (folder := runtime_folder()) is not None:
    sys.path.insert(0, str(folder))

try:
    from fv2es.serving.torchscript import TritonPythonModel  # noqa: E402,F401
except ModuleNotFoundError as error:
    if error.name != "fv2es":
        raise
    raise ImportError("the fv2es runtime is neither in this repository's fv2es/1/fv2es (owned by this "
                      "server's user, not writable by others) nor installed in Triton's Python") from None
