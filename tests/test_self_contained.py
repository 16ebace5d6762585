"""The built model repository is self-contained: copied alone out of the checkout and served by
stubs whose Python cannot import the checkout's package, it gives the same results."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from conftest import serving

from fv2es import config
from fv2es.tritonserver import REPOSITORY, EmbeddedServer
from fv2es_client import Fv2esClient

pytestmark = pytest.mark.slow  # a repository copy served by a server of its own


@pytest.fixture(scope="module")
def third_party_env(tmp_path_factory):
    """A virtual environment that sees this one's third-party packages but not the project: its
    site-packages lists ours as a plain path entry, so the .pth files there (among them the
    editable install of fv2es) are not processed."""
    env = tmp_path_factory.mktemp("stub-env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env


def env_python(env, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(env / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=env, timeout=120)


def test_the_environment_has_the_dependencies_but_not_the_project(third_party_env):
    assert env_python(third_party_env, "import torch, faster_whisper, av, cv2, transformers").returncode == 0
    for package in ("fv2es", "fv2es_client", "fv2es_build"):
        result = env_python(third_party_env, f"import {package}")
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, package


def test_a_copied_repository_serves_the_same_results(tmp_path, third_party_env, client, sample_bytes, monkeypatch):
    copy = tmp_path / "models"
    shutil.copytree(REPOSITORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    expected = client.analyze(sample_bytes)  # the checkout's repository, as `make demo` serves it
    with serving(EmbeddedServer(copy, stub_env=third_party_env)) as server, Fv2esClient(server.grpc_url) as copied:
        result = copied.analyze(sample_bytes)
    assert [s.transcript for s in result.segments] == [s.transcript for s in expected.segments]
    got = np.array([[s.scores[label] for label in config.LABELS] for s in result.segments])
    want = np.array([[s.scores[label] for label in config.LABELS] for s in expected.segments])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert result.emotion == expected.emotion and result.model_info == expected.model_info


def shim_runtime_folder(model_py) -> object:
    """The written model.py's runtime_folder(), run as the stub runs it (without the import after it)."""
    text = model_py.read_text()
    namespace = {"__file__": str(model_py), "__name__": "shim"}
    exec(compile(text[: text.index("# First on sys.path")], str(model_py), "exec"), namespace)  # noqa: S102
    return namespace["runtime_folder"]()


def test_a_model_imports_the_repositorys_runtime_only_where_no_one_else_can_write(tmp_path):
    """A repository fetched from cloud storage lands model by model in temporary folders, where the
    path beside a model is anyone's to create: a runtime there that others can write is not imported."""
    copy = tmp_path / "models"
    shutil.copytree(REPOSITORY, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    model_py, runtime = copy / "asr" / "1" / "model.py", copy / config.ENSEMBLE_NAME / "1"
    assert not (copy / "asr" / "1" / "fv2es").exists(), "one copy of the runtime, not one per model"
    assert shim_runtime_folder(model_py) == runtime
    for path in (runtime, runtime / "fv2es"):
        path.chmod(0o777)
        assert shim_runtime_folder(model_py) is None, path
        path.chmod(0o755)
    shutil.rmtree(runtime / "fv2es")
    assert shim_runtime_folder(model_py) is None
