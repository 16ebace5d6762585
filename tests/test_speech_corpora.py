"""The audio branch's training on several speech corpora: the corpora as read, the per-corpus loss, the
balanced sampling, the channel augmentation; and the calibration arithmetic (temperature, ECE)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT

from fv2es import config
from fv2es_build import settings
from fv2es_build.training import data
from fv2es_build.training.calibration import fit_temperature, reliability
from fv2es_build.training.speech import balanced_order, class_mask, corpus_predictions, masked_cross_entropy

DATA = ROOT / settings.DATA_DIR
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"the training corpora are not at {DATA}")


@needs_data
@pytest.mark.parametrize(("corpus", "n", "classes"), [
    ("ravdess", 1200, config.RAVDESS_CLASSES),
    ("emodb", 208, ("neutral", "happy", "sad", "angry", "fearful", "disgust")),  # boredom has no RAVDESS class
    ("turev", 1735, ("neutral", "happy", "sad", "angry")),  # calm -> neutral, as its README says
])
def test_each_corpus_reads_its_clips_classes_and_held_out_speakers(corpus, n, classes):
    spec = data.SPEECH_CORPORA[corpus]
    clips = spec.clips(DATA)
    assert len(clips) == n and spec.classes(DATA) == classes
    speakers = {speaker for _, speaker, _ in clips}
    held_out = set(spec.validation_speakers)
    assert held_out < speakers, "validation speakers exist and some speakers are left to train on"
    for held in held_out:  # every held-out speaker has every class of the corpus: their numbers cover it
        assert {c for _, s, c in clips if s == held} == set(classes)


def test_the_loss_says_nothing_about_classes_a_corpus_lacks():
    masks = torch.stack([class_mask(config.RAVDESS_CLASSES), class_mask(("neutral", "happy", "sad", "angry"))])
    logits = torch.randn(6, len(config.RAVDESS_CLASSES), requires_grad=True)
    angry = config.RAVDESS_CLASSES.index("angry")
    targets = torch.tensor([[angry, 1]] * 3 + [[angry, 0]] * 3)
    masked_cross_entropy(logits, targets, masks, smoothing=0.0).backward()
    absent = ~masks[1]
    assert torch.all(logits.grad[:3][:, absent] == 0), "a 4-class corpus does not push its absent classes down"
    assert torch.all(logits.grad[3:][:, absent] > 0), "the 8-class corpus does"
    # Its value is the cross-entropy over the allowed classes.
    plain = torch.nn.functional.cross_entropy(logits[:3][:, masks[1]], torch.full((3,), int(masks[1][:angry].sum())), label_smoothing=0.1)
    assert masked_cross_entropy(logits[:3], targets[:3], masks, 0.1).item() == pytest.approx(plain.item(), abs=1e-5)


def test_sampling_weighs_every_corpus_and_class_alike():
    def part(targets):
        split = data.Split([None] * len(targets), torch.tensor(targets), config.RAVDESS_CLASSES)
        return SimpleNamespace(split=split, rows=SimpleNamespace(has_speech=lambda i: True))

    big = part([0] * 900 + [1] * 100)  # 1000 clips, one class nine times the other
    small = part([2] * 30 + [3] * 20 + [4] * 50)  # 100 clips
    picks = balanced_order([big, small], 20_000, torch.Generator().manual_seed(0))
    corpus = np.array([k for k, _ in picks])
    assert abs((corpus == 0).mean() - 0.5) < 0.02
    for k, p, n_classes in ((0, big, 2), (1, small, 3)):
        classes = np.array([int(p.split.targets[i]) for kk, i in picks if kk == k])
        shares = np.bincount(classes)[np.unique(classes)] / len(classes)
        assert np.allclose(shares, 1 / n_classes, atol=0.03)


def test_calm_counts_as_neutral_for_a_corpus_without_calm():
    logits = torch.full((1, len(config.RAVDESS_CLASSES)), -10.0)
    logits[0, config.RAVDESS_CLASSES.index("calm")] = 2.0
    logits[0, config.RAVDESS_CLASSES.index("happy")] = 1.5
    assert corpus_predictions(logits, ("neutral", "happy", "sad", "angry"))[0] == 0  # calm + neutral beats happy
    assert corpus_predictions(logits, ("happy", "sad")).tolist() == [0]
    assert corpus_predictions(logits, config.RAVDESS_CLASSES)[0] == config.RAVDESS_CLASSES.index("calm")


def test_channel_augmentation_keeps_a_usable_waveform():
    t = torch.arange(32_000) / config.SAMPLE_RATE
    wave = 0.3 * torch.sin(2 * torch.pi * 220 * t) * (1 + torch.sin(2 * torch.pi * 3 * t))
    generator = torch.Generator().manual_seed(1)
    outs = [data.augment_channel(wave, generator) for _ in range(30)]
    for out in outs:
        assert torch.isfinite(out).all() and out.abs().max() <= 1.0
        assert 0.8 * len(wave) / 1.1 - 1 <= len(out) <= len(wave) / 0.9 + 1
        rms_db = 20 * torch.log10(out.pow(2).mean().sqrt())
        assert -36 <= rms_db <= -14
    assert len({len(o) for o in outs}) > 10, "crop and speed vary"


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_calibration_error():
    rng = np.random.default_rng(0)
    true_logits = torch.from_numpy(rng.normal(size=(20_000, 7)) * 2).float()
    targets = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=torch.Generator().manual_seed(0))[:, 0]
    overconfident = true_logits * 3  # a model three times too sure of itself
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(3.0, rel=0.05)
    before = reliability(torch.softmax(overconfident, 1).numpy(), targets.numpy())
    after = reliability(torch.softmax(overconfident / temperature, 1).numpy(), targets.numpy())
    assert before["ece"] > 0.15 and after["ece"] < 0.02
    assert sum(after["bins"]["count"]) == after["n"] == 20_000
