"""build/training/fe2e.py reads the FE2E IEMOCAP_RAW_PROCESSED / MOSEI_RAW_PROCESSED layout."""

from __future__ import annotations

import pickle
import wave
from pathlib import Path

import numpy as np
import pytest

from fv2es_build.training import fe2e

# Smallest valid JPEG (1x1 grey pixel); the loader only lists frames, so the bytes matter little.
JPEG_1X1 = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b0b0c1912130f"
    "141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e333432ffc0000b080001000101011100"
    "ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000"
    "017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a"
    "3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a9293949596"
    "9798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2"
    "f3f4f5f6f7f8f9faffda0008010100003f00fbd3ffd9"
)


def write_wav(path: Path, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * channels * 160)


def write_frames(folder: Path, prefix: str, count: int) -> None:
    for i in range(count):
        (folder / f"{prefix}{i}.jpg").write_bytes(JPEG_1X1)


def write_split(root: Path, name: str, split: str, ids: list[str]) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_split.txt").write_text("\n".join(ids) + "\n")


@pytest.fixture
def iemocap_root(tmp_path: Path) -> Path:
    main = tmp_path / "IEMOCAP_RAW_PROCESSED"
    meta = {
        "Ses01F_impro01_F000": {"label": "neu", "text": "Excuse me.", "start_time": 6.29, "end_time": 8.24},
        "Ses01F_impro01_M001": {"label": "fru", "text": "Do you have your forms?", "start_time": 10.0},
        "Ses02M_script01_1_M003": {"label": "hap", "text": "Oh, the sea!", "start_time": 1.0},
        "Ses01F_impro01_F002": {"label": "xxx", "text": "not in any split"},
    }
    for uid in meta:
        folder = main / "_".join(uid.split("_")[:2]) / uid
        folder.mkdir(parents=True)
        write_frames(folder, "image_L_", 12)  # 12 frames: image_L_10 must sort after image_L_9
        write_frames(folder, "image_R_", 12)
        write_wav(folder / "audio.wav", channels=2)
        write_wav(folder / "audio_L.wav")
        write_wav(folder / "audio_R.wav")
    (main / "meta.pkl").write_bytes(pickle.dumps(meta, protocol=4))
    write_split(tmp_path, "IEMOCAP_SPLIT", "train", ["Ses01F_impro01_M001", "Ses01F_impro01_F000"])
    write_split(tmp_path, "IEMOCAP_SPLIT", "test", ["Ses02M_script01_1_M003"])
    return tmp_path


@pytest.fixture
def mosei_root(tmp_path: Path) -> Path:
    main = tmp_path / "MOSEI_RAW_PROCESSED"
    meta = {
        "-6rXp3zJ3kc_3": {"label": [0, 0, 1, 1, 1, 0], "text": "Key Polymer brings a technical aspect."},
        "100178_10": {"label": [0, 0, 0, 0, 0, 0], "text": "And that's at all levels."},
    }
    for uid, frames in zip(meta, (3, 11)):
        folder = main / uid
        folder.mkdir(parents=True)
        write_frames(folder, "image_", frames)
        write_wav(folder / "audio.wav")
    (main / "meta.pkl").write_bytes(pickle.dumps(meta, protocol=4))
    write_split(tmp_path, "MOSEI_SPLIT", "valid", ["100178_10", "-6rXp3zJ3kc_3"])
    return tmp_path


def test_iemocap_samples_follow_the_split_and_the_speakers_side(iemocap_root):
    train = fe2e.load_fe2e(iemocap_root, "iemocap", "train")
    assert [s.utterance_id for s in train] == ["Ses01F_impro01_M001", "Ses01F_impro01_F000"]
    male, female = train
    # Session 1 names the female actor: her utterances use the left half, his the right one.
    assert female.audio_path.name == "audio_L.wav" and male.audio_path.name == "audio_R.wav"
    assert [p.name for p in female.frame_paths] == [f"image_L_{i}.jpg" for i in range(12)]
    assert [p.name for p in male.frame_paths] == [f"image_R_{i}.jpg" for i in range(12)]
    assert female.frame_paths[0].parent.parent.name == "Ses01F_impro01"
    assert female.text == "Excuse me."
    assert female.target.dtype == np.float32
    np.testing.assert_array_equal(female.target, [0, 0, 0, 0, 1, 0])  # neu
    np.testing.assert_array_equal(male.target, [0, 0, 1, 0, 0, 0])  # fru

    (test,) = fe2e.load_fe2e(iemocap_root, "iemocap", "test")
    assert test.audio_path.name == "audio_L.wav"  # Ses02M, male speaker
    np.testing.assert_array_equal(test.target, np.eye(6, dtype=np.float32)[fe2e.IEMOCAP_LABELS.index("hap")])


def test_mosei_samples_are_multi_hot_with_frames_in_time_order(mosei_root):
    samples = fe2e.load_fe2e(mosei_root, "mosei", "valid")
    assert [s.utterance_id for s in samples] == ["100178_10", "-6rXp3zJ3kc_3"]
    none, several = samples
    assert [p.name for p in none.frame_paths] == [f"image_{i}.jpg" for i in range(11)]
    assert len(several.frame_paths) == 3
    assert several.audio_path == mosei_root / "MOSEI_RAW_PROCESSED" / "-6rXp3zJ3kc_3" / "audio.wav"
    np.testing.assert_array_equal(several.target, [0, 0, 1, 1, 1, 0])  # fear, happy, sad
    np.testing.assert_array_equal(none.target, np.zeros(6))
    assert several.target.dtype == np.float32 and several.text.startswith("Key Polymer")


def test_errors_name_the_missing_file_or_bad_value(iemocap_root, mosei_root):
    with pytest.raises(FileNotFoundError, match="valid_split.txt"):
        fe2e.load_fe2e(iemocap_root, "iemocap", "valid")
    with pytest.raises(ValueError, match="'dev'"):
        fe2e.load_fe2e(iemocap_root, "iemocap", "dev")
    with pytest.raises(ValueError, match="'meld'"):
        fe2e.load_fe2e(iemocap_root, "meld", "train")
    write_split(iemocap_root, "IEMOCAP_SPLIT", "valid", ["Ses01F_impro01_F002"])
    with pytest.raises(ValueError, match="'xxx'"):
        fe2e.load_fe2e(iemocap_root, "iemocap", "valid")
    (mosei_root / "MOSEI_RAW_PROCESSED" / "100178_10" / "audio.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"100178_10/audio\.wav"):
        fe2e.load_fe2e(mosei_root, "mosei", "valid")
