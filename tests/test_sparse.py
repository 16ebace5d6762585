"""FE2E's sparse cross-modal attention over the face rows (config.SPARSE_VISUAL, fv2es.models.sparse):
the selection rule, the pipeline's wiring, and a real server on a repository built with it, whose
visual encoder receives exactly the kept faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE, serving
from test_internal_models import assert_rejected, infer
from test_modalities import server_statistics

from fv2es import checks, config, model_configs, modalities, models, pipeline, stages
from fv2es.errors import InputError
from fv2es.tritonserver import EmbeddedServer
from fv2es_build.repository import sparse_variant
from fv2es_client import Fv2esClient

FACE_ROW_SOURCES = {*pipeline.FACE_ROWS, "FACE_SEGMENT"}


def selection(mass: float = config.SPARSE_VISUAL_MASS) -> torch.nn.Module:
    return models.create(models.SPARSE_MODEL, mass=mass).eval()


def test_the_nucleus_and_every_persons_best_face_are_kept():
    select = selection(0.9)
    # segment 0: person 0's faces with attention 0.5, 0.3, 0.15, person 1's with 0.05; segment 1: one
    # face; a row outside every segment
    attention = torch.tensor([0.15, 0.5, 0.05, 0.3, 1.0, 0.0])
    segment = torch.tensor([0, 0, 0, 0, 1, -1])
    person = torch.tensor([0, 0, 1, 0, 0, -1])
    main = torch.tensor([True, True, False, True, True, False])  # the rows the segment scores read
    kept = select.keep(attention, segment, person, main)
    # the mass before 0.5, 0.3, 0.15 is 0, 0.5, 0.8 (< 0.9): kept; before 0.05 it is 0.95, but that
    # face is person 1's only one there
    assert kept.tolist() == [True, True, True, True, True, False]
    assert selection(0.6).keep(attention, segment, person, main).tolist() == [False, True, True, True, True, False]
    # a segment's best main face stays, even where another person's faces hold the attention
    # (person 1's main face with little attention, their other face with most, person 0's face)
    two = select.keep(torch.tensor([0.02, 0.95, 0.03]), torch.tensor([0, 0, 0]), torch.tensor([1, 1, 0]), torch.tensor([True, False, False]))
    assert two.tolist() == [True, True, True]
    assert select.keep(torch.tensor([0.02, 0.95, 0.03]), torch.tensor([0, 0, 0]), torch.tensor([1, 1, 0]),
                       torch.zeros(3, dtype=torch.bool)).tolist() == [False, True, True]
    # nothing in any segment: the first row stays, so the visual encoder always has one
    none = torch.tensor([-1, -1])
    assert select.keep(torch.zeros(2), none, none, torch.zeros(2, dtype=torch.bool)).tolist() == [True, False]


def test_the_attention_is_a_softmax_within_each_segment_and_export_keeps_the_choice():
    select = selection()
    torch.manual_seed(0)
    torch.nn.init.normal_(select.score.weight, std=3.0)  # a peaked attention, so that rows are dropped
    inputs = models.example_inputs(models.SPARSE_MODEL)[0]
    segment = inputs[modalities.by_name("visual").index]
    with torch.no_grad():
        attention = select.attention(inputs)
        sums = torch.zeros(int(segment.max()) + 1).index_add(0, segment[segment >= 0], attention[segment >= 0])
        torch.testing.assert_close(sums, torch.ones_like(sums))
        assert attention[segment < 0].eq(0).all()
        eager = select(inputs)
        scripted = models.to_torchscript(models.SPARSE_MODEL, select)(inputs)
    assert len(eager[0]) < len(segment)  # a strict subset
    for a, b in zip(eager, scripted):
        assert torch.equal(a, b)
    kept = select.keep(attention, segment, inputs["FACE_PERSON"], segment >= 0)
    torch.testing.assert_close(eager[0], inputs["FACES"][kept])  # the kept rows, in their order
    assert eager[3].tolist() == segment[kept].tolist() and eager[1].tolist() == inputs["FACE_TIMES"][kept].tolist()


def test_with_it_every_step_after_the_selection_reads_the_kept_face_rows():
    steps = pipeline.steps(sparse_visual=True)
    pipeline.check_wiring(steps)
    names = [s.name for s in steps]
    at = names.index(pipeline.SPARSE_STEP)
    assert names.index("audio_encoder") < at and names.index("text_encoder") < at < names.index("visual_encoder")
    assert steps[names.index("visual_encoder")].source("FACES") == "KEPT_FACES"
    for step in steps[at + 1 :]:
        read = {step.source(i.name) for i in step.inputs}
        if step.name == "people":  # the speakers from every face, the pairs from the kept rows
            assert {step.source("FACE_ROW_TIMES"), step.source("FACE_ROW_PERSON")} == {"KEPT_FACE_TIMES", "KEPT_FACE_PERSON"}
            continue
        assert not read & FACE_ROW_SOURCES, (step.name, read & FACE_ROW_SOURCES)
    by_name = {s.name: s for s in steps}
    assert by_name["fusion"].source("VISUAL_SEGMENT") == "KEPT_FACE_SEGMENT"
    assert by_name["group"].source("FACE_TIMES") == "KEPT_FACE_TIMES" and by_name["people"].source("FACE_TIMES") == "FACE_TIMES"
    assert pipeline.SPARSE_STEP not in [s.name for s in pipeline.steps(sparse_visual=False)]
    assert pipeline.stream_step(steps).parameters[pipeline.SPARSE_PARAMETER] == "true"


def face_select_inputs(segments: int = 3, faces_per_segment: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = segments * faces_per_segment
    s = config.FACE_SIZE
    return {
        "FACES": rng.standard_normal((n, 1, s, s)).astype(np.float32),
        "FACE_TIMES": (np.arange(n) * config.FRAME_INTERVAL_S).astype(np.float32),
        "FACE_PERSON": (np.arange(n) % 2).astype(np.int64),
        "VISUAL_SEGMENT": np.repeat(np.arange(segments), faces_per_segment).astype(np.int64),
        "AUDIO_FEATURES": rng.standard_normal((2 * segments, config.FEATURE_DIM)).astype(np.float32),
        "AUDIO_SEGMENT": np.repeat(np.arange(segments), 2).astype(np.int64),
        "TEXT_FEATURES": rng.standard_normal((segments, config.TEXT_FEATURE_DIM)).astype(np.float32),
        "TEXT_PRESENT": np.ones(segments, bool),
        "SEGMENT_TIMES": np.stack([np.arange(segments), np.arange(segments) + 1], 1).astype(np.float32) * faces_per_segment * config.FRAME_INTERVAL_S,
    }


BAD_INPUTS = [
    ({"VISUAL_SEGMENT": np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 7], np.int64)}, "VISUAL_SEGMENT holds segment 7"),
    ({"FACE_TIMES": np.zeros(5, np.float32)}, "FACE_TIMES has 5"),
    ({"FACE_PERSON": np.full(12, -5, np.int64)}, "FACE_PERSON holds person ids"),
    ({"FACES": np.full((12, 1, config.FACE_SIZE, config.FACE_SIZE), np.nan, np.float32)}, "FACES holds NaN"),
    ({"AUDIO_SEGMENT": np.array([0, 0, 1, 1, 2, 9], np.int64)}, "AUDIO_SEGMENT holds segment 9"),
    ({"TEXT_PRESENT": np.ones(2, bool)}, "TEXT_PRESENT has 2 rows"),
    ({"SEGMENT_TIMES": np.array([[0, 2], [2, 4]], np.float32)}, "SEGMENT_TIMES has 2 rows"),
]


@pytest.mark.parametrize("changes, fragment", BAD_INPUTS)
def test_the_checks_refuse_what_the_selection_cannot_take(changes, fragment):
    inputs = face_select_inputs()
    checks.face_select_inputs(inputs, modalities.modalities(), checks.Limits())
    with pytest.raises(InputError, match=fragment):
        checks.face_select_inputs({**inputs, **changes}, modalities.modalities(), checks.Limits())


@pytest.fixture(scope="module")
def sparse_repository(tmp_path_factory):
    """The served repository's exported models, with configs written for the sparse attention and the
    shipped selection exported beside them."""
    return sparse_variant(tmp_path_factory.mktemp("sparse") / "models", True)


def test_the_repository_wires_the_selection_in(sparse_repository):
    ensemble = model_configs.read(sparse_repository / config.ENSEMBLE_NAME / "config.pbtxt")
    wiring = [(s.model_name, dict(s.input_map)) for s in ensemble.ensemble_scheduling.step]
    assert ("visual_encoder", {"FACES": "KEPT_FACES"}) in wiring
    assert [inputs["VISUAL_SEGMENT"] for model, inputs in wiring if model == "fusion"] == ["KEPT_FACE_SEGMENT", "PERSON_VISUAL_SEGMENT"]
    select = model_configs.read(sparse_repository / models.SPARSE_MODEL / "config.pbtxt")
    assert [o.name for o in select.output] == [f"KEPT_{n}" for n in (*pipeline.FACE_ROWS, "FACE_SEGMENT")]


@pytest.mark.slow
def test_a_real_server_encodes_only_the_kept_faces(sparse_repository):
    """The sample through tritonserver on the sparse repository: the visual encoder receives the rows
    the selection keeps (its statistics count them) and the answers are the in-process run's; bad
    inputs to the selection get clear errors and leave the server healthy."""
    from fv2es.inprocess import InProcessPipeline

    local = InProcessPipeline(sparse_repository, sparse_visual=True).run(
        {"VIDEO": SAMPLE.read_bytes()}, wanted=("FACES", "KEPT_FACES", "KEPT_FACE_SEGMENT", "SEGMENT_SCORES", "GROUP_SCORES"))
    assert 1 <= len(local["KEPT_FACES"]) <= len(local["FACES"])
    with serving(EmbeddedServer(sparse_repository)) as server:
        with Fv2esClient(server.grpc_url) as client:
            result = client.analyze(SAMPLE.read_bytes())
        stats = {m["name"]: m for m in server_statistics(server)["model_stats"]}
        for changes, fragment in BAD_INPUTS[:3]:
            assert_rejected(server, models.SPARSE_MODEL, {**face_select_inputs(), **changes}, fragment)
        kept = infer(server, models.SPARSE_MODEL, face_select_inputs())
        assert len(kept.as_numpy("KEPT_FACES")) == len(kept.as_numpy("KEPT_FACE_SEGMENT")) >= 3  # each person's best face at least
        assert server.ready()
    assert int(stats["visual_encoder"]["inference_count"]) == len(local["KEPT_FACES"])
    got = np.array([[s.scores[label] for label in config.LABELS] for s in result.segments])
    np.testing.assert_allclose(got, local["SEGMENT_SCORES"], atol=1e-4)
    np.testing.assert_allclose([result.group[g] for g in config.GROUP_LABELS], local["GROUP_SCORES"], atol=1e-4)


def test_people_find_speakers_from_every_face_and_pairs_from_the_kept_rows():
    """With the selection, `people` reads every face (FACE_TIMES, FACE_PERSON, FACE_MOUTH: the
    speakers' evidence) and the kept rows (FACE_ROW_TIMES, FACE_ROW_PERSON: the face modality's rows,
    whose pairs the per-person fusion reads); both or neither."""
    s = np.array([[0, 1], [1, 2]], np.float32)
    inputs = {"FACE_TIMES": np.array([0.2, 0.2, 0.6, 0.6, 1.5], np.float32), "FACE_PERSON": np.array([0, 1, 0, 1, 0], np.int64),
              "FACE_MOUTH": np.array([3.0, 0.1, 3.0, 0.1, -1.0], np.float32), "SEGMENT_TIMES": s,
              "SEGMENT_HAS_SPEECH": np.array([True, False]), "AUDIO_SEGMENT": np.array([0, 1], np.int64),
              "TEXT_FEATURES": np.zeros((2, config.TEXT_FEATURE_DIM), np.float32), "TEXT_PRESENT": np.array([True, False])}
    kept = {"FACE_ROW_TIMES": np.array([0.2, 0.6, 1.5], np.float32), "FACE_ROW_PERSON": np.array([0, 1, 0], np.int64)}
    out = stages.people({**inputs, **kept}, modalities.modalities(), limits=checks.Limits())
    assert out["SEGMENT_SPEAKER"].tolist() == [0, -1]  # person 0's mouth moves in segment 0
    assert out["PERSON_PAIRS"].tolist() == [[0, 0], [1, 0], [0, 1]]
    assert out["PERSON_VISUAL_SEGMENT"].tolist() == [0, 1, 2]  # one per kept row
    with pytest.raises(InputError, match="come together"):
        stages.people({**inputs, "FACE_ROW_TIMES": kept["FACE_ROW_TIMES"]}, modalities.modalities(), limits=checks.Limits())
