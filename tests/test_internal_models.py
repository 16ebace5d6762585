"""Every model of the ensemble, called directly (any client can), validates its inputs: a bad one
gets INVALID_ARGUMENT with a short message naming the problem, no traceback and no server path,
and the server keeps answering. Internal errors reach the client as one short line too."""

from __future__ import annotations

import re
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import SAMPLE
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from fv2es import checks, config
from fv2es.errors import InputError

F, TEXT_DIM, C, TOKENS = config.FEATURE_DIM, config.TEXT_FEATURE_DIM, len(config.LABELS), config.TEXT_MAX_TOKENS
SR = config.SAMPLE_RATE
NAN, INF = np.float32("nan"), np.float32("inf")
PATH = re.compile(r"(?:/[\w.+-]+){2,}")  # /work/main/..., /opt/tritonserver/...


def tensor(name: str, array) -> grpcclient.InferInput:
    array = np.asarray(array)
    t = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    t.set_data_from_numpy(array)
    return t


def infer(server, model: str, inputs: dict[str, np.ndarray]):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        return c.infer(model, [tensor(name, array) for name, array in inputs.items()])


def assert_short_message(message: str) -> None:
    assert len(message) < 300, message
    assert "Traceback" not in message and ".py" not in message and not PATH.search(message), message


