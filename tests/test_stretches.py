"""The stretch rule (fv2es.stretches) on real speech (the sample's): a stretch holds one Whisper
window of speech, cut where speech recognition in one piece ends a window; the cuts are decided
from the audio before them only, so a stream that arrives in pieces is cut where the whole file is,
and a stretch alone is not cut again."""

from __future__ import annotations

import numpy as np
import pytest

from fv2es import config, stretches, vad
from fv2es.asr import SpeechRecognizer

SR = config.SAMPLE_RATE


def talk(speech: np.ndarray, pauses_s: list[float]) -> np.ndarray:
    """The speech, then each pause (silence) followed by the speech again."""
    parts = [speech]
    for pause in pauses_s:
        parts += [silence(pause), speech]
    return np.concatenate(parts)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


PAUSES_S = [2.5, 1.5, 4.0, 2.0, 3.0, 2.5, 1.5, 3.5, 2.0, 2.5, 3.0]


@pytest.fixture(scope="module")
def paused(sample_speech):
    """~125 s: the sample's sentence 12 times, with pauses of 1.5 to 4 s (each one a VAD chunk)."""
    return talk(sample_speech, PAUSES_S)


@pytest.fixture(scope="module")
def unbroken(sample_speech):
    """~100 s of speech with pauses too short for VAD to end a chunk: it splits them itself."""
    return talk(sample_speech, [0.3] * 11)


def stretch_bounds(audio):
    bounds = [0, *stretches.cuts(audio), len(audio)]
    return list(zip(bounds, bounds[1:]))


@pytest.mark.parametrize("name", ["paused", "unbroken"])
def test_each_stretch_holds_one_window_and_the_whole_as_many_as_in_one_piece(name, request):
    audio = request.getfixturevalue(name)
    bounds = stretch_bounds(audio)
    assert len(bounds) >= 3
    windows = [len(SpeechRecognizer.blocks(audio[a:b])) for a, b in bounds]
    assert windows == [1] * len(bounds)
    assert sum(windows) == len(SpeechRecognizer.blocks(audio))


