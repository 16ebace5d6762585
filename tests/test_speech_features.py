"""The audio branch's Whisper input: encoder states kept from the transcription, placed on the
video's timeline, cut into the audio encoder's rows; the same rows on the server as in process."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from fv2es import config, stages
from fv2es.checks import Limits
from fv2es.asr import SAMPLES_PER_STATE, SpeechRecognizer, block_times, speech_chunks
from fv2es.text import load_tokenizer

SR = config.SAMPLE_RATE
needs_whisper_input = pytest.mark.skipif(config.AUDIO_INPUT != "whisper", reason="the repository is built for Mel input")


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    return SpeechRecognizer()


def test_transcription_keeps_the_states_it_computed(recognizer, sample_speech):
    # The states the transcription encoded are the ones the audio branch gets: equal to encoding
    # the speech on its own, so the encoder never runs twice.
    heard = recognizer.listen(sample_speech)
    encoded = recognizer.listen(sample_speech, transcribe=False)
    assert heard.segments and not encoded.segments
    assert heard.states.shape == encoded.states.shape and heard.states.shape[1] == config.SPEECH_STATE_DIM
    np.testing.assert_array_equal(heard.states, encoded.states)
    np.testing.assert_array_equal(heard.times, encoded.times)


def test_states_sit_on_the_speech_of_the_timeline(recognizer, sample_speech):
    # 3 s of silence before the speech: every state is in the speech, one per 20 ms of it.
    silence = np.zeros(3 * SR, np.float32)
    heard = recognizer.listen(np.concatenate([silence, sample_speech, silence]))
    alone = recognizer.listen(sample_speech)
    assert heard.times.min() >= 3.0 - 0.5 and heard.times.max() <= 3.0 + len(sample_speech) / SR + 0.5
    np.testing.assert_allclose(np.diff(heard.times).min(), SAMPLES_PER_STATE / SR, atol=1e-9)
    assert abs(len(heard.states) - len(alone.states)) <= 60  # VAD's padding differs by at most ~1 s
    assert recognizer.listen(np.zeros(5 * SR, np.float32)).states.shape[0] == 0


def test_block_times_map_concatenated_chunks_back():
    # Two VAD chunks, 1 s and 0.5 s of speech, put end to end: states after the first second
    # belong to the second chunk, which starts at 5 s.
    block = [{"start": 2 * SR, "end": 3 * SR}, {"start": 5 * SR, "end": int(5.5 * SR)}]
    times = block_times(block, 75)
    np.testing.assert_allclose(times[0], 2.01)
    np.testing.assert_allclose(times[49], 2.99)
    np.testing.assert_allclose(times[50], 5.01)
    np.testing.assert_allclose(times[74], 5.49)


def test_rows_per_segment():
    d = config.SPEECH_STATE_DIM
    times = np.arange(200) * 0.02 + 0.01  # 4 s of speech
    states = np.random.default_rng(0).standard_normal((200, d)).astype(np.float32)
    segments = np.array([[0.0, 1.0], [1.0, 1.05], [1.05, 4.0], [4.0, 6.0]], np.float32)
    rows, owners = speech_chunks(states, times, segments)
    # 50 states -> 3 rows; 2-3 states: too little speech, no row; 147-148 -> 8 rows; none after 4 s.
    assert rows.shape[1] == 2 * d and rows.dtype == np.float32
    assert list(np.bincount(owners)) == [3, 0, 8]
    first = states[:17]  # np.array_split(50 states, 3): 17, 17, 16
    np.testing.assert_allclose(rows[0], np.concatenate([first.mean(0), first.std(0)]), rtol=1e-5)
    rows, owners = speech_chunks(states[:0], times[:0], segments)
    assert rows.shape == (1, 2 * d) and list(owners) == [-1]  # the placeholder row: no audio


@needs_whisper_input
def test_server_asr_gives_the_in_process_rows(server, sample_bytes, recognizer):
    media = stages.demux(sample_bytes, limits=Limits())
    local = stages.asr(media["AUDIO"], media["DURATION"], recognizer, load_tokenizer(), limits=Limits())
    inputs = []
    for name in ("AUDIO", "AUDIO_START", "DURATION"):
        tensor = grpcclient.InferInput(name, list(media[name].shape), np_to_triton_dtype(media[name].dtype))
        tensor.set_data_from_numpy(media[name])
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        served = c.infer("asr", inputs)
    assert local["SPEECH_ROWS"].shape[0] >= 10 and set(local["SPEECH_SEGMENT"]) <= set(range(len(local["SEGMENT_TIMES"])))
    np.testing.assert_array_equal(served.as_numpy("SPEECH_SEGMENT"), local["SPEECH_SEGMENT"])
    np.testing.assert_allclose(served.as_numpy("SPEECH_ROWS"), local["SPEECH_ROWS"], atol=1e-5)


@needs_whisper_input
def test_the_ensemble_has_no_mel_step(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        steps = [s["model_name"] for s in c.get_model_config(config.ENSEMBLE_NAME, as_json=True)["config"]["ensemble_scheduling"]["step"]]
        assert "mel" not in steps and "audio_encoder" in steps
        assert [i["name"] for i in c.get_model_config("audio_encoder", as_json=True)["config"]["input"]] == ["SPEECH_ROWS"]
