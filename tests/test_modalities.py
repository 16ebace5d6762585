"""Modalities as data (fv2es.modalities): a fourth, toy modality from one new entry plus its encoder.

The toy "prosody" stream is the audio's mel chunks under an encoder of its own (the mel step is its
preprocessing: with Whisper-state audio, the served pipeline has no mel step). From the entry alone
the pipeline gains the mel step and a prosody_encoder, the fusion a fourth branch and modality
weight, the input checks and the per-person rows its tensors, the repository its configs; and the
whole pipeline runs on a real video in process with the exported toy models.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from conftest import SAMPLE, serving

from fv2es import checks, config, model_configs, modalities, models, pipeline, stages
from fv2es.errors import InputError
from fv2es.graph import fp32
from fv2es.models.audio import HierarchicalSpectrumEncoder
from fv2es.models.checked import CheckedFusion
from fv2es.models.fusion import Fv2esFusion
from fv2es.people import person_rows
from fv2es.tritonserver import REPOSITORY, EmbeddedServer
from fv2es_client import Fv2esClient
from fv2es_build.repository import write_configs
from test_ensemble_outputs import answers, from_config

TOY = modalities.Modality(
    "prosody", modalities.SEQUENCE, (fp32("MEL_CHUNKS", config.N_MELS, config.CHUNK_FRAMES),), "MEL_SEGMENT",
    config.RAVDESS_CLASSES, modalities.SPEAKER, max_rows="max_chunks", sequence_depth=1,
    preprocess=modalities.modalities("mel")[0].preprocess,  # the mel step
)
ENTRIES = (*modalities.modalities("whisper"), TOY)


def by_name(steps) -> dict[str, pipeline.Step]:
    return {s.name: s for s in steps}


def test_the_served_modalities_are_the_three_of_the_paper():
    assert modalities.names() == ("audio", "visual", "text")
    assert [s.name for s in pipeline.steps(sparse_visual=False) if s.torchscript and s.serves_model] == [
        "audio_encoder", "visual_encoder", "text_encoder", "fusion", "group"]
    # with the sparse face selection, the face rows' encoder runs after it, after the others
    assert [s.name for s in pipeline.steps(sparse_visual=True) if s.torchscript and s.serves_model] == [
        "audio_encoder", "text_encoder", "face_select", "visual_encoder", "fusion", "group"]


def test_a_new_entry_adds_its_steps_and_tensors_to_the_pipeline():
    steps = pipeline.steps(audio_input="whisper", modalities=ENTRIES)
    pipeline.check_wiring(steps)
    named = by_name(steps)
    assert "mel" in named and "mel" not in by_name(pipeline.steps(audio_input="whisper"))
    encoder = named["prosody_encoder"]
    assert [i.name for i in encoder.inputs] == ["MEL_CHUNKS"] and [o.name for o in encoder.outputs] == ["PROSODY_FEATURES"]
    assert encoder.batched
    fusion, people, person_fusion = named["fusion"], named["people"], named["person_fusion"]
    assert [i.name for i in fusion.inputs][-2:] == ["PROSODY_FEATURES", "PROSODY_SEGMENT"]
    assert fusion.source("PROSODY_SEGMENT") == "MEL_SEGMENT"
    # A speaker's modality: its rows go to the person who speaks in their segment.
    assert "PROSODY_SEGMENT" in [i.name for i in people.inputs] and people.source("PROSODY_SEGMENT") == "MEL_SEGMENT"
    assert "PERSON_PROSODY_SEGMENT" in [o.name for o in people.outputs]
    assert person_fusion.source("PROSODY_SEGMENT") == "PERSON_PROSODY_SEGMENT"
    assert person_fusion.source("PROSODY_FEATURES") == "PROSODY_FEATURES"
    # the sparse face selection's query reads it too (its rows' mean in each segment)
    select = by_name(pipeline.steps(audio_input="whisper", modalities=ENTRIES, sparse_visual=True))[pipeline.SPARSE_STEP]
    assert {"PROSODY_FEATURES", "PROSODY_SEGMENT"} <= {i.name for i in select.inputs}
    assert select.source("PROSODY_SEGMENT") == "MEL_SEGMENT"


def toy_fusion() -> Fv2esFusion:
    torch.manual_seed(0)
    return Fv2esFusion(modalities=ENTRIES).eval()


def test_the_fusion_gets_a_branch_weight_and_temperature():
    fusion = toy_fusion()
    assert list(fusion.branches) == ["audio", "visual", "text", "prosody"]
    assert fusion.modality_weights.shape == (4,) and fusion.branch_temperature.shape == (4,)
    scripted = torch.jit.script(fusion)
    example = models.fusion_example(3, ENTRIES)
    scores = scripted(example)
    assert scores.shape == (3, len(config.LABELS))
    torch.testing.assert_close(scores, fusion(example))
    # The toy's rows count: other rows change the scores of their segments, and so do no rows.
    other = dict(example, PROSODY_FEATURES=torch.randn_like(example["PROSODY_FEATURES"]),
                 PROSODY_SEGMENT=torch.where(example["PROSODY_SEGMENT"] == 1, -1, example["PROSODY_SEGMENT"]))
    assert ((scripted(other) - scores).abs().amax(1) > 1e-6).tolist() == [True, True, True]
    alone = dict(other, PROSODY_SEGMENT=torch.full_like(example["PROSODY_SEGMENT"], -1))
    without = dict(example, PROSODY_SEGMENT=torch.full_like(example["PROSODY_SEGMENT"], -1))
    torch.testing.assert_close(scripted(alone), scripted(without))  # no rows: the branch is absent


def test_the_checks_follow_the_entry():
    example = {k: v.numpy() for k, v in models.fusion_example(3, ENTRIES).items()}
    checks.fusion_inputs(example, ENTRIES, checks.Limits())
    bad = dict(example, PROSODY_SEGMENT=np.where(example["PROSODY_SEGMENT"] == 2, 7, example["PROSODY_SEGMENT"]))
    with pytest.raises(InputError, match="PROSODY_SEGMENT holds segment 7 but there are 3 segments"):
        checks.fusion_inputs(bad, ENTRIES, checks.Limits())
    with pytest.raises(InputError, match="PROSODY_FEATURES has shape"):
        checks.fusion_inputs(dict(example, PROSODY_FEATURES=np.zeros((4, 3), np.float32)), ENTRIES, checks.Limits())
    checked = torch.jit.script(CheckedFusion(torch.jit.script(toy_fusion()), ENTRIES))
    with pytest.raises(torch.jit.Error, match="PROSODY_SEGMENT holds an index outside"):
        checked({k: torch.from_numpy(v) for k, v in bad.items()})
    assert modalities.in_fusion_inputs(list(example), ENTRIES) == ENTRIES
    with pytest.raises(ValueError, match="PROSODY_FEATURES, PROSODY_SEGMENT belong to none of the modalities audio, visual, text"):
        modalities.in_fusion_inputs(list(example))  # the registry does not know the toy: its repository's configs do
    without_index = [name for name in example if name != "PROSODY_SEGMENT"]
    with pytest.raises(ValueError, match="lacks the inputs PROSODY_SEGMENT"):
        modalities.in_fusion_inputs(without_index, ENTRIES)


def test_the_people_rows_follow_the_entry():
    inputs = {
        "FACE_TIMES": np.array([0.5, 1.5, 2.5], np.float32), "FACE_PERSON": np.array([0, 0, 1], np.int64),
        "FACE_MOUTH": np.full(3, -1, np.float32), "SEGMENT_TIMES": np.array([[0, 1], [1, 2], [2, 3]], np.float32),
        "SEGMENT_HAS_SPEECH": np.array([True, False, True]), "SPEECH_SEGMENT": np.array([0, 2], np.int64),
        "AUDIO_SEGMENT": np.array([0, 2], np.int64), "PROSODY_SEGMENT": np.array([0, 0, 1, 2, -1], np.int64),
        "TEXT_FEATURES": np.zeros((3, config.TEXT_FEATURE_DIM), np.float32), "TEXT_PRESENT": np.array([True, False, True]),
    }
    out = stages.people(inputs, ENTRIES, limits=checks.Limits())
    assert out["PERSON_PAIRS"].tolist() == [[0, 0], [0, 1], [1, 2]]
    # Segments 0 and 2 have one person each, who speaks; segment 1 has no speech, so no speaker.
    assert out["PERSON_PROSODY_SEGMENT"].tolist() == [0, 0, -1, 2, -1]
    assert out["PERSON_PROSODY_SEGMENT"].tolist()[:2] == out["PERSON_AUDIO_SEGMENT"].tolist()[:1] * 2
    with pytest.raises(InputError, match="PROSODY_SEGMENT holds segment 5"):
        stages.people(dict(inputs, PROSODY_SEGMENT=np.array([5], np.int64)), ENTRIES, limits=checks.Limits())


def test_a_per_segment_modality_can_give_its_row_to_everyone_seen():
    scene = dataclasses.replace(modalities.by_name("text"), name="scene", person_rows=modalities.EVERYONE)
    entries = (*modalities.modalities("whisper"), scene)
    times = np.array([0.5, 0.5, 1.5], np.float32)
    inputs = {"AUDIO_SEGMENT": np.array([0], np.int64),
              "TEXT_FEATURES": np.ones((2, config.TEXT_FEATURE_DIM), np.float32), "TEXT_PRESENT": np.array([True, True]),
              "SCENE_FEATURES": np.arange(2, dtype=np.float32)[:, None].repeat(config.TEXT_FEATURE_DIM, 1),
              "SCENE_PRESENT": np.array([True, False])}
    speakers = np.array([0, -1])  # person 0 speaks in segment 0; nobody is known to in segment 1
    out = person_rows(times, np.array([0, 1, 1]), np.array([[0, 1], [1, 2]], np.float32), speakers, inputs, entries)
    assert out["PERSON_SEGMENTS"].tolist() == [[0, 0], [1, 0], [1, 1]]
    assert out["PERSON_TEXT_PRESENT"].tolist() == [True, False, False]  # the words are the speaker's
    assert out["PERSON_SCENE_PRESENT"].tolist() == [True, True, False]  # the scene is everyone's (absent in segment 1)
    assert out["PERSON_SCENE_FEATURES"][:, 0].tolist() == [0, 0, 1]


@pytest.fixture(scope="module")
def toy_repository(tmp_path_factory):
    """The served repository's configs with the toy entry, its exported encoder and fusion, and the
    served encoders."""
    repository = tmp_path_factory.mktemp("toy") / "models"
    write_configs("toy weights", repository, modalities=ENTRIES)
    for name in ("audio_encoder", "visual_encoder", "text_encoder", "group"):  # the group model reads audio and visual rows
        shutil.copy(REPOSITORY / name / "1" / "model.pt", repository / name / "1" / "model.pt")
    torch.manual_seed(0)
    toy_encoder = torch.jit.script(HierarchicalSpectrumEncoder().eval())
    toy_encoder.save(str(repository / "prosody_encoder" / "1" / "model.pt"))
    torch.jit.script(toy_fusion()).save(str(repository / "fusion" / "1" / "model.pt"))
    if config.SPARSE_VISUAL:  # an untrained face selection whose query has the toy entry's features too
        select = models.create(models.SPARSE_MODEL, modalities=ENTRIES)
        models.to_torchscript(models.SPARSE_MODEL, select).save(str(repository / models.SPARSE_MODEL / "1" / "model.pt"))
    return repository


def test_the_repository_configs_follow_the_entry(toy_repository):
    encoder = model_configs.read(toy_repository / "prosody_encoder" / "config.pbtxt")
    assert [i.name for i in encoder.input] == ["MEL_CHUNKS"] and encoder.max_batch_size == TOY.max_batch_size
    assert (toy_repository / "mel" / "config.pbtxt").exists()
    fusion = model_configs.read(toy_repository / "fusion" / "config.pbtxt")
    assert [i.name for i in fusion.input][-2:] == ["PROSODY_FEATURES", "PROSODY_SEGMENT"]
    ensemble = model_configs.read(toy_repository / config.ENSEMBLE_NAME / "config.pbtxt")
    wiring = [(s.model_name, dict(s.input_map)) for s in ensemble.ensemble_scheduling.step]
    assert ("prosody_encoder", {"MEL_CHUNKS": "MEL_CHUNKS"}) in wiring
    fusion_steps = [inputs["PROSODY_SEGMENT"] for model, inputs in wiring if model == "fusion"]
    assert fusion_steps == ["MEL_SEGMENT", "PERSON_PROSODY_SEGMENT"]  # the segments', then the persons' timelines
    assert answers(from_config(ensemble), set(pipeline.ENSEMBLE_OUTPUTS))  # Triton's pruning runs every step


@pytest.fixture(scope="module")
def in_process(toy_repository) -> dict[str, np.ndarray]:
    from fv2es.inprocess import InProcessPipeline

    return InProcessPipeline(toy_repository, ENTRIES).analyze(SAMPLE.read_bytes())


def test_the_whole_pipeline_runs_with_the_fourth_modality(in_process):
    scores, person_scores = in_process["SEGMENT_SCORES"], in_process["PERSON_SEGMENT_SCORES"]
    assert len(scores) == len(in_process["SEGMENT_TIMES"]) >= 1 and len(person_scores) >= 1
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(in_process["VIDEO_SCORES"].sum(), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_real_server_serves_the_fourth_modality(toy_repository, in_process):
    """The repository built with the toy entry, served by tritonserver: its models read the entries
    from their configs (fusion, people, stream), and the ensemble gives what the in-process run gives."""
    with serving(EmbeddedServer(toy_repository)) as server:
        with Fv2esClient(server.grpc_url) as client:
            result = client.analyze(SAMPLE.read_bytes())
        executed = {m["name"]: int(m["inference_stats"]["success"].get("count", 0))  # JSON leaves zero out
                    for m in server_statistics(server)["model_stats"]}
    assert executed["prosody_encoder"] >= 1 and executed["mel"] >= 1
    got = np.array([[s.scores[label] for label in config.LABELS] for s in result.segments])
    np.testing.assert_allclose(got, in_process["SEGMENT_SCORES"], atol=1e-4)
    assert [s.transcript for s in result.segments] == [t.decode() if isinstance(t, bytes) else t for t in in_process["TRANSCRIPTS"]]
    # Each (segment, person) pair's scores, in the pairs' order: by segment, then person.
    pairs = [[s.people[p][label] for label in config.LABELS] for s in result.segments for p in sorted(s.people)]
    np.testing.assert_allclose(np.array(pairs), in_process["PERSON_SEGMENT_SCORES"], atol=1e-4)


def server_statistics(server) -> dict:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as stats:
        return stats.get_inference_statistics(as_json=True)
