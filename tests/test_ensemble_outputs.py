"""A request may ask the ensemble for any subset of its outputs (KServe's requested outputs): each
subset is answered, with the values the full request gives.

Triton prunes the steps that only unrequested outputs need. Its pruning (Triton core r24.10,
src/ensemble_scheduler/ensemble_scheduler.cc, unchanged up to r25.12) assumes that no step reads an
ensemble output; where one did (SEGMENT_TIMES, SEGMENT_HAS_SPEECH, SEGMENT_SCORES), asking for
VIDEO_SCORES alone failed with "unexpected deadlock". The written ensemble reads internal copies
instead (fv2es_build.repository.ensemble_steps). Below, that pruning in Python checks every subset of
the written config; the server answers a selection of them over gRPC and HTTP.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import SAMPLE
from tritonclient.utils import InferenceServerException

from fv2es import config, model_configs, pipeline
from fv2es.pipeline import ENSEMBLE_OUTPUTS
from fv2es.tritonserver import REPOSITORY
from fv2es_build.repository import PUBLISH_MODEL

ENSEMBLE_CONFIG = REPOSITORY / config.ENSEMBLE_NAME / "config.pbtxt"


# --- Triton's pruning, in Python ------------------------------------------------------------------

@dataclass
class Ensemble:
    """What Triton's EnsembleInfo holds (ensemble_scheduler.cc r24.10, lines 1495-1537): each step's
    input and output tensors, the steps that read each tensor, the step that writes it."""

    inputs: list[str]
    outputs: list[str]
    steps: list[tuple[list[str], list[str]]]  # (tensors read, tensors written), in config order

    @property
    def tensor_to_step(self) -> dict[str, set[int]]:
        readers = {name: set() for name in self.inputs + self.outputs}
        for index, (reads, writes) in enumerate(self.steps):
            for name in reads:
                readers.setdefault(name, set()).add(index)
            for name in writes:
                readers.setdefault(name, set())
        return readers

    @property
    def tensor_to_prev_step(self) -> dict[str, int]:
        writers = {}
        for index, (_, writes) in enumerate(self.steps):
            for name in writes:
                writers.setdefault(name, index)
        return writers


def from_config(model_config: model_configs.ModelConfig) -> Ensemble:
    return Ensemble([t.name for t in model_config.input], [t.name for t in model_config.output],
                    [(list(s.input_map.values()), list(s.output_map.values())) for s in model_config.ensemble_scheduling.step])


def from_steps(steps: list[pipeline.Step]) -> Ensemble:
    """The ensemble `steps` would make if written as they are."""
    produced = pipeline.tensors_of(steps)
    return Ensemble([pipeline.ENSEMBLE_INPUT.name], list(ENSEMBLE_OUTPUTS),
                    [([s.source(i.name) for i in s.inputs_from(produced)], [s.target(o.name) for o in s.outputs]) for s in steps])


def pruned_readers(ensemble: Ensemble, requested: set[str]) -> dict[str, set[int]]:
    """EnsembleContext's constructor, lines 417-458: from the unrequested outputs backwards, a step
    none of whose outputs is still needed is pruned (taken out of the readers of its inputs), and a
    tensor left without readers is no longer needed. Ported as it is, including what makes it wrong
    for a tensor that is both an output and read by a step (an unrequested output counts as unneeded
    whatever reads it; a requested one becomes unneeded once its readers are pruned)."""
    readers = ensemble.tensor_to_step
    writers = ensemble.tensor_to_prev_step
    ignored = set(ensemble.outputs) - requested
    if not ignored:
        return readers
    outputs_left: dict[int, int] = {}  # step_requested_output_count
    while ignored:
        newly_ignored = set()
        for name in sorted(ignored):  # a std::set
            step = writers.get(name, 0)  # std::unordered_map::operator[]: 0 for a tensor no step writes
            reads, writes = ensemble.steps[step]
            outputs_left.setdefault(step, len(writes))
            outputs_left[step] -= 1
            if outputs_left[step] == 0:
                for tensor in reads:
                    readers[tensor].discard(step)
                    if not readers[tensor]:
                        newly_ignored.add(tensor)
        ignored = newly_ignored
    return readers


def steps_run(ensemble: Ensemble, requested: set[str]) -> set[int]:
    """The steps the request runs: GetNextSteps (lines 855-884) schedules, after each tensor is set,
    its (remaining) readers whose inputs are all set, starting from the request's inputs."""
    readers = pruned_readers(ensemble, requested)
    have, run, updated = set(ensemble.inputs), set(), list(ensemble.inputs)
    while updated:
        tensor = updated.pop()
        for step in sorted(readers.get(tensor, ())):
            reads, writes = ensemble.steps[step]
            if step not in run and all(t in have for t in reads):
                run.add(step)
                fresh = [t for t in writes if t not in have]
                have.update(fresh)
                updated.extend(fresh)
    return run


def answers(ensemble: Ensemble, requested: set[str]) -> bool:
    """Whether every requested output gets set; where not, FinishEnsemble (lines 1116-1143) replies
    "unexpected deadlock" once no step is left in flight."""
    written = {t for step in steps_run(ensemble, requested) for t in ensemble.steps[step][1]}
    return requested <= written


def subsets(names) -> list[tuple[str, ...]]:
    return [c for size in range(1, len(names) + 1) for c in itertools.combinations(names, size)]


def written_ensemble() -> Ensemble:
    return from_config(model_configs.read(ENSEMBLE_CONFIG))