def assert_rejected(server, model: str, inputs: dict[str, np.ndarray], fragment: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        infer(server, model, inputs)
    message = info.value.message()
    assert "INVALID_ARGUMENT" in str(info.value.status()), f"{info.value.status()}: {message[:500]}"
    assert_short_message(message)
    assert fragment.lower() in message.lower(), message
    return message


# --- Good inputs of each model (what the ensemble sends), and bad variants of them --------------


def times(n: int, length: float = 1.0) -> np.ndarray:
    starts = np.arange(n, dtype=np.float32) * length
    return np.stack([starts, starts + length], 1).astype(np.float32)


def fusion_inputs(segments: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "AUDIO_FEATURES": rng.standard_normal((2 * segments, F)).astype(np.float32),
        "AUDIO_SEGMENT": np.repeat(np.arange(segments), 2).astype(np.int64),
        "VISUAL_FEATURES": rng.standard_normal((segments, F)).astype(np.float32),
        "VISUAL_SEGMENT": np.arange(segments, dtype=np.int64),
        "TEXT_FEATURES": rng.standard_normal((segments, TEXT_DIM)).astype(np.float32),
        "TEXT_PRESENT": np.ones(segments, bool),
    }


def group_inputs(segments: int = 3) -> dict[str, np.ndarray]:
    """Two faces and one frame per 1 s segment, two audio rows in every segment but the last."""
    rng = np.random.default_rng(0)
    frame_times = np.arange(segments, dtype=np.float32) + 0.5
    s = config.SCENE_SIZE
    return {
        "VISUAL_FEATURES": rng.standard_normal((2 * segments, F)).astype(np.float32),
        "FACE_TIMES": np.repeat(frame_times, 2),
        "AUDIO_FEATURES": rng.standard_normal((2 * segments, F)).astype(np.float32),
        "AUDIO_SEGMENT": np.array([*np.repeat(np.arange(segments - 1), 2), -1, -1], np.int64),
        "SCENE": rng.standard_normal((segments, 1, s, s)).astype(np.float32),
        "SCENE_TIMES": frame_times,
        "SEGMENT_TIMES": times(segments),
    }


# The audio encoder's input: Whisper-state rows from asr, or the mel model's chunks (config.AUDIO_INPUT).
AUDIO_ROWS = "SPEECH_ROWS" if config.AUDIO_INPUT == "whisper" else "MEL_CHUNKS"
AUDIO_ROW_SHAPE = (2 * config.SPEECH_STATE_DIM,) if config.AUDIO_INPUT == "whisper" else (config.N_MELS, config.CHUNK_FRAMES)

GOOD = {
    "fusion": fusion_inputs,
    "group": group_inputs,
    "text_encoder": lambda: {"TEXT_IDS": np.full((2, TOKENS), 1000, np.int64), "TEXT_MASK": np.ones((2, TOKENS), np.int64)},
    "audio_encoder": lambda: {AUDIO_ROWS: np.zeros((2, *AUDIO_ROW_SHAPE), np.float32)},
    "visual_encoder": lambda: {"FACES": np.zeros((2, 1, config.FACE_SIZE, config.FACE_SIZE), np.float32)},
    "aggregate": lambda: {"SEGMENT_SCORES": np.full((3, C), 1 / C, np.float32), "SEGMENT_TIMES": times(3)},
    "mel": lambda: {"AUDIO": np.zeros(3 * SR, np.float32), "AUDIO_START": np.zeros(1, np.int64), "SEGMENT_TIMES": times(3)},
    "assign_faces": lambda: {"FACE_TIMES": np.array([0.5, 1.5, -1.0], np.float32), "FACE_MAIN": np.array([True, True, False]),
                             "SEGMENT_TIMES": times(3)},
    "asr": lambda: {"AUDIO": np.zeros(SR, np.float32), "AUDIO_START": np.zeros(1, np.int64), "DURATION": np.array([1.0], np.float32)},
    "people": lambda: {
        "FACE_TIMES": np.array([0.5, 0.5, 1.5, 2.5], np.float32), "FACE_PERSON": np.array([0, 1, 0, 1], np.int64),
        "FACE_MOUTH": np.array([-1, -1, 3.0, 0.5], np.float32), "SEGMENT_TIMES": times(3),
        "SEGMENT_HAS_SPEECH": np.array([True, False, True]), "AUDIO_SEGMENT": np.array([0, 0, 2, -1], np.int64),
        "TEXT_FEATURES": np.zeros((3, TEXT_DIM), np.float32), "TEXT_PRESENT": np.array([True, False, True]),
        "SEGMENT_SCORES": np.full((3, C), 1 / C, np.float32)},
    "people_aggregate": lambda: {"PERSON_PAIRS": np.array([[0, 0], [1, 0], [0, 1]], np.int64),
                                 "PAIR_SCORES": np.full((3, C), 1 / C, np.float32), "SEGMENT_TIMES": times(3)},
    "face_crop": lambda: {"VIDEO": np.array([SAMPLE.read_bytes()], dtype=np.object_), "DURATION": np.array([8.5], np.float32)},
}


def with_nan(array: np.ndarray, value=NAN) -> np.ndarray:
    array = array.copy()
    array.reshape(-1)[array.size // 2] = value
    return array


def segment(values) -> np.ndarray:
    return np.array(values, np.int64)


BAD = {
    # model: [(case id, changed inputs, fragment of the message)]
    "fusion": [
        ("audio segment too large", {"AUDIO_SEGMENT": segment([0, 0, 1, 1, 2, 57])},
         "AUDIO_SEGMENT holds segment 57 but there are 3 segments"),
        ("visual segment too large", {"VISUAL_SEGMENT": segment([0, 1, 3])}, "VISUAL_SEGMENT holds segment 3"),
        ("huge segment id", {"AUDIO_SEGMENT": segment([0, 0, 1, 1, 2, 2**40])}, "AUDIO_SEGMENT holds segment"),
        ("segment below -1", {"VISUAL_SEGMENT": segment([0, -2, 1])}, "VISUAL_SEGMENT holds segment -2"),
        ("NaN audio features", {"AUDIO_FEATURES": with_nan(fusion_inputs()["AUDIO_FEATURES"])}, "AUDIO_FEATURES holds NaN"),
        ("inf visual features", {"VISUAL_FEATURES": with_nan(fusion_inputs()["VISUAL_FEATURES"], INF)}, "VISUAL_FEATURES holds NaN or inf"),
        ("NaN text features", {"TEXT_FEATURES": with_nan(fusion_inputs()["TEXT_FEATURES"])}, "TEXT_FEATURES holds NaN"),
        ("segment ids and rows differ", {"AUDIO_SEGMENT": segment([0, 1, 2])}, "AUDIO_FEATURES has 6 rows but AUDIO_SEGMENT has 3"),
        ("text present rows differ", {"TEXT_PRESENT": np.ones(5, bool)}, "TEXT_PRESENT has 5 rows but there are 3 segments"),
        ("no segments", {"TEXT_FEATURES": np.zeros((0, TEXT_DIM), np.float32), "TEXT_PRESENT": np.ones(0, bool)},
         "TEXT_FEATURES has 0 rows"),
        ("no audio rows", {"AUDIO_FEATURES": np.zeros((0, F), np.float32), "AUDIO_SEGMENT": segment([])}, "AUDIO_FEATURES has 0 rows"),
        ("too many rows in one segment", {"AUDIO_FEATURES": np.zeros((500, F), np.float32), "AUDIO_SEGMENT": np.zeros(500, np.int64)},
         "over the limit"),
        ("too many segments", {"TEXT_FEATURES": np.zeros((10_000, TEXT_DIM), np.float32), "TEXT_PRESENT": np.ones(10_000, bool)},
         "over the limit"),
    ],
    "text_encoder": [
        ("id past the vocabulary", {"TEXT_IDS": np.full((2, TOKENS), 30_522, np.int64)}, "vocabulary has 30522 tokens"),
        ("huge id", {"TEXT_IDS": np.full((2, TOKENS), 2**40, np.int64)}, "vocabulary"),
        ("negative id", {"TEXT_IDS": np.full((2, TOKENS), -1, np.int64)}, "TEXT_IDS holds -1"),
        ("mask not 0/1", {"TEXT_MASK": np.full((2, TOKENS), 7, np.int64)}, "TEXT_MASK must hold only 0 and 1"),
        ("more rows than max_batch_size", {"TEXT_IDS": np.zeros((5000, TOKENS), np.int64), "TEXT_MASK": np.ones((5000, TOKENS), np.int64)},
         "batch"),
    ],
    "audio_encoder": [
        ("NaN", {AUDIO_ROWS: with_nan(GOOD["audio_encoder"]()[AUDIO_ROWS])}, f"{AUDIO_ROWS} holds NaN"),
        ("huge", {AUDIO_ROWS: with_nan(GOOD["audio_encoder"]()[AUDIO_ROWS], 1e30)}, f"{AUDIO_ROWS} holds a value of magnitude"),
    ],
    "visual_encoder": [
        ("NaN", {"FACES": with_nan(GOOD["visual_encoder"]()["FACES"])}, "FACES holds NaN"),
        ("inf", {"FACES": with_nan(GOOD["visual_encoder"]()["FACES"], -INF)}, "FACES holds NaN or inf"),
        ("huge", {"FACES": with_nan(GOOD["visual_encoder"]()["FACES"], 1e6)}, "FACES holds a value of magnitude"),
    ],
    "aggregate": [
        ("rows differ", {"SEGMENT_TIMES": times(5)}, "SEGMENT_SCORES has 3 rows but SEGMENT_TIMES has 5"),
        ("NaN times", {"SEGMENT_TIMES": with_nan(times(3))}, "SEGMENT_TIMES holds NaN"),
        ("NaN scores", {"SEGMENT_SCORES": with_nan(np.full((3, C), 1 / C, np.float32))}, "SEGMENT_SCORES holds NaN"),
        ("scores not probabilities", {"SEGMENT_SCORES": np.full((3, C), 5.0, np.float32)}, "probabilities"),
        ("no segments", {"SEGMENT_SCORES": np.zeros((0, C), np.float32), "SEGMENT_TIMES": np.zeros((0, 2), np.float32)},
         "SEGMENT_TIMES has 0 segments"),
        ("end past the limit", {"SEGMENT_TIMES": times(3, 1e5)}, "over the server's limit of 1200 s"),
        ("negative start", {"SEGMENT_TIMES": times(3) - 5}, "SEGMENT_TIMES holds a start of -5"),
    ],
    "mel": [
        ("NaN audio", {"AUDIO": with_nan(np.zeros(3 * SR, np.float32))}, "AUDIO holds NaN"),
        ("huge audio", {"AUDIO": with_nan(np.zeros(3 * SR, np.float32), 1e30)}, "AUDIO holds a value of magnitude"),
        ("NaN times", {"SEGMENT_TIMES": with_nan(times(3))}, "SEGMENT_TIMES holds NaN"),
        ("overlapping segments", {"SEGMENT_TIMES": np.tile(np.array([[0.0, 1199.0]], np.float32), (2000, 1))},
         "segments must be in time order without overlap"),
        ("segment ends before it starts", {"SEGMENT_TIMES": np.array([[0, 1], [2, 1.5]], np.float32)}, "row 1 ends"),
        ("too many segments", {"SEGMENT_TIMES": times(5000, 0.1)}, "5000 segments, over the limit"),
        ("audio over the limit", {"AUDIO": np.zeros(1210 * SR, np.float32)}, "over the server's limit of 1200 s"),
    ],
    "assign_faces": [
        ("main flags and faces differ", {"FACE_MAIN": np.array([True])}, "FACE_MAIN has 1 rows but FACE_TIMES has 3"),
        ("NaN face time", {"FACE_TIMES": np.array([0.5, NAN], np.float32)}, "FACE_TIMES holds NaN"),
        ("face time below -1", {"FACE_TIMES": np.array([0.5, -5.0], np.float32)}, "FACE_TIMES holds -5"),
        ("face time past the limit", {"FACE_TIMES": np.array([1e9], np.float32)}, "over the server's limit"),
        ("segments out of order", {"SEGMENT_TIMES": times(3)[::-1].copy()}, "time order"),
    ],
    "people": [
        ("person ids and rows differ", {"FACE_PERSON": np.array([0, 1], np.int64)}, "FACE_PERSON has 2 rows but FACE_TIMES has 4"),
        ("person id below -1", {"FACE_PERSON": np.array([0, -7, 0, 1], np.int64)}, "FACE_PERSON holds person ids from -7"),
        ("huge person id", {"FACE_PERSON": np.array([0, 2**40, 0, 1], np.int64)}, "FACE_PERSON holds person ids"),
        ("NaN mouth", {"FACE_MOUTH": np.array([-1, NAN, 1, 1], np.float32)}, "FACE_MOUTH holds NaN"),
        ("audio segment too large", {"AUDIO_SEGMENT": np.array([0, 9], np.int64)}, "AUDIO_SEGMENT holds segment 9"),
        ("speech flags and segments differ", {"SEGMENT_HAS_SPEECH": np.ones(5, bool)}, "SEGMENT_HAS_SPEECH has 5 rows"),
        ("text rows and segments differ", {"TEXT_FEATURES": np.zeros((2, TEXT_DIM), np.float32)}, "TEXT_FEATURES has shape [2, 384]"),
        ("text flags and segments differ", {"TEXT_PRESENT": np.ones(4, bool)}, "TEXT_PRESENT has 4 rows but SEGMENT_TIMES has 3"),
    ],
    "people_aggregate": [
        ("segment too large", {"PERSON_PAIRS": np.array([[0, 0], [1, 5], [0, 1]], np.int64)}, "holds segment 5"),
        ("person below -1", {"PERSON_PAIRS": np.array([[-3, 0], [1, 0], [0, 1]], np.int64)}, "person ids from -3"),
        ("scores and pairs differ", {"PAIR_SCORES": np.full((7, C), 1 / C, np.float32)}, "PAIR_SCORES has shape [7"),
        ("NaN scores", {"PAIR_SCORES": with_nan(np.full((3, C), 1 / C, np.float32))}, "PAIR_SCORES holds NaN"),
    ],
    "asr": [
        ("negative audio start", {"AUDIO_START": np.array([-5], np.int64)}, "AUDIO_START is -5"),
        ("audio start past the limit", {"AUDIO_START": np.array([2**40], np.int64)}, "AUDIO_START is"),
        ("duration past the limit", {"DURATION": np.array([1e5], np.float32)}, "DURATION is 100000 s, over the server's limit of 1200 s"),
        ("negative duration", {"DURATION": np.array([-5.0], np.float32)}, "DURATION must be a positive number"),
        ("zero duration", {"DURATION": np.array([0.0], np.float32)}, "DURATION must be a positive number"),
        ("NaN duration", {"DURATION": np.array([NAN], np.float32)}, "DURATION holds NaN"),
        ("NaN audio", {"AUDIO": with_nan(np.zeros(SR, np.float32))}, "AUDIO holds NaN"),
        ("audio longer than the video", {"AUDIO": np.zeros(10 * SR, np.float32)}, "cannot be longer than the video"),
        ("speech probabilities of another length", {"SPEECH_PROBS": np.zeros(5, np.float32)}, "SPEECH_PROBS has shape [5], expected [32]"),
        ("speech probabilities above 1", {"SPEECH_PROBS": np.full(32, 2.0, np.float32)}, "SPEECH_PROBS must hold probabilities from 0 to 1"),
        ("NaN speech probabilities", {"SPEECH_PROBS": with_nan(np.zeros(32, np.float32))}, "SPEECH_PROBS holds NaN"),
    ],
    "group": [
        ("fewer face times than faces", {"FACE_TIMES": np.array([0.5], np.float32)}, "VISUAL_FEATURES has 6 rows but FACE_TIMES has 1"),
        ("audio row in no segment", {"AUDIO_SEGMENT": segment([0, 0, 1, 1, 7, -1])}, "holds segment 7 but there are 3 segments"),
        ("NaN frame", {"SCENE": with_nan(group_inputs()["SCENE"])}, "SCENE holds NaN"),
        ("frame time past the limit", {"SCENE_TIMES": np.array([0.5, 1.5, 1e6], np.float32)}, "SCENE_TIMES holds"),
        ("every face in one long segment", {"FACE_TIMES": np.zeros(400, np.float32), "VISUAL_FEATURES": np.zeros((400, F), np.float32),
                                            "SEGMENT_TIMES": np.array([[0.0, 1000.0]], np.float32),
                                            "AUDIO_SEGMENT": np.zeros(6, np.int64)}, "over the limit of"),
        ("overlapping segments", {"SEGMENT_TIMES": np.array([[0, 2], [1, 3], [3, 4]], np.float32)}, "without overlap"),
    ],
    "face_crop": [
        ("negative duration", {"DURATION": np.array([-5.0], np.float32)}, "DURATION must be a positive number"),
        ("NaN duration", {"DURATION": np.array([NAN], np.float32)}, "DURATION holds NaN"),
        ("duration past the limit", {"DURATION": np.array([1e5], np.float32)}, "over the server's limit"),
    ],
}
if config.AUDIO_INPUT != "mel":  # the repository has no mel model then
    del GOOD["mel"], BAD["mel"]
CASES = [(model, case, changes, fragment) for model, cases in BAD.items() for case, changes, fragment in cases]


@pytest.mark.parametrize("model, case, changes, fragment", CASES, ids=[f"{m}-{c}" for m, c, _, _ in CASES])
def test_bad_input_is_invalid_argument(server, model, case, changes, fragment):
    message = assert_rejected(server, model, {**GOOD[model](), **changes}, fragment)
    if "batch" not in case:  # Triton's own checks (max_batch_size) word their messages themselves
        assert message.startswith(f"{model}: "), message


@pytest.mark.parametrize("model", list(GOOD))
def test_good_inputs_are_answered(server, model):
    result = infer(server, model, GOOD[model]())
    outputs = result.get_response().outputs
    assert outputs and all(result.as_numpy(o.name) is not None for o in outputs)


def test_out_of_range_segment_ids_never_crash_the_fusion(server, client):
    # Out-of-range ids used to reach TorchScript's unchecked indexing: a segfault of the model's
    # stub process in 4 of 10 tries, after which every request failed.
    for i in range(10):
        bad = fusion_inputs()
        bad["AUDIO_SEGMENT" if i % 2 else "VISUAL_SEGMENT"][-1] = 57 + 1000 * i
        assert_rejected(server, "fusion", bad, "segments (TEXT_FEATURES rows)")
    scores = infer(server, "fusion", fusion_inputs()).as_numpy("SEGMENT_SCORES")
    assert scores.shape == (3, C) and np.allclose(scores.sum(1), 1, atol=1e-4)
    result = client.analyze(SAMPLE.read_bytes())
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()


def test_a_bad_request_in_a_batch_fails_alone(server):
    # The dynamic batcher merges concurrent requests: the bad one gets its error, the others their rows.
    rng = np.random.default_rng(1)
    good = [{"FACES": rng.standard_normal((3, 1, config.FACE_SIZE, config.FACE_SIZE)).astype(np.float32)} for _ in range(6)]
    alone = [infer(server, "visual_encoder", g).as_numpy("VISUAL_FEATURES") for g in good]
    bad = {"FACES": with_nan(good[0]["FACES"])}

    def run(i):
        try:
            return infer(server, "visual_encoder", good[i // 2] if i % 2 == 0 else bad).as_numpy("VISUAL_FEATURES")
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(run, range(12)))
    for i, result in enumerate(results):
        if i % 2 == 0:
            np.testing.assert_allclose(result, alone[i // 2], atol=1e-4)
        else:
            assert isinstance(result, InferenceServerException) and "INVALID_ARGUMENT" in str(result.status())
            assert "FACES holds NaN" in result.message()


def test_server_still_analyzes_the_sample_after_bad_inputs(client):
    result = client.analyze(SAMPLE.read_bytes())
    assert "happy" in " ".join(s.transcript for s in result.segments).lower()


# --- Without a server: the checks themselves, and the error replies of the serving base class ---


def test_what_the_pipeline_makes_passes_the_checks():
    limits = checks.Limits()
    longest = limits.max_time_s - 0.5
    # A video at the limit, cut into the shortest segments the timeline makes.
    cuts = np.arange(0, longest, config.MIN_SEGMENT_S, dtype=np.float64)
    segment_times = np.stack([cuts[:-1], cuts[1:]], 1).astype(np.float32)
    checks.segment_times(segment_times, limits)
    checks.face_times(np.arange(0, config.MAX_DURATION_S, config.FRAME_INTERVAL_S, dtype=np.float32), limits)
    checks.audio_and_duration(np.zeros(int(config.MAX_DURATION_S + 1) * SR, np.float32), np.array([config.MAX_DURATION_S + 1]), limits)
    with pytest.raises(InputError, match="over the server's limit"):
        checks.duration(np.array([limits.max_time_s + 1]), limits)


class _FakeTritonError(Exception):
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message, self.code = message, code


class _FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors, error


def test_internal_errors_reach_the_client_as_one_short_line(monkeypatch):
    logged = []
    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError, fake.InferenceResponse = _FakeTritonError, _FakeResponse
    fake.Tensor = lambda name, value: (name, value)
    fake.Logger = types.SimpleNamespace(log_error=logged.append)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.delitem(sys.modules, "fv2es.serving.base", raising=False)
    from fv2es.serving.base import PipelineModel

    class Broken(PipelineModel):
        def process(self, inputs):
            if "BAD" in inputs:
                raise InputError("BAD is bad " + "x" * 1000)
            raise RuntimeError('File "/work/main/python_backend/fv2es/secret.py", line 1: boom')

    model = Broken()
    model.name, model.output_dtypes = "broken", {}
    error = model.respond({}).error
    assert error.code == "INTERNAL" and error.message == "broken: internal error (details in the server log)"
    assert "Traceback" in logged[-1] and "secret.py" in logged[-1]  # the details go to the server log
    error = model.respond({"BAD": np.zeros(1)}).error
    assert error.code == "INVALID_ARG" and error.message.startswith("broken: BAD is bad") and len(error.message) <= 250
