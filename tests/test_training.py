"""Training: metrics, label sets, and smoke runs of every training command on a few real examples."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fv2es import config, modalities, models
from fv2es_build import settings
from fv2es_build import synth
from fv2es.models.fusion import class_map

from fv2es_build.training.metrics import classification_metrics

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT / settings.DATA_DIR
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"the training corpora are not at {DATA}")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def test_metrics_match_a_hand_computed_example():
    truth = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(truth, predicted, ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class a: precision 1, recall 2/3 -> F1 0.8; b: 1/2, 1/2 -> 0.5; c: 1/2, 1 -> 2/3
    assert m["per_class_f1"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 0.6667}, abs=1e-4)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    # WAcc per class = (TP * N / P + TN) / (2N): a: (2*3/3 + 3)/6, b: (1*4/2 + 3)/8, c: (1*5/1 + 4)/10
    assert m["wacc"] == pytest.approx(((2 + 3) / 6 + (2 + 3) / 8 + (5 + 4) / 10) / 3)


def test_corpus_classes_map_onto_the_served_labels():
    ravdess = class_map(config.RAVDESS_CLASSES, config.LABEL_SETS["v2em7"])
    assert ravdess.shape == (8, 7) and torch.equal(ravdess.sum(1), torch.ones(8))
    neutral = config.LABELS.index("neutral")
    assert ravdess[:, neutral].nonzero().flatten().tolist() == [0, 1]  # neutral and calm
    meld = class_map(config.MELD_CLASSES, config.LABELS)
    assert meld[config.MELD_CLASSES.index("joy"), config.LABELS.index("happiness")] == 1
    with pytest.raises(ValueError, match="no class"):
        class_map(("anger", "joy"), config.LABELS)


def test_text_context_is_the_utterances_before_in_the_same_dialogue_and_follows_the_text():
    from fv2es.text import load_tokenizer, tokenize
    from fv2es_build.training.data import meld_contexts

    # Out of order on purpose: the context follows Utterance_ID, not the row order.
    rows = [{"Dialogue_ID": "7", "Utterance_ID": "1"}, {"Dialogue_ID": "7", "Utterance_ID": "0"},
            {"Dialogue_ID": "8", "Utterance_ID": "0"}, {"Dialogue_ID": "7", "Utterance_ID": "2"}]
    texts = ["second", "first", "other dialogue", "third"]
    assert meld_contexts(rows, texts, 1) == ["first", "", "", "second"]
    assert meld_contexts(rows, texts, 2) == ["first", "", "", "first second"]
    tokenizer = load_tokenizer()
    ids, mask = tokenize(tokenizer, ["third"], ["first second"])
    words = [tokenizer.id_to_token(i) for i in ids[0][mask[0] == 1].tolist()]
    assert words == ["[CLS]", "third", "[SEP]", "first", "second", "[SEP]"]
    assert ids.shape == (1, config.TEXT_MAX_TOKENS)


def test_the_tokenizer_gives_transformers_ids_without_importing_torch():
    """fv2es.text reads the text model's tokenizer.json with the `tokenizers` library (transformers
    would import torch into the asr stub): the same ids and masks as transformers' tokenizer, single
    texts and pairs, padded and truncated."""
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from fv2es.text import load_tokenizer, resolve_text_model, tokenize

    texts = ["", " ", "I'm SO happy!!!", "Héllo wörld, ça va? 你好 😀", "don't\ttab\nnewline", "word " * 300,
             "Oh my God, he's lost it. He's totally lost it.", "[SEP] [CLS] ##ing", "1,234.5 $ % &"]
    contexts = texts[1:] + texts[:1]
    reference = AutoTokenizer.from_pretrained(resolve_text_model(config.TEXT_MODEL))
    for pair in ((), (contexts,)):
        expected = reference(texts, *pair, padding="max_length", truncation=True, max_length=config.TEXT_MAX_TOKENS, return_tensors="np")
        ids, mask = tokenize(load_tokenizer(), texts, *pair)
        assert (ids == expected["input_ids"]).all() and (mask == expected["attention_mask"]).all()
    probe = "import sys; from fv2es.text import load_tokenizer, tokenize; tokenize(load_tokenizer(), ['hi']); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("label_set", sorted(config.LABEL_SETS))
def test_every_label_set_builds_a_fusion_model(label_set):
    labels = config.LABEL_SETS[label_set]
    multi = label_set in config.MULTI_LABEL_SETS
    fusion = models.create("fusion", labels=labels, classes=dict.fromkeys(modalities.names(), labels), multi_label=multi)
    scripted = models.to_torchscript("fusion", fusion)
    scores = scripted(*models.example_inputs("fusion", batch=3))
    assert scores.shape[1] == len(labels)
    sums = scores.sum(1)
    # Single-label sets give a distribution; MOSEI's are independent per-label sigmoids.
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5) != multi


@needs_data
@pytest.mark.slow
def test_quick_training_evaluation_and_export(tmp_path):
    """Every branch and the fusion train on a few real examples; the weights export to a working repository."""
    weights, runs, repo = tmp_path / "weights", tmp_path / "runs", tmp_path / "repo"
    run("-m", "fv2es_build.train", "all", "--quick", "--runs", str(runs), "--weights", str(weights))
    for part in settings.WEIGHT_PARTS:
        record = torch.load(weights / f"{part}.pt", weights_only=False)
        assert record["label_set"] == config.LABEL_SET and "quick" in record["command"]
        assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
    text = torch.load(weights / "text.pt", weights_only=False)["state_dict"]
    assert any(k.startswith("encoder.") for k in text) and sum(v.numel() for v in text.values()) < 5_000_000

    result = run("-m", "fv2es_build.evaluate", "--quick", "--weights", str(weights), "--figures", str(tmp_path / "fig"), "--json", str(tmp_path / "eval.json"))
    results = json.loads((tmp_path / "eval.json").read_text())
    assert set(results["branches"]) == set(settings.BRANCHES) and "fused" in results["fusion"]
    assert all(v <= 1e-4 for v in results["export"].values())
    assert {p.name for p in (tmp_path / "fig").iterdir()} == {"audio.png", "visual.png", "text.png", "fused.png", "reliability.png"}
    # The audio branch on each corpus's held-out speakers, and each corpus held out in turn (train all
    # ran `loco`); calibration of every branch and of the fused scores.
    assert set(results["audio_inputs"]["whisper"]) == set(results["leave_one_corpus_out"]) == {"ravdess", "emodb", "turev"}
    assert results["leave_one_corpus_out"]["turev"]["classes"] == ["neutral", "happy", "sad", "angry"]
    assert set(results["calibration"]) == {*settings.BRANCHES, "fused", "fused, neutral words"}
    assert all(0 <= r["after"]["ece"] <= 1 for r in results["calibration"].values())
    group = torch.load(weights / f"{settings.GROUP_PART}.pt", weights_only=False)  # composed scenes, with its baseline
    assert group["classes"] == config.GROUP_LABELS
    assert {"accuracy", "macro_f1"} <= set(group["metrics"]) and {"accuracy", "macro_f1"} <= set(group["baseline"])
    fusion = torch.load(weights / "fusion.pt", weights_only=False)["state_dict"]
    assert fusion["branch_temperature"].shape == (3,) and (fusion["branch_temperature"] > 0).all()
    assert "RepVGG, batch of 64 faces" in result.stdout

    sparse = torch.load(weights / f"{settings.SPARSE_PART}.pt", weights_only=False)  # the face selection, with its comparison
    assert {"every face", "sparse", "random, as many", "faces kept"} <= set(sparse["comparison"]["mixed"])

    # exported with the sparse face selection (config.SPARSE_VISUAL's other setting)
    run("-m", "fv2es_build.repository", "--repository", str(repo), "--weights", str(weights), "--sparse-visual", "on")
    provenance = json.loads((repo / "fusion" / "1" / "provenance.json").read_text())
    assert [w["file"] for w in provenance["weights"]] == [str(weights / f"{p}.pt") for p in settings.WEIGHT_PARTS]
    served = torch.jit.load(str(repo / "visual_encoder" / "1" / "model.pt"))
    assert "batch_norm" not in str(served.inlined_graph)
    provenance = json.loads((repo / "face_select" / "1" / "provenance.json").read_text())
    assert [w["file"] for w in provenance["weights"]] == [str(weights / f"{settings.SPARSE_PART}.pt")]

    # An audio branch trained on another ASR model's states is not exported beside this one.
    audio = torch.load(weights / "audio.pt", weights_only=False)
    assert audio["asr_model"] == config.ASR_MODEL
    torch.save({**audio, "asr_model": "Systran/faster-whisper-base"}, weights / "audio.pt")
    refused = run("-m", "fv2es_build.repository", "--repository", str(tmp_path / "other"), "--weights", str(weights), check=False)
    assert refused.returncode != 0 and "is not the ASR model the audio branch was trained on" in refused.stderr


@needs_data
@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    common = ["-m", "fv2es_build.train", "visual", "--quick", "--epochs", "2", "--threads", "1"]
    run(*common, "--runs", str(tmp_path / "a"), "--weights", str(tmp_path / "wa"))
    run(*common, "--runs", str(tmp_path / "b"), "--weights", str(tmp_path / "wb"), "--stop-after", "1")
    resumed = run(*common, "--runs", str(tmp_path / "b"), "--weights", str(tmp_path / "wb"), "--resume")
    assert "resuming after epoch 1" in resumed.stdout
    a = torch.load(tmp_path / "a" / "visual" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "visual" / "last.pt", weights_only=False)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def write_fe2e_corpus(root: Path, dataset: str, speech: np.ndarray) -> None:
    """A few utterances in the FE2E layout (build/training/fe2e.py) made of real media: a face photo
    as frames, espeak speech as audio."""
    labels = config.LABEL_SETS[dataset]
    face = cv2.cvtColor(synth.face_image(), cv2.COLOR_RGB2BGR)
    folder_name = "IEMOCAP" if dataset == "iemocap" else "MOSEI"
    main = root / f"{folder_name}_RAW_PROCESSED"
    meta, splits = {}, {"train": [], "valid": []}
    for i in range(6):
        uid = f"Ses01F_impro01_F00{i}" if dataset == "iemocap" else f"clip{i}_1"
        folder = main / "Ses01F_impro01" / uid if dataset == "iemocap" else main / uid
        folder.mkdir(parents=True)
        prefix = "image_L_" if dataset == "iemocap" else "image_"
        for j in range(3):
            cv2.imwrite(str(folder / f"{prefix}{j}.jpg"), face)
        with wave.open(str(folder / ("audio_L.wav" if dataset == "iemocap" else "audio.wav")), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(config.SAMPLE_RATE)
            w.writeframes((speech * 32767).astype(np.int16).tobytes())
        label = labels[i % len(labels)] if dataset == "iemocap" else [int((i + k) % 2) for k in range(len(labels))]
        meta[uid] = {"label": label, "text": f"utterance number {i}"}
        splits["train" if i < 4 else "valid"].append(uid)
    (main / "meta.pkl").write_bytes(pickle.dumps(meta))
    (root / f"{folder_name}_SPLIT").mkdir()
    for split, ids in splits.items():
        (root / f"{folder_name}_SPLIT" / f"{split}_split.txt").write_text("\n".join(ids) + "\n")


@pytest.mark.parametrize("dataset", ["iemocap", "mosei"])
@pytest.mark.slow
def test_multimodal_training_on_the_fe2e_layout(tmp_path, dataset):
    speech = synth.speak("I am so happy to see you again")
    write_fe2e_corpus(tmp_path / "data", dataset, speech)
    weights = tmp_path / "weights"
    result = run("-m", "fv2es_build.train", "multimodal", "--fe2e", str(tmp_path / "data"), "--dataset", dataset, "--quick",
                 "--runs", str(tmp_path / "runs"), "--weights", str(weights))
    assert "4 training / 2 validation utterances" in result.stdout
    for part in settings.WEIGHT_PARTS:
        record = torch.load(weights / f"{part}.pt", weights_only=False)
        assert record["label_set"] == dataset
    assert tuple(torch.load(weights / "audio.pt", weights_only=False)["classes"]) == config.LABEL_SETS[dataset]
    # The served label set is configuration: weights for another set refuse to export, and say why.
    refused = run("-m", "fv2es_build.repository", "--repository", str(tmp_path / "repo"), "--weights", str(weights), check=False)
    assert refused.returncode != 0 and f"trained for label set '{dataset}'" in refused.stderr


def vgaf_layout(root: Path, speech: np.ndarray) -> None:
    """A small VGAF-layout folder of generated clips: two per split, labels as numbers and as names."""
    from conftest import make_video

    clips = {"Train": [("a", "1", make_video(speech)), ("b", "3", make_video(speech, faces=False))],
             "Val": [("c", "negative", make_video(speech[: 2 * config.SAMPLE_RATE])), ("d", "positive", make_video(None))]}
    for split, videos in clips.items():
        (root / split).mkdir(parents=True)
        for name, _, data in videos:
            (root / split / f"{name}.mp4").write_bytes(data)
    (root / "Train_labels.txt").write_text("Vid_name Label\na 1\nb 3\n")
    (root / "Val_labels.txt").write_text("video,label\nc.mp4,negative\nd,positive\n")


def test_vgaf_labels_are_read_and_bad_ones_named(tmp_path):
    from fv2es_build.training.vgaf import read_split

    (tmp_path / "Train").mkdir()
    (tmp_path / "Train" / "x.mp4").write_bytes(b"")
    (tmp_path / "Train_labels.txt").write_text("Vid_name Label\nx 2\n")
    assert read_split(tmp_path, "train") == [(tmp_path / "Train" / "x.mp4", config.GROUP_LABELS.index("neutral"))]
    (tmp_path / "Train_labels.txt").write_text("Vid_name Label\nx happy\n")
    with pytest.raises(ValueError, match="Train_labels.txt:2: label 'happy'"):
        read_split(tmp_path, "train")
    (tmp_path / "Train_labels.txt").write_text("Vid_name Label\ny 1\n")
    with pytest.raises(FileNotFoundError, match="no video 'y'"):
        read_split(tmp_path, "train")


@pytest.mark.slow
def test_group_training_on_videos_in_vgafs_layout(tmp_path, sample_speech):
    """The group model trains on real videos through the served pipeline's steps (one loss per video),
    and what it saves loads into the exported form."""
    vgaf_layout(tmp_path / "vgaf", sample_speech)
    weights = tmp_path / "weights"
    out = run("-m", "fv2es_build.train", "group", "--vgaf", str(tmp_path / "vgaf"), "--quick", "--weights", str(weights),
              "--runs", str(tmp_path / "runs"))
    assert "vgaf train: 2/2 videos" in out.stdout and "vgaf validation: 2/2 videos" in out.stdout
    record = torch.load(weights / f"{settings.GROUP_PART}.pt", weights_only=False)
    assert record["data"].startswith("group videos in VGAF's layout") and 0 <= record["metrics"]["accuracy"] <= 1
    audio = modalities.by_name("audio")
    model = models.create("group", audio_features=audio.features, audio_index=audio.index)
    model.load_state_dict(record["state_dict"])
    scripted = models.to_torchscript("group", model)
    segment_scores, video_scores = scripted(*models.example_inputs("group"))
    assert segment_scores.shape[1] == video_scores.shape[0] == len(config.GROUP_LABELS)


def test_end_to_end_weights_round_trip_through_their_folder(tmp_path):
    """What the end-to-end fine-tuning saves is what it trained: the served modules loaded back from
    the folder give the fused scores of the modules it saved (the visual encoder still in training form)."""
    from fv2es_build.export import trained_models
    from fv2es_build.training.end_to_end import EndToEnd, save

    source = ROOT / settings.WEIGHTS_DIR
    model = EndToEnd(trained_models(source))
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: every trainable tensor of the encoders and the fusion moved
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save(model.eval(), source, tmp_path, {"command": "test", "metrics": {"accuracy": 0.5}})
    loaded = EndToEnd(trained_models(tmp_path)).eval()
    audio, visual, text = (modalities.by_name(m) for m in ("audio", "visual", "text"))
    batch = {"FACES": torch.randn(6, 1, config.FACE_SIZE, config.FACE_SIZE), visual.index: torch.tensor([0, 0, 0, 1, 1, 1]),
             "AUDIO_ROWS": torch.randn(5, 2 * config.SPEECH_STATE_DIM), audio.index: torch.tensor([0, 0, 1, 1, 1]),
             text.features: torch.zeros(2, text.feature_dim), text.index: torch.zeros(2, dtype=torch.bool)}
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch), atol=1e-5, rtol=0)
    assert torch.load(tmp_path / "visual.pt", weights_only=False)["command"] == "test"


@pytest.mark.slow
def test_end_to_end_fine_tuning_runs_and_exports_with_a_single_branch_repvgg(tmp_path):
    weights, repo = tmp_path / "weights", tmp_path / "repo"
    out = run("-m", "fv2es_build.train", "end_to_end", "--quick", "--weights", str(weights))
    assert "the two-phase model on" in out.stdout and "fine-tuned" in out.stdout
    record = torch.load(weights / "visual.pt", weights_only=False)
    assert {"accuracy", "macro_f1"} <= set(record["metrics"]) and {"accuracy", "macro_f1"} <= set(record["two_phase_metrics"])
    run("-m", "fv2es_build.repository", "--repository", str(repo), "--weights", str(weights))
    served = torch.jit.load(str(repo / "visual_encoder" / "1" / "model.pt"))
    assert "batch_norm" not in str(served.inlined_graph)  # re-parameterised for serving
