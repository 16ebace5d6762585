"""The pipeline's steps: the server runs exactly the in-process functions; frame sampling and face tracking."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_video

from fv2es import config
from fv2es.asr import SpeechRecognizer, speech_blocks
from fv2es.faces import FaceDetector, FaceTracker
from fv2es.inprocess import InProcessPipeline
from fv2es.media import sample_frames
from fv2es.tritonserver import REPOSITORY


def test_server_gives_what_the_in_process_pipeline_gives(client, sample_bytes):
    # The ensemble's wiring (and the parallel demux / face_crop split) changes nothing: every output
    # of the server equals the same steps called one after another in this process.
    served = client.infer_raw(sample_bytes)
    local = InProcessPipeline(REPOSITORY).analyze(sample_bytes)
    for name in ("SEGMENT_TIMES", "SEGMENT_HAS_SPEECH", "SEGMENT_HAS_FACE", "TRANSCRIPTS", "LABELS"):
        np.testing.assert_array_equal(served[name], local[name], err_msg=name)
    for name in ("SEGMENT_SCORES", "VIDEO_SCORES", "GROUP_SEGMENT_SCORES", "GROUP_SCORES"):
        np.testing.assert_allclose(served[name], local[name], atol=1e-5, err_msg=name)


def test_the_two_phase_baseline_gives_the_in_process_outputs(sample_bytes):
    """make bench's two-phase baseline (files between the phases) computes what the pipeline does."""
    import sys

    sys.path.insert(0, str(REPOSITORY.parent / "benchmarks"))
    from baselines import TwoPhasePipeline  # benchmarks/baselines.py

    local = InProcessPipeline(REPOSITORY)
    expected, two_phase = local.analyze(sample_bytes), TwoPhasePipeline(local).analyze(sample_bytes)
    assert sorted(two_phase) == sorted(expected)
    for name in ("SEGMENT_SCORES", "GROUP_SEGMENT_SCORES", "PERSON_SEGMENT_SCORES"):
        np.testing.assert_allclose(two_phase[name], expected[name], atol=0.05, err_msg=name)  # JPEG frames: near, not equal


@pytest.mark.parametrize("container_format, video_codec", [("mp4", "libx264"), ("webm", "libvpx"), ("avi", "mpeg4")])
def test_skipping_unreferenced_frames_keeps_one_frame_per_interval(monkeypatch, container_format, video_codec):
    # Frames that nothing references are not decoded (FRAME_SKIP_NONREF); the sampling must still
    # give one frame per FRAME_INTERVAL_S, within a couple of frames of what full decoding gives.
    audio = np.zeros(int(4.0 * config.SAMPLE_RATE), np.float32)
    data = make_video(audio, container_format=container_format, video_codec=video_codec,
                      audio_codec="libopus" if container_format == "webm" else "aac")
    monkeypatch.setattr(config, "FRAME_SKIP_NONREF", True)
    skipping = np.array([t for t, _ in sample_frames(data)])
    monkeypatch.setattr(config, "FRAME_SKIP_NONREF", False)
    decoding_all = np.array([t for t, _ in sample_frames(data)])
    assert len(skipping) == len(decoding_all) >= round(4.0 / config.FRAME_INTERVAL_S)
    np.testing.assert_allclose(skipping, decoding_all, atol=0.1)


def test_tracking_finds_the_faces_the_whole_frame_search_finds(sample_bytes):
    detector, tracker = FaceDetector(), FaceTracker(FaceDetector())
    frames = list(sample_frames(sample_bytes))
    tracked = [tracker.find(grey) for _, grey in frames]
    searched = [detector.largest_face(grey) for _, grey in frames]
    assert sum(b is not None for b in tracked) >= sum(b is not None for b in searched) >= len(frames) - 1
    for a, b in zip(tracked, searched):
        if a is not None and b is not None:
            assert max(abs(p - q) for p, q in zip(a, b)) <= 0.2 * b[2], (a, b)


def test_speech_is_transcribed_in_blocks_on_the_videos_timeline(monkeypatch, sample_speech):
    # Long audio is transcribed in blocks of at most ASR_BLOCK_S of speech (flat memory); every
    # block's timestamps must come back on the whole audio's timeline. The sample's speech twice,
    # after 3 s of silence each: the second copy's segments are the first's, 11.5 s later.
    silence = np.zeros(3 * config.SAMPLE_RATE, np.float32)
    audio = np.concatenate([silence, sample_speech, silence, sample_speech])
    monkeypatch.setattr(config, "ASR_BLOCK_S", 5.0)  # about one utterance per block
    segments = SpeechRecognizer().transcribe(audio)
    offset = (len(silence) + len(sample_speech)) / config.SAMPLE_RATE
    first = [s for s in segments if s.end <= offset]
    second = [s for s in segments if s.start >= offset]
    assert len(first) == len(second) >= 2 and len(first) + len(second) == len(segments)
    for a, b in zip(first, second):
        assert abs(b.start - (a.start + offset)) < 0.3 and abs(b.end - (a.end + offset)) < 0.3
        assert a.start >= 3.0 - 0.5  # nothing found in the silence before the speech


def test_speech_blocks_keep_every_chunk_in_order():
    chunks = [{"start": s, "end": e} for s, e in [(0, 4), (6, 9), (10, 20), (25, 27), (30, 31)]]
    blocks = speech_blocks(chunks, max_samples=5)
    assert [c for block in blocks for c in block] == chunks
    assert [[c["start"] for c in block] for block in blocks] == [[0], [6], [10], [25, 30]]