def test_cuts_fall_in_pauses(paused):
    for cut in stretches.cuts(paused):
        assert not np.any(paused[cut - SR // 10 : cut + SR // 10]), cut / SR


def test_growing_audio_is_cut_where_the_whole_is(paused, unbroken):
    for audio in (paused, unbroken):
        whole = stretches.cuts(audio)
        for piece in (7_777, SR // 2):  # odd pieces, and half seconds as a live stream sends them
            cutter, decided = stretches.Cutter(), []
            for end in range(piece, len(audio) + piece, piece):
                new = cutter.cuts(audio[:end])
                decided += new
                assert all(cut <= end for cut in new)
            assert decided == whole


def test_a_cut_is_decided_soon_after_the_window_is_full(paused):
    """A stream waits for a stretch's cut only until the next speech overflows its window."""
    first = stretches.cuts(paused)[0]
    cutter = stretches.Cutter()
    end = next(end for end in range(SR // 2, len(paused), SR // 2) if cutter.cuts(paused[:end]))
    next_speech = first + np.flatnonzero(paused[first:])[0]
    assert first < next_speech < end <= next_speech + 3 * SR


@pytest.mark.parametrize("name", ["paused", "unbroken"])
def test_a_stretch_alone_is_not_cut_again(name, request):
    audio = request.getfixturevalue(name)
    for a, b in stretch_bounds(audio):
        assert stretches.cuts(audio[a:b]) == []


def test_silence_is_cut_at_the_maximum():
    assert [c / SR for c in stretches.cuts(silence(130))] == [config.STRETCH_MAX_S, 2 * config.STRETCH_MAX_S]
    assert stretches.cuts(silence(config.STRETCH_MAX_S)) == []


def test_sparse_speech_is_cut_at_the_maximum_or_where_speech_going_on_there_began(sample_speech):
    assert [c / SR for c in stretches.cuts(talk(sample_speech, [70.0]))][:1] == [config.STRETCH_MAX_S]
    late = config.STRETCH_MAX_S - 5.0  # a sentence from 5 s before the maximum to past it
    for audio in (np.concatenate([sample_speech, silence(late - len(sample_speech) / SR), sample_speech, silence(10)]),
                  np.concatenate([silence(late), sample_speech, silence(10)])):  # speech before it, or none
        began = vad.speech_chunks(audio)[-1]["start"]
        assert late * SR < began < config.STRETCH_MAX_S * SR
        assert stretches.cuts(audio)[0] == began


def test_the_last_stretch_ends_with_the_picture_when_it_goes_on():
    assert stretches.timeline_end(10.0, 12.5) == 12.5
    assert stretches.timeline_end(10.0, float(np.float32(10.0 + 1e-4))) == 10.0


# --- The speech detector (fv2es.vad) against the silero-vad package's own functions -------------


@pytest.mark.parametrize("name", ["paused", "unbroken"])
def test_probabilities_computed_piece_by_piece_are_silero_streaming_models(name, request):
    import torch
    from silero_vad import load_silero_vad

    audio = request.getfixturevalue(name)[: 40 * SR]
    n = len(audio) // vad.WINDOW
    detector = vad.Detector()
    for upto in [1, 2, 27, 300, 301, 1000, n]:  # uneven pieces, as a live stream's chunks give them
        detector.extend(audio, upto)
    streaming = load_silero_vad(onnx=True).audio_forward(torch.from_numpy(audio[: n * vad.WINDOW]), SR).numpy().reshape(-1)
    np.testing.assert_allclose(detector.probs, streaming, atol=1e-6)
    np.testing.assert_allclose(vad.probabilities(audio)[:n], streaming, atol=1e-6)


@pytest.mark.parametrize("name", ["paused", "unbroken"])
def test_chunks_are_silero_chunks_and_open_ones_only_grow(name, request):
    from silero_vad import get_speech_timestamps_from_probs

    audio = request.getfixturevalue(name)
    probs = vad.probabilities(audio)
    theirs = get_speech_timestamps_from_probs(
        probs.tolist(),
        threshold=config.VAD_THRESHOLD,
        min_speech_duration_ms=0,
        max_speech_duration_s=config.VAD_MAX_SPEECH_S,
        min_silence_duration_ms=config.VAD_MIN_SILENCE_MS,
        speech_pad_ms=config.VAD_SPEECH_PAD_MS,
        use_max_poss_sil_at_max_speech=False,
        audio_length_samples=len(audio),
    )
    whole = vad.speech_chunks(audio)
    assert len(whole) >= 4
    assert whole == [{"start": c["start"], "end": c["end"]} for c in theirs]
    for k in range(200, len(probs), 700):  # the audio still growing: its closed chunks are final
        so_far = vad.chunks(probs[:k])
        closed = [{"start": c.start, "end": c.end} for c in so_far if c.closed]
        assert closed == whole[: len(closed)]
        if so_far and not so_far[-1].closed:
            final = whole[len(closed)]
            assert final["start"] == so_far[-1].start and final["end"] >= so_far[-1].end


def test_speech_detection_needs_no_torch():
    """The ASR step's process runs the detector without torch (about 450 MB per stub)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from fv2es import stretches, vad; "
        "audio = np.zeros(16000 * 3, np.float32); audio[16000:32000] = np.sin(np.arange(16000) / 3); "
        "vad.speech_chunks(audio); stretches.cuts(audio); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- The low-latency rule (a live stream's default mode) --------------------------------------------


def low_latency_cuts(audio: np.ndarray) -> list[int]:
    return stretches.Cutter(stretches.LOW_LATENCY).cuts(audio)


def test_low_latency_cuts_at_every_pause_soon_after_it_begins(paused):
    cuts = low_latency_cuts(paused)
    for cut in cuts:  # after silence (the sentence's own pauses too, where they are long enough; a
        # window of WINDOW_S without speech may end just as speech begins, before Silero sees it)
        assert not np.any(paused[cut - SR // 10 : cut]), cut / SR
    sounding = np.flatnonzero(paused)
    gaps = np.flatnonzero(np.diff(sounding) > SR)  # the silences of more than a second: between the sentences
    assert len(gaps) >= len(PAUSES_S)
    for g in gaps:  # each holds a cut
        assert any(sounding[g] < cut <= sounding[g + 1] for cut in cuts), sounding[g] / SR
    # decided once the pause is LOW_LATENCY_SILENCE_MS long, whatever pieces the audio comes in
    for piece in (7_777, SR // 2):
        cutter, decided = stretches.Cutter(stretches.LOW_LATENCY), []
        for end in range(piece, len(paused) + piece, piece):
            new = cutter.cuts(paused[:end])
            for cut in new:
                speech_end = cut - config.VAD_SPEECH_PAD_MS * SR // 1000
                assert end <= speech_end + (config.LOW_LATENCY_SILENCE_MS / 1000 + 0.2) * SR + piece, (cut / SR, end / SR)
            decided += new
        assert decided == cuts


def test_low_latency_cuts_silence_into_windows_and_unbroken_speech_at_the_segment_limit(unbroken):
    assert [c / SR for c in low_latency_cuts(silence(13))] == [config.WINDOW_S, 2 * config.WINDOW_S, 3 * config.WINDOW_S]
    speech = low_latency_cuts(unbroken)
    assert speech and max(np.diff([0, *speech])) <= config.MAX_SEGMENT_S * SR
    assert stretches.cuts(unbroken) != speech  # the exact rule waits for a whole window of speech


def test_the_cutters_probabilities_of_each_stretch_are_its_own(sample_speech):
    """Silero runs once per audio: the probabilities the cutter computed for each stretch (from its
    start, its last window padded) are those the stretch's audio alone gives, which ASR used to
    compute again (only the last window, and those since the last saved state, are run again)."""
    inside_a_window = 0
    for rule in (stretches.EXACT, stretches.LOW_LATENCY):
        audio = talk(sample_speech, [1.0, 9.0, 4.0, 12.0, 3.0, 30.0])
        cutter = stretches.Cutter(rule)
        bounds = [0, *cutter.cuts(audio), len(audio)]
        probs = [*cutter.stretch_probs, cutter.rest(audio)]
        assert len(bounds) > 2
        inside_a_window += sum(c % vad.WINDOW > 0 for c in bounds[1:])
        for (a, b), mine in zip(zip(bounds, bounds[1:]), probs):
            assert np.array_equal(mine, vad.probabilities(audio[a:b])), (rule, a, b)
    assert inside_a_window  # stretches whose last window is partial (padded) were checked too
