"""The stretch rule (fv2es.stretches): cuts at pauses, decided from the audio before them only, so a
stream that arrives in pieces is cut where the whole file is, and a stretch alone is not cut again."""

from __future__ import annotations

import numpy as np
import pytest

from fv2es import config, stretches

SR = config.SAMPLE_RATE


def talk(seconds: float, pauses: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Loud noise bursts (syllables) with the given quiet stretches (start, length) in it."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = 0.3 + 0.2 * np.sin(np.arange(n) / SR * 2 * np.pi * 4)  # never quiet by itself
    audio = (rng.standard_normal(n) * envelope * 0.3).astype(np.float32)
    for start, length in pauses:
        a, b = int(start * SR), int((start + length) * SR)
        audio[a:b] *= 0.01
    return audio


def test_cuts_in_the_first_pause_after_the_minimum():
    audio = talk(70, [(12.0, 0.6), (23.0, 0.6), (49.0, 0.5)])
    cuts = stretches.cuts(audio)
    # the first point with half a pause of quiet on each side: the pause's start + half a pause
    half = stretches.HALF_PAUSE * config.STRETCH_FRAME_S
    assert [c / SR for c in cuts] == pytest.approx([23.0 + half, 49.0 + half], abs=0.021)
    assert all(c % stretches.FRAME == 0 for c in cuts)


def test_without_a_pause_the_stretch_ends_at_the_maximum():
    audio = talk(65, [])
    assert [c / SR for c in stretches.cuts(audio)] == [config.STRETCH_MAX_S, 2 * config.STRETCH_MAX_S]


def test_a_short_pause_is_not_a_cut():
    audio = talk(35, [(22.0, config.STRETCH_PAUSE_S / 2)])
    assert [c / SR for c in stretches.cuts(audio)] == [config.STRETCH_MAX_S]


def test_growing_audio_is_cut_where_the_whole_is():
    audio = talk(130, [(21.0, 0.4), (45.5, 1.0), (70.0, 0.35), (101.0, 0.8)], seed=3)
    whole = stretches.cuts(audio)
    assert len(whole) >= 4
    decided = []
    for end in range(0, len(audio) + 1, 7_777):  # arriving in odd pieces
        decided = stretches.cuts(audio[:end])
        assert decided == whole[: len(decided)]
    assert decided == whole


def test_a_stretch_alone_is_not_cut_again():
    audio = talk(100, [(25.0, 0.5), (50.0, 0.4), (77.0, 2.0)], seed=5)
    bounds = [0, *stretches.cuts(audio), len(audio)]
    for a, b in zip(bounds, bounds[1:]):
        assert stretches.cuts(audio[a:b]) == []
        assert stretches.next_cut(audio, a) == (None if b == len(audio) else b)


def test_silence_is_cut_at_the_minimum():
    audio = np.zeros(45 * SR, np.float32)
    assert [c / SR for c in stretches.cuts(audio)] == [config.STRETCH_MIN_S, 2 * config.STRETCH_MIN_S]


def test_the_last_stretch_ends_with_the_picture_when_it_goes_on():
    assert stretches.timeline_end(10.0, 12.5) == 12.5
    assert stretches.timeline_end(10.0, float(np.float32(10.0 + 1e-4))) == 10.0
