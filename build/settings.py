"""Training and build settings (fv2es-train, fv2es-evaluate, fv2es-build): what makes the weights and
the repository, not what a served repository needs (that is fv2es.config, in the repository's one copy of the runtime)."""

from __future__ import annotations

from contextlib import contextmanager

from fv2es import config, modalities

DATA_DIR = "../shared/data"  # relative to the project root; --data overrides
WEIGHTS_DIR = "weights"  # the shipped trained weights, read by the export: <part>.pt for each part
BRANCHES = modalities.names()  # one trained branch per modality, in the order of the fusion's modality weights
WEIGHT_PARTS = (*BRANCHES, "fusion")
GROUP_PART = "group"  # the group model's weights (build/training/group.py), trained after the fusion from its encoders
SPARSE_PART = "sparse"  # the sparse face selection's weights (build/training/sparse.py; served with config.SPARSE_VISUAL)
AUDIO_WEIGHTS = {"whisper": "audio", "mel": "audio_mel"}  # the audio branch's file for each AUDIO_INPUT


# The parts trained on (or after) the ASR model's encoder states: each of config.ASR_MODELS has its own,
# in this subfolder of a weights folder (tiny.en's, the default, at its top).
ASR_WEIGHTS = {"packaged:whisper-tiny.en": "", "packaged:whisper-base": "whisper-base"}
ASR_PARTS = ("audio", "fusion", GROUP_PART, SPARSE_PART)


@contextmanager
def asr_model_set(name: str):
    """config switched to another of config.ASR_MODELS for the block (its weights trained, evaluated or
    checked), and back to the served one after."""
    served = config.ASR_MODEL
    config.use_asr_model(name)
    try:
        yield
    finally:
        config.use_asr_model(served)


def asr_weights_folder(name: str) -> str:
    """The folder (under a weights folder) of the ASR_PARTS trained on `name`'s speech states."""
    if name not in ASR_WEIGHTS:
        raise ValueError(f"ASR model {name!r} has no weights folder: add it to ASR_WEIGHTS in build/settings.py "
                         f"(each of config.ASR_MODELS needs one; these have: {sorted(ASR_WEIGHTS)})")
    return ASR_WEIGHTS[name]


def weight_name(part: str) -> str:
    """The name of one of WEIGHT_PARTS' files and TRAINING entries: the audio branch's follows AUDIO_INPUT."""
    return AUDIO_WEIGHTS[config.AUDIO_INPUT] if part == "audio" else part


def weight_file(part: str) -> str:
    """Path of a part's file in a weights folder: on Whisper input the ASR_PARTS follow config.ASR_MODEL."""
    folder = asr_weights_folder(config.ASR_MODEL) if part in ASR_PARTS and config.AUDIO_INPUT == "whisper" else ""
    return f"{folder}/" * bool(folder) + f"{weight_name(part)}.pt"


TRAIN_SEED = 0
# RAVDESS validation = these actors, never seen in training (2 male, 2 female).
RAVDESS_VALIDATION_ACTORS = (17, 18, 19, 20)
TRAINING = {
    # The audio branch's entry follows its weights file (AUDIO_WEIGHTS): "audio" on Whisper input, "audio_mel" on Mel.
    "audio": {"epochs": 80, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.05, "label_smoothing": 0.1},
    "audio_mel": {"epochs": 60, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.05, "label_smoothing": 0.1},
    "visual": {"epochs": 20, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.05, "label_smoothing": 0.1},
    # A second run from the first one's weights (build/train.py visual --init; `train.py all` runs both).
    "visual_finetune": {"epochs": 8, "batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, "label_smoothing": 0.1, "augment": "strong"},
    "text": {"epochs": 4, "batch_size": 32, "lr": 1e-4, "head_lr": 1e-3, "weight_decay": 0.01, "label_smoothing": 0.1, "class_weight_power": 0.5},
    # neutral_words: the share of composed clips whose words are neutral whatever their label (fusion_fit.py)
    "fusion": {"epochs": 300, "batch_size": 256, "lr": 0.05, "weight_decay": 0.0, "label_smoothing": 0.0, "neutral_words": 0.5},
    # build/training/group.py: steps of `batch_size` composed scenes; its pools of faces and clips per valence
    "group": {"steps": 1500, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.01, "label_smoothing": 0.1, "evaluate_every": 250,
              "validation_scenes": 1200, "faces_per_valence": 6000, "clips_per_valence": 80},
    # build/training/vgaf.py: group videos (VGAF's layout), one loss per video, from the composed-scene weights
    "group_videos": {"epochs": 10, "lr": 3e-4, "weight_decay": 0.01},
    # build/training/end_to_end.py: steps of `batch_size` composed clips, from the shipped weights
    "end_to_end": {"steps": 300, "batch_size": 16, "lr": 1e-4, "weight_decay": 0.01, "evaluate_every": 50,
                   "validation_clips": 1200, "faces_per_label": 1000, "clips_per_valence": 80},
    # build/training/sparse.py: the face selection's attention, fitted on composed clips (the encoders and fusion frozen)
    "sparse": {"steps": 1500, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.01, "evaluate_every": 250, "validation_clips": 1200,
               "faces_per_label": 1000, "clips_per_valence": 80, "texts_per_label": 200, "target_temperature": 0.5},
    "multimodal": {"epochs": 20, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.01, "label_smoothing": 0.0},
}
TRAIN_MAX_FRAMES = 24  # multimodal training: frames per utterance, spread evenly (12 s at FRAME_INTERVAL_S)
QUICK_EXAMPLES = 24  # --quick: examples per split, one epoch; a smoke run in seconds
# --quick on a speech corpus: fewer, each clip costs a whole Whisper window to encode (0.3 s on 2 cores)
QUICK_SPEECH_EXAMPLES = 6
