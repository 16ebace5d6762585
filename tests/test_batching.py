"""Dynamic batching across concurrent requests, and batched == alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from fv2es import config, models, pipeline

BATCHED = {step.name: step for step in pipeline.batched_steps()}
ENCODERS = tuple(BATCHED)


def stats(server, model: str) -> tuple[int, int, int]:
    """(requests, inferences, executions) of a model so far."""
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        s = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(s["inference_stats"]["success"].get("count", 0)), int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


INPUT_NAMES = {name: [t.name for t in step.inputs] for name, step in BATCHED.items()}
OUTPUT_NAME = {name: step.outputs[0].name for name, step in BATCHED.items()}


def encoder_request(model: str, seed: int):
    """One-row inputs for an encoder, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    tensors = []
    for name, example in zip(INPUT_NAMES[model], models.example_inputs(model, batch=1)):
        array = example.numpy()
        if array.dtype == np.float32:
            array = rng.standard_normal(array.shape).astype(np.float32)
        elif name == "TEXT_IDS":
            array = rng.integers(1000, 2000, array.shape).astype(np.int64)
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def infer_encoder(server, model: str, seed: int) -> np.ndarray:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        return c.infer(model, encoder_request(model, seed)).as_numpy(OUTPUT_NAME[model])


@pytest.mark.parametrize("model", ENCODERS)
def test_encoder_batches_concurrent_requests(server, model):
    n = 32
    before = stats(server, model)
    alone = [infer_encoder(server, model, seed) for seed in range(3)]
    with ThreadPoolExecutor(n) as pool:
        together = list(pool.map(lambda i: infer_encoder(server, model, i % 3), range(n)))
    requests, inferences, executions = (a - b for a, b in zip(stats(server, model), before))
    assert requests == n + 3 and inferences == n + 3
    assert executions < inferences, f"{model}: {executions} executions for {inferences} inferences"
    for i, out in enumerate(together):  # each request got its own row back, equal to alone
        np.testing.assert_allclose(out, alone[i % 3], atol=1e-4)


def test_concurrent_videos_equal_alone(server, client, sample_bytes, sample_speech):
    from conftest import make_video

    videos = [sample_bytes, make_video(sample_speech[: 4 * config.SAMPLE_RATE]), make_video(sample_speech, faces=False)]
    alone = [client.analyze(v) for v in videos]
    before = {m: stats(server, m) for m in ENCODERS}
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(client.analyze, videos * 2))
    for i, result in enumerate(together):
        expected = alone[i % 3]
        assert [s.transcript for s in result.segments] == [s.transcript for s in expected.segments]
        got = np.array([[s.scores[label] for label in config.LABELS] for s in result.segments])
        want = np.array([[s.scores[label] for label in config.LABELS] for s in expected.segments])
        np.testing.assert_allclose(got, want, atol=1e-4)
        # the group model's rows too (it reads the batched encoders' rows)
        got = np.array([[s.group[g] for g in config.GROUP_LABELS] for s in result.segments])
        want = np.array([[s.group[g] for g in config.GROUP_LABELS] for s in expected.segments])
        np.testing.assert_allclose(got, want, atol=1e-4)
    for model in ENCODERS:
        requests, inferences, executions = (a - b for a, b in zip(stats(server, model), before[model]))
        assert requests == 6, f"{model} saw {requests} requests for 6 videos"
        assert executions <= requests < inferences