def test_no_subset_of_the_outputs_deadlocks():
    ensemble = written_ensemble()
    assert ensemble.outputs == list(ENSEMBLE_OUTPUTS)
    all_subsets = subsets(ENSEMBLE_OUTPUTS)
    assert len(all_subsets) == 2 ** len(ENSEMBLE_OUTPUTS) - 1 == 16383
    assert [s for s in all_subsets if not answers(ensemble, set(s))] == []
    # No step of the written config reads an ensemble output (the build checks it too).
    assert not {t for reads, _ in ensemble.steps for t in reads} & set(ENSEMBLE_OUTPUTS)


def test_the_simulation_finds_the_deadlock_of_the_unpublished_wiring():
    """The steps as fv2es.pipeline lists them, wired directly: VIDEO_SCORES alone deadlocked (issue 22)."""
    ensemble = from_steps(pipeline.steps())
    assert not answers(ensemble, {"VIDEO_SCORES"})
    assert answers(ensemble, set(ENSEMBLE_OUTPUTS))
    failing = [s for s in subsets(ENSEMBLE_OUTPUTS) if not answers(ensemble, set(s))]
    assert len(failing) > 2000, len(failing)


def test_pruning_skips_what_a_subset_does_not_need():
    ensemble = written_ensemble()
    models = [m.model_name for m in model_configs.read(ENSEMBLE_CONFIG)
              .ensemble_scheduling.step]

    def run(*names):
        return sorted({models[i] for i in steps_run(ensemble, set(names))})

    assert run("SEGMENT_TIMES") == sorted(["demux", "asr", PUBLISH_MODEL])
    assert "people" not in run("VIDEO_SCORES") and PUBLISH_MODEL not in run("VIDEO_SCORES")
    assert len(steps_run(ensemble, set(ENSEMBLE_OUTPUTS))) == len(models)


# --- The server ---------------------------------------------------------------------------------

LARGER_SUBSETS = [
    tuple(n for n in ENSEMBLE_OUTPUTS if n != "SEGMENT_SCORES"),  # all but one: deadlocked before issue 22
    ENSEMBLE_OUTPUTS[:8],  # the first eight (what clients before the per-person outputs asked for)
    ("SEGMENT_TIMES", "SEGMENT_HAS_SPEECH", "SEGMENT_SCORES"),  # the published copies alone
    ("SEGMENT_SPEAKER", "PERSON_SEGMENTS", "PERSON_SEGMENT_SCORES", "PERSON_SCORES"),
    ENSEMBLE_OUTPUTS[:12],  # what clients before the group outputs asked for
]
GRPC_SUBSETS = ([(n,) for n in ENSEMBLE_OUTPUTS]
                + [("VIDEO_SCORES", n) for n in ENSEMBLE_OUTPUTS if n != "VIDEO_SCORES"]
                + LARGER_SUBSETS)
HTTP_SUBSETS = [("VIDEO_SCORES",), ("SEGMENT_TIMES", "PERSON_SCORES")]


def video(module):
    tensor = module.InferInput("VIDEO", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([SAMPLE.read_bytes()], dtype=np.object_))
    return tensor


def grpc_infer(server, names) -> dict[str, np.ndarray]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        result = c.infer(config.ENSEMBLE_NAME, [video(grpcclient)], outputs=[grpcclient.InferRequestedOutput(n) for n in names],
                         client_timeout=300)
    return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


@pytest.fixture(scope="module")
def full(server) -> dict[str, np.ndarray]:
    """Every output, asked for by name."""
    result = grpc_infer(server, ENSEMBLE_OUTPUTS)
    assert sorted(result) == sorted(ENSEMBLE_OUTPUTS)
    return result


def assert_same(got: dict[str, np.ndarray], full: dict[str, np.ndarray], names) -> None:
    assert sorted(got) == sorted(names)
    for name in names:
        assert got[name].dtype == full[name].dtype and np.array_equal(got[name], full[name]), name


@pytest.mark.parametrize("names", GRPC_SUBSETS, ids=lambda names: "+".join(names) if len(names) < 4 else f"{len(names)}-outputs")
def test_a_subset_over_grpc_gives_the_full_requests_values(server, full, names):
    assert_same(grpc_infer(server, names), full, names)


@pytest.mark.parametrize("names", HTTP_SUBSETS, ids="+".join)
def test_a_subset_over_http_gives_the_full_requests_values(server, full, names):
    c = httpclient.InferenceServerClient(server.http_url, network_timeout=300)
    try:
        result = c.infer(config.ENSEMBLE_NAME, [video(httpclient)], outputs=[httpclient.InferRequestedOutput(n) for n in names])
    finally:
        c.close()
    assert_same({o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}, full, names)


def test_the_copy_model_checks_what_it_copies(server, full):
    """Any client can call the copy model: it returns what it is given, after the checks."""
    times = full["SEGMENT_TIMES"]
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        tensor = grpcclient.InferInput("SEGMENT_TIMES_INTERNAL", list(times.shape), "FP32")
        tensor.set_data_from_numpy(times)
        assert np.array_equal(c.infer(PUBLISH_MODEL, [tensor]).as_numpy("SEGMENT_TIMES"), times)
        bad = times.copy()
        bad[0, 1] = np.nan
        tensor.set_data_from_numpy(bad)
        with pytest.raises(InferenceServerException) as info:
            c.infer(PUBLISH_MODEL, [tensor])
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert info.value.message().startswith(f"{PUBLISH_MODEL}: SEGMENT_TIMES_INTERNAL holds NaN"), info.value.message()
