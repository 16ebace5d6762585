"""Reads IEMOCAP and CMU-MOSEI in the FE2E data layout, the one the FV2ES training code consumes.

The layout is the one of FE2E (Dai et al. 2021, "Multimodal End-to-End Sparse Model for Emotion
Recognition", github.com/wenliangdai/Multimodal-End2end-Sparse: src/datasets.py, main.py and the
notebooks in preprocessing/), which the FV2ES authors' V2EM/ code reuses. ``root`` is the
reference's ``--datapath`` folder:

    root/IEMOCAP_SPLIT/{train,valid,test}_split.txt   one utterance id a line, e.g. Ses01F_impro01_F000
    root/IEMOCAP_RAW_PROCESSED/meta.pkl              pickled dict: id -> {"label": "ang", "text": str,
                                                     "start_time", "end_time", "sr", "fps"}
    root/IEMOCAP_RAW_PROCESSED/<dialog>/<id>/        found by globbing */<id>, as the reference does
        image_L_<i>.jpg, image_R_<i>.jpg             frame i of the left / right camera half
        audio.wav, audio_L.wav, audio_R.wav          stereo mix and the left / right channel
    root/MOSEI_SPLIT/{train,valid,test}_split.txt    one utterance id a line, e.g. -6rXp3zJ3kc_3
    root/MOSEI_RAW_PROCESSED/meta.pkl                pickled dict: id -> {"label": [6 x 0/1], "text": str}
    root/MOSEI_RAW_PROCESSED/<id>/image_<i>.jpg, audio.wav

IEMOCAP: each dialog is filmed with both actors side by side; the reference uses the left half
(``image_L_*``, ``audio_L.wav``) when the utterance's speaker (first letter of the last id part)
is the session's named actor (last letter of the first part), else the right half. Labels are
one of six classes (one-hot); MOSEI labels are six independent presence flags (multi-hot).
Frames are returned in time order (numeric ``i``), all of them: the reference subsamples them
by ``--img-interval`` in ``__getitem__``, which is left to the caller. meta.pkl is a pickle:
load only files you trust.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fv2es import config

IEMOCAP_LABELS = config.LABEL_SETS["iemocap"]
MOSEI_LABELS = config.LABEL_SETS["mosei"]
SPLITS = ("train", "valid", "test")
_FOLDERS = {"iemocap": "IEMOCAP", "mosei": "MOSEI"}


@dataclass(frozen=True)
class Fe2eSample:
    utterance_id: str
    frame_paths: tuple[Path, ...]
    audio_path: Path
    text: str
    target: np.ndarray  # float32 over IEMOCAP_LABELS (one-hot) or MOSEI_LABELS (multi-hot)


def iemocap_side(utterance_id: str) -> str:
    """'L' or 'R': the camera half and audio channel of the utterance's speaker (Ses01F_impro01_F000 -> 'L')."""
    parts = utterance_id.split("_")
    return "L" if parts[0][-1:] == parts[-1][:1] else "R"


def _frames(folder: Path, prefix: str) -> tuple[Path, ...]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.jpg")
    indexed = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return tuple(p for _, p in sorted(indexed))


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"meta file not found: {path}")
    with path.open("rb") as f:
        meta = pickle.load(f)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a pickled dict of id -> metadata, got {type(meta).__name__}")  # noqa: TRY004
    return meta


def _target(dataset: str, label: object, where: str) -> np.ndarray:
    if dataset == "iemocap":
        if label not in IEMOCAP_LABELS:
            raise ValueError(f"{where}: label {label!r} is not one of {IEMOCAP_LABELS}")
        target = np.zeros(len(IEMOCAP_LABELS), np.float32)
        target[IEMOCAP_LABELS.index(label)] = 1.0
        return target
    target = np.asarray(label, dtype=np.float32)
    if target.shape != (len(MOSEI_LABELS),) or not np.isin(target, (0.0, 1.0)).all():
        raise ValueError(f"{where}: label {label!r} is not {len(MOSEI_LABELS)} 0/1 flags over {MOSEI_LABELS}")
    return target


def load_fe2e(root: Path, dataset: str, split: str) -> list[Fe2eSample]:
    """The samples of one split, in the order of its split file."""
    if dataset not in _FOLDERS:
        raise ValueError(f"dataset must be one of {tuple(_FOLDERS)}, got {dataset!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    main = root / f"{_FOLDERS[dataset]}_RAW_PROCESSED"
    split_path = root / f"{_FOLDERS[dataset]}_SPLIT" / f"{split}_split.txt"
    ids = _read_split(split_path)
    meta = _read_meta(main / "meta.pkl")
    folders = {p.name: p for p in main.glob("*/*") if p.is_dir()} if dataset == "iemocap" else {}

    samples = []
    for uid in ids:
        where = f"{main / 'meta.pkl'} [{uid!r}]"
        entry = meta.get(uid)
        if not isinstance(entry, dict) or "label" not in entry or "text" not in entry:
            raise ValueError(f"{where}: utterance of {split_path} has no entry with 'label' and 'text'")
        if dataset == "iemocap":
            folder = folders.get(uid)
            if folder is None:
                raise FileNotFoundError(f"utterance folder not found: {main}/<dialog>/{uid}")
            side = iemocap_side(uid)
            frames, audio = _frames(folder, f"image_{side}_"), folder / f"audio_{side}.wav"
        else:
            folder = main / uid
            if not folder.is_dir():
                raise FileNotFoundError(f"utterance folder not found: {folder}")
            frames, audio = _frames(folder, "image_"), folder / "audio.wav"
        if not audio.is_file():
            raise FileNotFoundError(f"audio file not found: {audio}")
        target = _target(dataset, entry["label"], where)
        samples.append(Fe2eSample(uid, frames, audio, str(entry["text"]), target))
    return samples
