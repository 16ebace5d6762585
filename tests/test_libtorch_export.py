"""`fv2es-build --torchscript-backend libtorch`: the encoders and the fusion as pytorch_libtorch models.

Triton's PyTorch backend does not exist on this machine (the embedded binary has only the Python
backend), so these tests check what the backend relies on: each config parses as Triton's
ModelConfig, its input names are the TorchScript forward()'s argument names in order (or, for the
fusion, whose forward takes one Dict[str, Tensor], the dictionary's keys: the pipeline's names) and
its outputs follow `<name>__<index>`, and the modules run when called with exactly those names, the
config's dtypes and shapes, giving outputs of the config's dtypes and shapes. The ensemble still
wires the same tensors.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fv2es import config, model_configs, pipeline
from fv2es.models import forward_arguments, takes_dictionary
from fv2es_build.repository import ensemble_steps

DTYPES = {"TYPE_FP32": torch.float32, "TYPE_INT64": torch.int64, "TYPE_BOOL": torch.bool}
BATCH, ROWS = 3, 4  # batch size of a batched model; the size given to a -1 dimension


def read_config(path) -> model_configs.ModelConfig:
    return model_configs.read(path)


@pytest.fixture(scope="module")
def libtorch_repository(tmp_path_factory):
    target = tmp_path_factory.mktemp("libtorch") / "models"
    result = subprocess.run([sys.executable, "-m", "fv2es_build.repository", "--torchscript-backend", "libtorch",
                             "--repository", str(target)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return target


TORCHSCRIPT_STEPS = [s for s in pipeline.steps() if s.torchscript and s.serves_model]


def config_inputs(model_config) -> dict[str, torch.Tensor]:
    """Tensors named, typed and shaped as the config says: random features, index 0, flags set."""
    generator = torch.Generator().manual_seed(0)
    batch = (BATCH,) if model_config.max_batch_size > 0 else ()
    tensors = {}
    for spec in model_config.input:
        shape = batch + tuple(ROWS if d == -1 else d for d in spec.dims)
        dtype = DTYPES[model_configs.DataType.Name(spec.data_type)]
        if dtype == torch.float32:
            tensors[spec.name] = torch.randn(shape, generator=generator)
        elif dtype == torch.bool:
            tensors[spec.name] = torch.ones(shape, dtype=torch.bool)
        else:
            tensors[spec.name] = torch.zeros(shape, dtype=dtype)
    return tensors


def call(module, inputs: dict[str, torch.Tensor]):
    """As the PyTorch backend calls a module: one dictionary, or each input as its argument."""
    return module(inputs) if takes_dictionary(forward_arguments(module)) else module(**inputs)


@pytest.mark.parametrize("step", TORCHSCRIPT_STEPS, ids=lambda s: s.name)
def test_config_matches_the_torchscript_signature_and_runs(libtorch_repository, step):
    folder = libtorch_repository / step.name
    model_config = read_config(folder / "config.pbtxt")
    assert model_config.platform == "pytorch_libtorch" and not model_config.backend
    assert not (folder / "1" / "model.py").exists() and not (folder / "1" / "fv2es").exists()
    assert model_config.max_batch_size == step.max_batch_size
    assert model_config.HasField("dynamic_batching") == step.batched

    module = torch.jit.load(str(folder / "1" / "model.pt"))
    arguments = forward_arguments(module)
    if takes_dictionary(arguments):
        assert [i.name for i in model_config.input] == [i.name for i in step.inputs]
    else:
        assert [i.name for i in model_config.input] == [name for name, _ in arguments]
    assert [o.name for o in model_config.output] == [f"{o.name}__{k}" for k, o in enumerate(step.outputs)]

    with torch.inference_mode():
        result = call(module, config_inputs(model_config))
    results = result if isinstance(result, tuple) else (result,)
    assert len(results) == len(model_config.output)
    batch = (BATCH,) if model_config.max_batch_size > 0 else ()
    for value, spec in zip(results, model_config.output):
        assert value.dtype == DTYPES[model_configs.DataType.Name(spec.data_type)], spec.name
        want = batch + tuple(spec.dims)
        assert value.dim() == len(want), spec.name
        assert all(w in (-1, got) for w, got in zip(want, value.shape)), f"{spec.name}: {tuple(value.shape)} vs {want}"


def test_the_ensemble_wires_the_same_tensors(libtorch_repository):
    ensemble = read_config(libtorch_repository / config.ENSEMBLE_NAME / "config.pbtxt")
    wiring = list(ensemble.ensemble_scheduling.step)
    steps = ensemble_steps(pipeline.steps())  # with the copies of the outputs that steps read
    assert [s.model_name for s in wiring] == [s.model_name for s in steps]
    produced = pipeline.tensors_of(steps)
    for step, served in zip(steps, wiring):  # protobuf maps: compared as dicts, config name -> ensemble tensor
        model_config = read_config(libtorch_repository / step.model_name / "config.pbtxt")
        wired = step.inputs_from(produced)  # an optional input that no step writes is left out (asr's SPEECH_PROBS)
        if step.torchscript:  # forward()'s argument names and <name>__<index>, in the step's order
            inputs, outputs = [c.name for c in model_config.input], [c.name for c in model_config.output]
        else:  # a Python model keeps the step's names (the copy model has more inputs than each copy step uses)
            assert model_config.backend == "python"
            inputs, outputs = [i.name for i in wired], [o.name for o in step.outputs]
        assert dict(served.input_map) == {name: step.source(i.name) for name, i in zip(inputs, wired, strict=True)}
        assert dict(served.output_map) == {name: step.target(o.name) for name, o in zip(outputs, step.outputs, strict=True)}


@pytest.mark.parametrize("model, name, bad", [
    ("text_encoder", "input_ids", 10**9),
    ("fusion", "AUDIO_SEGMENT", ROWS),
    ("fusion", "VISUAL_SEGMENT", -2),
])
def test_an_index_out_of_range_is_an_error_not_a_lookup(libtorch_repository, model, name, bad):
    """The PyTorch backend runs no Python checks first; on a GPU such a lookup would be a
    device-side assert, so the exported module checks its indices itself."""
    module = torch.jit.load(str(libtorch_repository / model / "1" / "model.pt"))
    inputs = config_inputs(read_config(libtorch_repository / model / "config.pbtxt"))
    inputs[name] = torch.full_like(inputs[name], bad)
    with pytest.raises(torch.jit.Error, match="holds an index outside"):
        call(module, inputs)


def test_the_python_repository_keeps_the_python_backend():
    from fv2es.tritonserver import REPOSITORY

    for step in TORCHSCRIPT_STEPS:
        model_config = read_config(REPOSITORY / step.name / "config.pbtxt")
        assert model_config.backend == "python" and (REPOSITORY / step.name / "1" / "model.py").exists()
        assert np.array_equal([i.name for i in model_config.input], [i.name for i in step.inputs])
